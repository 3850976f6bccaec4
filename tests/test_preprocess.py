"""The shared preprocessing definition."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from lgld.runtime.core.modelinfo import ModelInfo, ModelInfoError
from lgld.runtime.core.preprocess import (
    ImageError,
    PreprocessSpec,
    preprocess,
    preprocess_batch,
    read_image,
)


def test_rgb_order_scale_and_layout() -> None:
    bgr = np.zeros((40, 40, 3), np.uint8)
    bgr[..., 0] = 255  # pure blue in OpenCV's BGR
    x = preprocess(bgr, PreprocessSpec(input_size=32))
    assert x.shape == (1, 3, 32, 32) and x.dtype == np.float32
    assert np.allclose(x[0, 2], 1.0) and np.allclose(x[0, :2], 0.0)  # blue is channel 2 in RGB


def test_mean_std_and_batch() -> None:
    spec = PreprocessSpec(input_size=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    img = np.full((16, 16, 3), 255, np.uint8)
    batch = preprocess_batch([img, img], spec)
    assert batch.shape == (2, 3, 16, 16) and np.allclose(batch, 1.0)


def test_resize_matches_opencv_area() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (100, 90, 3), dtype=np.uint8)
    expected = cv2.cvtColor(cv2.resize(img, (32, 32), interpolation=cv2.INTER_AREA),
                            cv2.COLOR_BGR2RGB)
    got = preprocess(img, PreprocessSpec(input_size=32))[0].transpose(1, 2, 0) * 255
    assert np.allclose(got, expected, atol=1e-3)


def test_spec_round_trip_and_validation() -> None:
    spec = PreprocessSpec(input_size=128, mean=(0.1, 0.2, 0.3))
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError):
        PreprocessSpec(color_order="HSV")


def test_read_image_errors(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="not found"):
        read_image(tmp_path / "missing.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ImageError, match="cannot decode"):
        read_image(tmp_path / "broken.jpg")
    cv2.imwrite(str(tmp_path / "ok.png"), np.zeros((5, 7, 3), np.uint8))
    assert read_image(tmp_path / "ok.png").shape == (5, 7, 3)


def test_model_info_round_trip() -> None:
    info = ModelInfo(classes=["a", "b"], preprocess=PreprocessSpec(input_size=64),
                     training={"val": {"accuracy": 0.9}})
    back = ModelInfo.from_metadata(info.to_metadata())
    assert back.classes == ["a", "b"] and back.input_size == 64
    assert back.training == {"val": {"accuracy": 0.9}}
    with pytest.raises(ModelInfoError, match="not an lgld model"):
        ModelInfo.from_metadata({})
