"""When a result is trusted: one state vocabulary, the quality gate and temporal smoothing.

Every frame ends in one state, named the same everywhere (log, API, metrics, overlay, page):
``ok`` (a class is shown), ``uncertain`` (classified, smoothed confidence below
``trust.min_confidence``), a quality-gate rejection (``out_of_focus``, ``too_dark``,
``too_bright``; not classified), or ``invalid_output`` (the model answered NaN or infinity:
never a class, and not smoothed into the next frames).

Quality gate: focus (variance of the Laplacian) and exposure, measured on the classified region
converted to grey and resized to 256 px on its longer side, so they do not depend on the camera
resolution. A light Gaussian (sigma 0.8) before the Laplacian keeps sensor noise from passing
for sharpness.

Smoothing: the shown prediction is the mean of the probability vectors of the last
``trust.window`` classified frames, so a single frame cannot flicker between classes. Frames
rejected by the quality gate reset the window: a prediction never outlives the view it was
made on. Thresholds and window come from the [trust] configuration section.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import cv2
import numpy as np

from lgld.runtime.config import TrustSection

OK = "ok"
UNCERTAIN = "uncertain"
OUT_OF_FOCUS = "out_of_focus"
TOO_DARK = "too_dark"
TOO_BRIGHT = "too_bright"
INVALID_OUTPUT = "invalid_output"
STATES = (OK, UNCERTAIN, OUT_OF_FOCUS, TOO_DARK, TOO_BRIGHT, INVALID_OUTPUT)
#: How a state reads to a person (overlay, live page).
STATE_LABELS = {
    OK: "ok",
    UNCERTAIN: "uncertain",
    OUT_OF_FOCUS: "out of focus",
    TOO_DARK: "too dark",
    TOO_BRIGHT: "too bright",
    INVALID_OUTPUT: "invalid model output",
}

ANALYSIS_SIZE = 256
NOISE_SIGMA = 0.8


# ---------------------------------------------------------------------------------------------
# The quality gate


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


def assess(image_bgr: np.ndarray, trust: TrustSection) -> Quality:
    """Measure focus and exposure; the verdict checks darkness, then clipping, then focus."""
    grey = _grey(image_bgr)
    dark = float(np.count_nonzero(grey <= trust.dark_level)) / grey.size
    bright = float(np.count_nonzero(grey >= trust.bright_level)) / grey.size
    focus = float(cv2.Laplacian(cv2.GaussianBlur(grey, (0, 0), NOISE_SIGMA), cv2.CV_32F).var())
    if dark > trust.max_dark_fraction:
        state = TOO_DARK
    elif bright > trust.max_bright_fraction:
        state = TOO_BRIGHT
    elif focus < trust.min_focus:
        state = OUT_OF_FOCUS
    else:
        state = OK
    return Quality(state, focus, dark, bright)


# ---------------------------------------------------------------------------------------------
# Smoothing and the confidence threshold


@dataclass(frozen=True)
class Decision:
    """The smoothed verdict: state ``ok`` with a class, or ``uncertain`` without one."""

    state: str
    label: str | None
    confidence: float
    probabilities: np.ndarray


class Smoother:
    """Mean of the last ``window`` probability vectors (bounded memory)."""

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        self.window = window
        self._history: deque[np.ndarray] = deque(maxlen=window)

    def __len__(self) -> int:
        return len(self._history)

    def reset(self) -> None:
        self._history.clear()

    def update(self, probabilities: np.ndarray) -> np.ndarray:
        """Add one frame's probabilities; return the mean over the window."""
        self._history.append(np.asarray(probabilities, dtype=np.float32).copy())
        return np.mean(np.stack(self._history), axis=0)


def decide(probabilities: np.ndarray, classes: list[str], min_confidence: float) -> Decision:
    """Top class of the (smoothed) probabilities, or ``uncertain`` below the threshold."""
    probabilities = np.asarray(probabilities, dtype=np.float32)
    top = int(np.argmax(probabilities))
    confidence = float(probabilities[top])
    if confidence < min_confidence:
        return Decision(UNCERTAIN, None, confidence, probabilities)
    return Decision(OK, classes[top], confidence, probabilities)
