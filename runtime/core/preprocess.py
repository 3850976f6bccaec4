"""The one definition of preprocessing, shared by training, evaluation, export and the runtime.

An image (OpenCV's BGR uint8 HxWx3) becomes a model input by: convert to the model's colour
order (RGB), resize to ``input_size`` x ``input_size`` (area interpolation when shrinking,
bilinear when enlarging), optionally correct the illumination (below), scale to [0, 1],
subtract ``mean`` and divide by ``std`` (the paper uses none: mean 0, std 1), and lay out as
NCHW float32.

Illumination correction (``illumination="background"``): the slide background (the bright
glass/plasma between cells) is estimated on the resized image, or given by the caller (a whole
frame's estimate, a flat-field calibration), and mapped to the model's fixed ``background``
reference by one gain per channel in linear light (sRGB decode, gain, encode: one 256-entry
lookup table per channel). That undoes a change of exposure or white balance while keeping the
stain colours of the cells. Models without the field (older ones) use ``"none"``.

Training applies its augmentations between :func:`resize_rgb` and :func:`correct_illumination`
(acquisition shifts, so the model sees what the correction leaves, e.g. clipped backgrounds) and
then :func:`normalize`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from lgld.runtime.core.imageheader import read_image_size

ILLUMINATIONS = ("none", "background")
ESTIMATE_SIZE = 64  # the background is estimated on a copy this small (speed, noise)
BRIGHT_FRACTION = 0.2  # the brightest fifth of the pixels stands for the background
MAX_GAIN = 4.0  # at most +-2 EV of correction per channel
CLIPPED = 250.0  # a background channel this bright (of 255) may be clipped


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
    illumination: str = "none"  # none | background (see the module docstring)
    background: tuple[float, float, float] = (255.0, 255.0, 255.0)  # reference, sRGB, RGB order

    def __post_init__(self) -> None:
        if self.color_order not in ("RGB", "BGR"):
            raise ValueError(f"color_order must be RGB or BGR, got {self.color_order!r}")
        if self.resize not in ("area", "bilinear"):
            raise ValueError(f"resize must be 'area' or 'bilinear', got {self.resize!r}")
        if self.input_size < 8:
            raise ValueError(f"input_size must be >= 8, got {self.input_size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need 3 values each, std > 0")
        if self.illumination not in ILLUMINATIONS:
            raise ValueError(f"illumination must be one of {ILLUMINATIONS}, "
                             f"got {self.illumination!r}")
        if len(self.background) != 3 or not all(0 < v <= 255 for v in self.background):
            raise ValueError("background needs 3 sRGB values in (0, 255]")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["background"] = list(self.background)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessSpec:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        for key in ("mean", "std", "background"):
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


def srgb_to_linear(v: np.ndarray) -> np.ndarray:
    """sRGB-encoded values in [0, 1] -> linear light (IEC 61966-2-1)."""
    v = np.asarray(v, np.float64)
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(v: np.ndarray) -> np.ndarray:
    """Linear light in [0, 1] -> sRGB-encoded values (IEC 61966-2-1)."""
    v = np.clip(np.asarray(v, np.float64), 0.0, 1.0)
    return np.where(v <= 0.0031308, v * 12.92, 1.055 * v ** (1 / 2.4) - 0.055)


_LINEAR_LEVELS = srgb_to_linear(np.arange(256) / 255.0)


def estimate_background(image: np.ndarray) -> np.ndarray:
    """The slide background of a uint8 HxWx3 image: 3 sRGB values (0-255, the image's channel
    order), the per-channel median of its brightest pixels on a small copy.

    The brightest fifth by channel sum is background wherever the background shows at all
    (cells absorb light); a per-channel median of it ignores stray bright specks.
    """
    step = max(1, min(image.shape[:2]) // (2 * ESTIMATE_SIZE))  # a whole frame: subsample first
    view = np.ascontiguousarray(image[::step, ::step]) if step > 1 else image
    small = cv2.resize(view, (ESTIMATE_SIZE, ESTIMATE_SIZE), interpolation=cv2.INTER_AREA)
    pixels = small.reshape(-1, 3)
    brightness = pixels.sum(axis=1, dtype=np.int32)
    k = max(1, int(len(brightness) * BRIGHT_FRACTION))
    brightest = pixels[np.argpartition(brightness, -k)[-k:]]
    return np.median(brightest, axis=0).astype(np.float64)


def linear_gain_lut(gains: Sequence[float]) -> np.ndarray:
    """A (256, 1, 3) uint8 lookup table (``cv2.LUT``) multiplying linear light by one gain per
    channel, clipped to 8 bits: an exposure or white-balance change of an sRGB image."""
    lut = 255.0 * linear_to_srgb(_LINEAR_LEVELS[:, None] * np.asarray(gains, np.float64)[None])
    return np.rint(lut).astype(np.uint8)[:, None, :]


def illumination_gains(background: np.ndarray, reference: Sequence[float]) -> np.ndarray:
    """Per-channel linear gains mapping ``background`` to ``reference`` (sRGB 0-255, same
    channel order), at most +-2 EV.

    A clipped channel (>= CLIPPED) only says its true background is at least full scale, so
    its gain is at most ``reference / full scale``; it takes the smallest gain of the unclipped
    channels within that bound. That undoes an exposure increase exactly whenever one channel
    of the background is still unclipped, instead of leaving the clipped channels too bright
    (a colour cast the model has never seen).
    """
    bg = np.asarray(background, np.float64)
    gains = srgb_to_linear(np.asarray(reference, np.float64) / 255.0) / srgb_to_linear(
        np.maximum(bg, 1.0) / 255.0)
    clipped = bg >= CLIPPED
    if clipped.any() and not clipped.all():
        gains[clipped] = np.minimum(gains[clipped], gains[~clipped].min())
    return np.clip(gains, 1.0 / MAX_GAIN, MAX_GAIN)


def illumination_lut(background: np.ndarray, reference: Sequence[float]) -> np.ndarray:
    """The lookup table of :func:`illumination_gains`; a clipped pixel (255) of a channel that
    is darkened maps to the reference background, its likeliest true value, rather than to the
    lower bound the gain gives it."""
    gains = illumination_gains(background, reference)
    lut = linear_gain_lut(gains)
    darkened = gains < 1.0
    lut[255, 0, darkened] = np.maximum(lut[255, 0, darkened],
                                       np.rint(np.asarray(reference)[darkened]).astype(np.uint8))
    return lut


def correct_illumination(
    image: np.ndarray, spec: PreprocessSpec, background: np.ndarray | None = None
) -> np.ndarray:
    """Map the background of a resized uint8 image (model colour order) to the spec's reference.

    ``background``: the background in the same colour order if known (from the whole frame or a
    flat-field calibration); estimated from ``image`` otherwise. Identity for ``"none"``.
    """
    if spec.illumination == "none":
        return image
    if background is None:
        background = estimate_background(image)
    return cv2.LUT(image, illumination_lut(background, spec.background))


def frame_background(image_bgr: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """The background of a whole BGR frame, in the spec's colour order (pass it to
    :func:`preprocess_batch` so every crop of the frame gets the frame's correction)."""
    bg = estimate_background(_check_bgr(image_bgr))
    return bg[::-1].copy() if spec.color_order == "RGB" else bg


def normalize(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Resized uint8 HxWx3 (model colour order) -> float32 CHW scaled and standardised."""
    x = image.astype(np.float32) * np.float32(spec.scale)
    if any(spec.mean) or any(s != 1.0 for s in spec.std):
        x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess(
    image_bgr: np.ndarray, spec: PreprocessSpec, background: np.ndarray | None = None
) -> np.ndarray:
    """One BGR uint8 image -> a (1, 3, S, S) float32 model input."""
    return preprocess_batch([image_bgr], spec, background)


def preprocess_batch(
    images_bgr: Sequence[np.ndarray], spec: PreprocessSpec, background: np.ndarray | None = None
) -> np.ndarray:
    """Several BGR uint8 images -> an (N, 3, S, S) float32 batch.

    ``background`` (model colour order, see :func:`frame_background`) applies one frame's
    illumination correction to all of them; by default each image is corrected on its own.
    """
    return np.stack([
        normalize(correct_illumination(resize_rgb(im, spec), spec, background), spec)
        for im in images_bgr
    ])
