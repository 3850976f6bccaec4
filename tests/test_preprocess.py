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
    correct_illumination,
    frame_background,
    illumination_lut,
    preprocess,
    preprocess_batch,
    read_image,
    resize_rgb,
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


# ---------------------------------------------------------------- illumination correction

SAMPLES = Path(__file__).resolve().parent / "data" / "zoo_samples"
ALL_SAMPLE = SAMPLES / "ALL" / "Early"
WBC5_SAMPLE = SAMPLES / "WBC5" / "Neutrophil"


def _linear_gains(image_bgr: np.ndarray, gains_rgb: tuple[float, float, float]) -> np.ndarray:
    """An acquisition shift written independently of lgld: sRGB decode, gain, clip, encode."""
    x = image_bgr[..., ::-1].astype(np.float64) / 255.0
    lin = np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)
    lin = np.clip(lin * np.asarray(gains_rgb), 0.0, 1.0)
    out = np.where(lin <= 0.0031308, lin * 12.92, 1.055 * lin ** (1 / 2.4) - 0.055)
    return np.ascontiguousarray(np.rint(out * 255.0).astype(np.uint8)[..., ::-1])


def _corrected_spec(size: int = 96) -> PreprocessSpec:
    return PreprocessSpec(input_size=size, illumination="background",
                          background=(240.0, 230.0, 235.0))


@pytest.mark.parametrize("folder", [ALL_SAMPLE, WBC5_SAMPLE])
@pytest.mark.parametrize(("gains", "tolerance", "factor"), [
    ((0.5, 0.5, 0.5), 2.0, 5.0),  # -1 EV
    ((0.6, 0.8, 0.5), 2.0, 5.0),  # dimmer and a cast
    ((1.2, 1.0, 0.8), 3.5, 2.5),  # the cast: clips red in these bright backgrounds
])
def test_exposure_and_white_balance_shifts_normalise_back_to_the_original(
    folder: Path, gains: tuple[float, float, float], tolerance: float, factor: float
) -> None:
    spec = _corrected_spec()
    for path in sorted(folder.glob("*.jpg"))[:3]:
        image = read_image(path)
        clean, shifted = preprocess(image, spec), preprocess(_linear_gains(image, gains), spec)
        uncorrected = PreprocessSpec(input_size=96)
        before = np.abs(preprocess(image, uncorrected) - preprocess(
            _linear_gains(image, gains), uncorrected)).mean() * 255
        after = np.abs(clean - shifted).mean() * 255
        # within `tolerance` of 255 levels on average, and `factor` x closer than uncorrected
        assert after < tolerance and after * factor < before, (path.name, after, before)


def test_background_maps_to_the_reference_and_stain_colours_keep_their_ratio() -> None:
    spec = _corrected_spec(64)
    image = np.zeros((64, 64, 3), np.uint8)
    image[:] = (150, 170, 190)  # BGR background: a dim, bluish-pink field
    image[20:40, 20:40] = (120, 40, 90)  # a stained cell
    out = correct_illumination(resize_rgb(image, spec), spec)
    assert np.abs(out[0, 0].astype(float) - spec.background).max() <= 1  # background -> ref
    # the same gains apply to the cell: a mapping in linear light, not a per-pixel recolouring
    lut = illumination_lut(np.array([190.0, 170.0, 150.0]), spec.background)
    assert np.array_equal(out[30, 30], lut[[90, 40, 120], 0, [0, 1, 2]])


def test_an_image_with_a_clipped_background_is_left_alone() -> None:
    spec = PreprocessSpec(input_size=32, illumination="background", background=(255.0,) * 3)
    image = np.full((32, 32, 3), 255, np.uint8)
    image[8:16, 8:16] = (100, 60, 140)
    assert np.array_equal(correct_illumination(resize_rgb(image, spec), spec),
                          resize_rgb(image, spec))


def test_a_frame_estimate_applies_the_same_correction_to_every_crop() -> None:
    spec = _corrected_spec(32)
    frame = _linear_gains(read_image(sorted(ALL_SAMPLE.glob("*.jpg"))[0]), (0.5, 0.5, 0.5))
    crops = [frame[:100, :100], frame[100:, 100:]]
    bg = frame_background(frame, spec)
    batch = preprocess_batch(crops, spec, background=bg)
    lut = illumination_lut(bg, spec.background)
    for crop, x in zip(crops, batch, strict=True):
        expected = cv2.LUT(resize_rgb(crop, spec), lut)
        assert np.allclose(x.transpose(1, 2, 0) * 255, expected, atol=1e-3)


def test_illumination_none_is_the_preprocessing_of_older_models() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (50, 60, 3), dtype=np.uint8)
    old = {"input_size": 32, "color_order": "RGB", "scale": 1 / 255, "mean": [0, 0, 0],
           "std": [1, 1, 1], "resize": "area"}  # a spec as stored before the field existed
    spec = PreprocessSpec.from_dict(old)
    assert spec.illumination == "none"
    expected = cv2.cvtColor(cv2.resize(image, (32, 32), interpolation=cv2.INTER_AREA),
                            cv2.COLOR_BGR2RGB).astype(np.float32) * np.float32(1 / 255)
    assert np.array_equal(preprocess(image, spec)[0], expected.transpose(2, 0, 1))


def test_illumination_round_trips_through_checkpoint_dict_and_onnx_metadata() -> None:
    spec = _corrected_spec(160)
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    back = ModelInfo.from_metadata(ModelInfo(classes=["a", "b"], preprocess=spec).to_metadata())
    assert back.preprocess == spec and back.preprocess.illumination == "background"
    with pytest.raises(ValueError, match="illumination"):
        PreprocessSpec(illumination="retinex")
    with pytest.raises(ValueError, match="background"):
        PreprocessSpec(illumination="background", background=(0.0, 200.0, 200.0))
