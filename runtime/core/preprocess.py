"""The one definition of preprocessing, shared by training, evaluation, export and the runtime.

An image (OpenCV's BGR uint8 HxWx3) becomes a model input by: convert to the model's colour
order (RGB), resize to ``input_size`` x ``input_size`` (area interpolation when shrinking,
bilinear when enlarging), scale to [0, 1], subtract ``mean`` and divide by ``std`` (the paper
uses none: mean 0, std 1), and lay out as NCHW float32.

Training applies its augmentations between :func:`resize_rgb` and :func:`normalize`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from lgld.runtime.core.imageheader import read_image_size


class ImageError(ValueError):
    """An image is missing, unreadable or not a colour image."""


@dataclass(frozen=True)
class PreprocessSpec:
    """How raw pixels become model inputs. Stored in checkpoints and ONNX metadata."""

    input_size: int = 224
    color_order: str = "RGB"
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    resize: str = "area"  # area when shrinking, bilinear when enlarging

    def __post_init__(self) -> None:
        if self.color_order not in ("RGB", "BGR"):
            raise ValueError(f"color_order must be RGB or BGR, got {self.color_order!r}")
        if self.resize not in ("area", "bilinear"):
            raise ValueError(f"resize must be 'area' or 'bilinear', got {self.resize!r}")
        if self.input_size < 8:
            raise ValueError(f"input_size must be >= 8, got {self.input_size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need 3 values each, std > 0")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessSpec:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        for key in ("mean", "std"):
            if key in known:
                known[key] = tuple(float(v) for v in known[key])
        return cls(**known)


def read_image(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """Read an image file as BGR uint8 HxWx3, or raise ImageError with a one-line reason.

    With ``max_pixels`` the size is read from the header first (:mod:`imageheader`) and a
    larger image, or one whose header is not a PNG/JPEG/BMP/TIFF/WebP header, is refused before
    anything is decoded, so a small file claiming a huge image costs no memory.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"image not found: {path}")
    if max_pixels is not None:
        size = read_image_size(path)
        if size is None:
            raise ImageError("cannot decode image (not a PNG, JPEG, BMP, TIFF or WebP header): "
                             f"{path}")
        width, height = size
        if width * height > max_pixels:
            raise ImageError(f"image {width}x{height} ({width * height} pixels) is over the "
                             f"limit of {max_pixels} pixels: {path}")
    data = np.fromfile(str(path), dtype=np.uint8)
    try:
        image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    except cv2.error as exc:  # e.g. larger than OpenCV's own pixel limit
        reason = str(exc).strip().splitlines()[-1][:160]
        raise ImageError(f"cannot decode image ({reason}): {path}") from None
    if image is None:
        raise ImageError(f"cannot decode image (corrupt or not an image): {path}")
    return image


def _check_bgr(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ImageError("expected a uint8 numpy image")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
        raise ImageError(f"expected an HxWx3 image, got shape {image.shape}")
    return image


def resize_rgb(image_bgr: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """BGR uint8 image -> the model's colour order, resized to input_size (uint8 HxWx3)."""
    image = _check_bgr(image_bgr)
    size = spec.input_size
    h, w = image.shape[:2]
    if (h, w) != (size, size):
        shrinking = h * w > size * size
        interp = cv2.INTER_AREA if spec.resize == "area" and shrinking else cv2.INTER_LINEAR
        image = cv2.resize(image, (size, size), interpolation=interp)
    if spec.color_order == "RGB":
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(image)


def normalize(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Resized uint8 HxWx3 (model colour order) -> float32 CHW scaled and standardised."""
    x = image.astype(np.float32) * np.float32(spec.scale)
    if any(spec.mean) or any(s != 1.0 for s in spec.std):
        x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess(image_bgr: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """One BGR uint8 image -> a (1, 3, S, S) float32 model input."""
    return normalize(resize_rgb(image_bgr, spec), spec)[None]


def preprocess_batch(images_bgr: Sequence[np.ndarray], spec: PreprocessSpec) -> np.ndarray:
    """Several BGR uint8 images -> an (N, 3, S, S) float32 batch."""
    return np.stack([normalize(resize_rgb(im, spec), spec) for im in images_bgr])
