"""Augmentations that make sense for stained blood smears, on resized uint8 RGB images.

Geometry: flips and 90-degree rotations (a smear has no up or down) and mild scale jitter.
Photometry, in the order a microscope produces it: a mild stain change in optical-density
space (the sample), slight defocus (the optics), exposure +-1 EV and white balance +-20% in
linear light with 8-bit clipping (the lamp and the camera), then sensor noise. The shared
illumination correction runs after this (see :mod:`lgld.runtime.core.preprocess`), so the
model learns from what the correction leaves (clipped backgrounds, noise), not from the shift.
Every call is driven by an explicit seed, so a run is reproducible whatever the number of
loader workers.

:func:`augment_microscope` (profile ``microscope``) spans microscopes rather than one lamp:
any rotation and +-25% scale around cell mode's framing, strong stain jitter in HED
optical-density space with random stain vectors (Tellez et al. 2019), lamp colour and
background tint, gamma and saturation, defocus and lost resolution, sensor noise and JPEG
at quality 60-95.
"""

from __future__ import annotations

import cv2
import numpy as np

from lgld.runtime.core.preprocess import linear_gain_lut
from lgld.training.perturb import HED_FROM_RGB, stain_od_shift

MAX_EV = 1.0  # exposure range, +- stops
WHITE_BALANCE = 0.2  # default range of the red and blue gains: +-20%
STAIN_SPREAD, STAIN_BIAS = 0.08, 0.015  # stain jitter at color=1 (OD scale, OD offset)
# The microscope profile at color=1: HED scale and offset, stain-vector mixing, scale range.
HED_SPREAD, HED_BIAS, STAIN_MIX, SCALE = 0.3, 0.06, 0.12, 0.25


def _geometry(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape[:2]
    out = image
    if rng.random() < 0.5:  # mild scale jitter: crop 85-100% and resize back
        scale = rng.uniform(0.85, 1.0)
        ch, cw = max(8, round(h * scale)), max(8, round(w * scale))
        y0, x0 = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        out = cv2.resize(out[y0 : y0 + ch, x0 : x0 + cw], (w, h), interpolation=cv2.INTER_AREA)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    if rng.random() < 0.5:
        out = out[::-1]
    k = int(rng.integers(0, 4))
    if k and h == w:
        out = np.rot90(out, k)
    return np.ascontiguousarray(out)


def augment(image: np.ndarray, seed: int, color: float = 1.0,
            white_balance: float = WHITE_BALANCE) -> np.ndarray:
    """Return an augmented copy of an HxWx3 uint8 RGB image (same size).

    ``color`` scales the stain jitter (0: none, for data sets whose classes differ in stain
    colour, where jitter would erase a real in-distribution cue); ``white_balance`` is the
    range of the red and blue gains (+-, linear light). Exposure, white balance, blur and noise
    are always applied.
    """
    rng = np.random.default_rng(seed)
    out = _geometry(image, rng)
    if color > 0 and rng.random() < 0.5:
        alpha = 1.0 + rng.uniform(-1, 1, 3) * STAIN_SPREAD * color
        beta = rng.uniform(-1, 1, 3) * STAIN_BIAS * color
        out = stain_od_shift(out, alpha, beta)
    if rng.random() < 0.2:  # slight defocus
        out = cv2.GaussianBlur(out, (0, 0), sigmaX=float(rng.uniform(0.3, 1.2)))
    if rng.random() < 0.8:
        gains = np.full(3, 2.0 ** rng.uniform(-MAX_EV, MAX_EV))
        gains[[0, 2]] *= 1.0 + rng.uniform(-white_balance, white_balance, 2)
        out = cv2.LUT(out, linear_gain_lut(gains))
    if rng.random() < 0.3:  # sensor noise: shot noise plus read noise, in 8-bit levels
        photons = rng.uniform(300.0, 2000.0)
        x = rng.poisson(out.astype(np.float32) * (photons / 255.0)).astype(np.float32)
        x = x * (255.0 / photons) + rng.normal(0.0, rng.uniform(0.0, 3.0), out.shape)
        out = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(out)


def _rotate_scale(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Any rotation and a +-SCALE zoom about the centre (the cell stays centred); what comes
    in from outside is the image reflected (more smear, not a frame)."""
    h, w = image.shape[:2]
    zoom = float(np.exp(rng.uniform(np.log(1 - SCALE), np.log(1 + SCALE))))
    m = cv2.getRotationMatrix2D((w / 2, h / 2), float(rng.uniform(0, 360)), zoom)
    m[:, 2] += rng.uniform(-0.04, 0.04, 2) * (w, h)  # detection centres are a little off
    return cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT_101)


def _stain(image: np.ndarray, rng: np.random.Generator, color: float) -> np.ndarray:
    """HED scale/offset jitter plus a random mixing of the stain vectors, in optical density."""
    od = -np.log((image.astype(np.float32) + 1.0) / 256.0)
    basis = HED_FROM_RGB.astype(np.float32)
    mixed = basis + rng.normal(0.0, STAIN_MIX * color, basis.shape).astype(np.float32)
    mixed /= np.linalg.norm(mixed, axis=1, keepdims=True)
    stains = od @ np.linalg.inv(basis)
    alpha = (1.0 + rng.uniform(-1, 1, 3) * HED_SPREAD * color).astype(np.float32)
    beta = (rng.uniform(-1, 1, 3) * HED_BIAS * color).astype(np.float32)
    od = (stains * alpha + beta) @ mixed
    return np.clip(np.rint(256.0 * np.exp(-np.maximum(od, 0.0)) - 1.0), 0, 255).astype(np.uint8)


def _tone(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gamma and saturation (a camera's tone curve and colour processing)."""
    gamma = float(np.exp(rng.uniform(np.log(0.7), np.log(1.4))))
    lut = np.clip(255.0 * (np.arange(256) / 255.0) ** gamma + 0.5, 0, 255).astype(np.uint8)
    out = cv2.LUT(image, lut)
    sat = rng.uniform(0.6, 1.4)
    grey = out.astype(np.float32).mean(axis=2, keepdims=True)
    return np.clip(grey + (out - grey) * sat + 0.5, 0, 255).astype(np.uint8)


def _optics(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Defocus, or a camera of lower resolution (down- and upsampled)."""
    h, w = image.shape[:2]
    if rng.random() < 0.35:
        image = cv2.GaussianBlur(image, (0, 0), sigmaX=float(rng.uniform(0.4, 2.0)))
    if rng.random() < 0.3:
        f = rng.uniform(1.5, 3.0)
        small = cv2.resize(image, (max(8, round(w / f)), max(8, round(h / f))),
                           interpolation=cv2.INTER_AREA)
        image = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    return image


def augment_microscope(image: np.ndarray, seed: int, color: float = 1.0,
                       white_balance: float = 0.3) -> np.ndarray:
    """An augmented copy of an HxWx3 uint8 RGB cell crop as another microscope could show it
    (see the module docstring); ``color`` scales the stain jitter, ``white_balance`` the lamp
    colour range (+-, linear light)."""
    rng = np.random.default_rng(seed)
    out = _geometry(image, rng)
    if rng.random() < 0.8:
        out = _rotate_scale(out, rng)
    if color > 0 and rng.random() < 0.8:
        out = _stain(out, rng, color)
    if rng.random() < 0.5:
        out = _tone(out, rng)
    out = _optics(out, rng)
    if rng.random() < 0.8:  # lamp brightness and colour, background tint
        gains = np.full(3, 2.0 ** rng.uniform(-MAX_EV, MAX_EV))
        gains *= 1.0 + rng.uniform(-white_balance, white_balance, 3)
        out = cv2.LUT(out, linear_gain_lut(gains))
    if rng.random() < 0.3:
        photons = rng.uniform(300.0, 2000.0)
        x = rng.poisson(out.astype(np.float32) * (photons / 255.0)).astype(np.float32)
        x = x * (255.0 / photons) + rng.normal(0.0, rng.uniform(0.0, 3.0), out.shape)
        out = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    if rng.random() < 0.5:
        q = int(rng.integers(60, 96))
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, q])
        if ok:
            out = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    return np.ascontiguousarray(out)
