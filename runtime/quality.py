"""Is a frame fit to classify? A focus gate (variance of the Laplacian) and an exposure gate.

The measures are taken on the region that is classified, converted to grey and resized to
256 px on its longer side, so they do not depend on the camera resolution. A light Gaussian
(sigma 0.8) before the Laplacian keeps sensor noise from passing for sharpness. On the bundled
data, sharp images score about 10-60 and images defocused by a Gaussian of sigma 1.5-2 px
(at 224 px) about 3-8; the default threshold is 6.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

ANALYSIS_SIZE = 256
NOISE_SIGMA = 0.8

OK = "ok"
OUT_OF_FOCUS = "out_of_focus"
TOO_DARK = "too_dark"
TOO_BRIGHT = "too_bright"


@dataclass(frozen=True)
class QualityThresholds:
    """When a frame is rejected (see [trust] in the configuration)."""

    min_focus: float = 6.0
    dark_level: int = 25
    bright_level: int = 250
    max_dark_fraction: float = 0.5
    max_bright_fraction: float = 0.5


@dataclass(frozen=True)
class Quality:
    """The measures for one frame and the verdict (``ok`` or the first failed check)."""

    state: str
    focus: float
    dark_fraction: float
    bright_fraction: float

    def to_dict(self) -> dict[str, float]:
        return {
            "focus": round(self.focus, 2),
            "dark": round(self.dark_fraction, 4),
            "bright": round(self.bright_fraction, 4),
        }


def _grey(image_bgr: np.ndarray) -> np.ndarray:
    grey = image_bgr if image_bgr.ndim == 2 else cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)
    h, w = grey.shape
    scale = ANALYSIS_SIZE / max(h, w)
    if scale != 1.0:
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        grey = cv2.resize(grey, size, interpolation=interp)
    return grey


def focus_measure(image_bgr: np.ndarray) -> float:
    """Variance of the Laplacian of the lightly smoothed grey image at 256 px (higher = sharper)."""
    grey = cv2.GaussianBlur(_grey(image_bgr), (0, 0), NOISE_SIGMA)
    return float(cv2.Laplacian(grey, cv2.CV_32F).var())


def assess(image_bgr: np.ndarray, thresholds: QualityThresholds) -> Quality:
    """Measure focus and exposure; the verdict checks darkness, then clipping, then focus."""
    grey = _grey(image_bgr)
    dark = float(np.count_nonzero(grey <= thresholds.dark_level)) / grey.size
    bright = float(np.count_nonzero(grey >= thresholds.bright_level)) / grey.size
    focus = float(cv2.Laplacian(cv2.GaussianBlur(grey, (0, 0), NOISE_SIGMA), cv2.CV_32F).var())
    if dark > thresholds.max_dark_fraction:
        state = TOO_DARK
    elif bright > thresholds.max_bright_fraction:
        state = TOO_BRIGHT
    elif focus < thresholds.min_focus:
        state = OUT_OF_FOCUS
    else:
        state = OK
    return Quality(state, focus, dark, bright)
