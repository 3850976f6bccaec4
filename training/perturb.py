"""Realistic acquisition shifts for robustness evaluation (``lgld-eval --perturb``).

Each perturbation acts on the raw BGR uint8 image, before the shared preprocessing, the way a
different microscope, stain batch or camera setting would change what the Pi sees:

* ``stain``: a stain-intensity and hue shift in optical-density (Beer-Lambert) space, along the
  haematoxylin/eosin/residual axes of Ruifrok & Johnston's colour deconvolution;
* ``blur``: defocus, a disk (pillbox) point-spread function;
* ``noise``: sensor noise, Poisson shot noise plus Gaussian read noise;
* ``jpeg``: re-compression at a low JPEG quality;
* ``underexposure`` / ``overexposure``: an exposure change in linear light (sRGB curve),
  clipped to 8 bits: -1/-2 EV and +0.6/+1 EV;
* ``whitebalance``: a colour cast in linear light, red up and blue down (a warmer lamp or a
  camera's white balance): R x1.2, B x0.8 (mild), R x1.4, B x0.6 (strong).

Two severities each (``mild``, ``strong``). Sizes (blur radius) scale with the image, so a
severity means the same on a 224 px field and a 360 px cell crop. Every call is deterministic:
random parts (stain direction, noise) come from an explicit per-image seed.
"""

from __future__ import annotations

import zlib

import cv2
import numpy as np

from lgld.runtime.core.preprocess import linear_gain_lut

PERTURBATIONS = (
    "stain", "blur", "noise", "jpeg", "underexposure", "overexposure", "whitebalance",
)
SEVERITIES = ("mild", "strong")

# Per severity: stain (OD scale spread, OD bias spread), defocus radius in px at 224 px,
# noise (photons at full scale, read noise in 8-bit levels), JPEG quality, exposure gains.
_STAIN = {"mild": (0.10, 0.02), "strong": (0.25, 0.06)}
_BLUR_RADIUS = {"mild": 1.5, "strong": 3.0}
_NOISE = {"mild": (400.0, 3.0), "strong": (60.0, 8.0)}
_JPEG_QUALITY = {"mild": 30, "strong": 10}
_UNDER = {"mild": 0.5, "strong": 0.25}  # -1 EV, -2 EV
_OVER = {"mild": 2.0**0.6, "strong": 2.0}  # +0.6 EV, +1 EV
_WHITE_BALANCE = {"mild": (1.2, 1.0, 0.8), "strong": (1.4, 1.0, 0.6)}  # linear gains, R G B

# Ruifrok & Johnston's H&E-DAB optical-density basis (rows: H, E, residual), in RGB order.
HED_FROM_RGB = np.array(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float64
)
HED_FROM_RGB /= np.linalg.norm(HED_FROM_RGB, axis=1, keepdims=True)
_RGB_FROM_HED_INV = np.linalg.inv(HED_FROM_RGB)


def conditions() -> list[tuple[str, str]]:
    """Every (perturbation, severity) pair, in report order."""
    return [(p, s) for p in PERTURBATIONS for s in SEVERITIES]


def image_seed(key: str, kind: str, severity: str) -> int:
    """A stable seed for one image (``key``: e.g. its sha256) and one condition."""
    return zlib.crc32(f"{key}|{kind}|{severity}".encode())


def _check(kind: str, severity: str) -> None:
    if kind not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {kind!r}; choose one of {PERTURBATIONS}")
    if severity not in SEVERITIES:
        raise ValueError(f"unknown severity {severity!r}; choose one of {SEVERITIES}")


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.clip(np.rint(x), 0, 255).astype(np.uint8))


def stain_od_shift(rgb: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Scale (``alpha``) and offset (``beta``) each stain's optical density (H, E, residual)
    of an RGB uint8 image (HED-style stain augmentation)."""
    od = -np.log((rgb.astype(np.float32) + 1.0) / 256.0)
    stains = od @ _RGB_FROM_HED_INV.astype(np.float32)
    od = (stains * alpha.astype(np.float32) + beta.astype(np.float32)) @ HED_FROM_RGB.astype(
        np.float32)
    return _to_uint8(256.0 * np.exp(-np.maximum(od, 0.0)) - 1.0)


def stain_shift(image: np.ndarray, severity: str, rng: np.random.Generator) -> np.ndarray:
    """A stain shift of one severity on a BGR image."""
    spread, bias = _STAIN[severity]
    # A strong shift is a strong one: magnitudes at least half the spread, random directions.
    alpha = 1.0 + rng.choice([-1.0, 1.0], 3) * rng.uniform(spread / 2, spread, 3)
    beta = rng.choice([-1.0, 1.0], 3) * rng.uniform(bias / 2, bias, 3)
    return np.ascontiguousarray(stain_od_shift(image[..., ::-1], alpha, beta)[..., ::-1])


def _disk_kernel(radius: float) -> np.ndarray:
    r = int(np.ceil(radius))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    k = np.clip(radius + 0.5 - np.hypot(yy, xx), 0.0, 1.0).astype(np.float32)
    return k / k.sum()


def defocus(image: np.ndarray, severity: str) -> np.ndarray:
    """Disk point-spread function, radius relative to a 224 px image."""
    radius = _BLUR_RADIUS[severity] * min(image.shape[:2]) / 224.0
    return cv2.filter2D(image, -1, _disk_kernel(max(1.0, radius)), borderType=cv2.BORDER_REFLECT)


def sensor_noise(image: np.ndarray, severity: str, rng: np.random.Generator) -> np.ndarray:
    """Poisson shot noise (``photons`` at full scale) plus Gaussian read noise."""
    photons, read = _NOISE[severity]
    x = image.astype(np.float64) / 255.0
    x = rng.poisson(x * photons) / photons * 255.0
    x += rng.normal(0.0, read, image.shape)
    return _to_uint8(x)


def jpeg(image: np.ndarray, severity: str) -> np.ndarray:
    """Encode and decode at a low JPEG quality."""
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY[severity]])
    if not ok:  # pragma: no cover - OpenCV always encodes a valid uint8 image
        raise ValueError("JPEG encoding failed")
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)


def exposure(image: np.ndarray, gain: float) -> np.ndarray:
    """Multiply linear-light intensity by ``gain``, clipping highlights."""
    return cv2.LUT(image, linear_gain_lut((gain, gain, gain)))


def white_balance(image: np.ndarray, gains_rgb: tuple[float, float, float]) -> np.ndarray:
    """Multiply each channel's linear light by its gain (RGB order) of a BGR image, clipped."""
    return cv2.LUT(image, linear_gain_lut(gains_rgb[::-1]))


def perturb(image_bgr: np.ndarray, kind: str, severity: str, seed: int = 0) -> np.ndarray:
    """Apply one perturbation at one severity to a BGR uint8 HxWx3 image (returns a copy)."""
    _check(kind, severity)
    rng = np.random.default_rng(seed)
    if kind == "stain":
        return stain_shift(image_bgr, severity, rng)
    if kind == "blur":
        return defocus(image_bgr, severity)
    if kind == "noise":
        return sensor_noise(image_bgr, severity, rng)
    if kind == "jpeg":
        return jpeg(image_bgr, severity)
    if kind == "underexposure":
        return exposure(image_bgr, _UNDER[severity])
    if kind == "whitebalance":
        return white_balance(image_bgr, _WHITE_BALANCE[severity])
    return exposure(image_bgr, _OVER[severity])
