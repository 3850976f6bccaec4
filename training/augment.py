"""Augmentations that make sense for stained blood smears, on resized uint8 RGB images.

Geometry: flips and 90-degree rotations (a smear has no up or down) and mild scale jitter.
Photometry, in the order a microscope produces it: a mild stain change in optical-density
space (the sample), slight defocus (the optics), exposure +-1 EV and white balance +-20% in
linear light with 8-bit clipping (the lamp and the camera), then sensor noise. The shared
illumination correction runs after this (see :mod:`lgld.runtime.core.preprocess`), so the
model learns from what the correction leaves (clipped backgrounds, noise), not from the shift.
Every call is driven by an explicit seed, so a run is reproducible whatever the number of
loader workers.
"""

from __future__ import annotations

import cv2
import numpy as np

from lgld.runtime.core.preprocess import linear_gain_lut
from lgld.training.perturb import stain_od_shift

MAX_EV = 1.0  # exposure range, +- stops
WHITE_BALANCE = 0.2  # default range of the red and blue gains: +-20%
STAIN_SPREAD, STAIN_BIAS = 0.08, 0.015  # stain jitter at color=1 (OD scale, OD offset)


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
