"""Temporal smoothing of class probabilities and the confidence threshold.

A single frame can flicker between classes as the stage moves or the focus breathes. The shown
prediction is the mean of the probability vectors of the last ``window`` classified frames; when
its top probability is below ``min_confidence`` the result is "uncertain" instead of a class.
Frames rejected by the quality gate reset the window, so a prediction never outlives the view
it was made on.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

UNCERTAIN = "uncertain"


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
    return Decision("ok", classes[top], confidence, probabilities)
