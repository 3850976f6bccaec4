"""Augmentations that make sense for stained blood smears, on resized uint8 RGB images.

Flips and 90-degree rotations (a smear has no up or down), mild scale jitter, stain/colour
shifts (per-channel gains), brightness/contrast jitter and slight defocus blur. Every call is
driven by an explicit seed, so a run is reproducible whatever the number of loader workers.
"""

from __future__ import annotations

import cv2
import numpy as np


def augment(image: np.ndarray, seed: int, color: float = 1.0) -> np.ndarray:
    """Return an augmented copy of an HxWx3 uint8 image (same size).

    ``color`` scales the stain/brightness/contrast jitter (0: geometry and blur only, for data
    sets whose classes differ in colour, where jitter would erase a real in-distribution cue).
    """
    rng = np.random.default_rng(seed)
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
    x = out.astype(np.float32)
    gains = (1 + color * rng.uniform(-0.08, 0.08, size=3)).astype(np.float32)  # stain
    brightness = np.float32(1 + color * rng.uniform(-0.15, 0.15))
    contrast = np.float32(1 + color * rng.uniform(-0.15, 0.15))
    mean = x.mean()
    x = (x * gains * brightness - mean) * contrast + mean
    if rng.random() < 0.2:  # slight defocus
        x = cv2.GaussianBlur(x, (0, 0), sigmaX=float(rng.uniform(0.3, 1.0)))
    return np.ascontiguousarray(np.clip(x, 0, 255).astype(np.uint8))
