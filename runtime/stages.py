"""The pipeline's per-mode stages: what one frame becomes in field, roi and cell mode.

The pipeline runs every mode the same way: on the capture thread the stage's region, the
calibration, the quality gate and :meth:`Stage.prepare`; on the inference thread
:meth:`Stage.classify`, then the statistics and the :class:`~lgld.runtime.results.Result`. What
differs between the modes lives here, so a new mode is a new stage, not new branches.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from lgld.runtime.cells.session import CountSession
from lgld.runtime.config import TrustSection
from lgld.runtime.geometry import Region, model_region
from lgld.runtime.sources.base import Frame
from lgld.runtime.trust import (
    INVALID_OUTPUT,
    OK,
    TOO_BRIGHT,
    TOO_DARK,
    Quality,
    Smoother,
    decide,
)

log = logging.getLogger("lgld.runtime")


@dataclass
class Outcome:
    """A stage's answer for one frame: the mode-specific part of a Result."""

    state: str
    label: str | None = None
    confidence: float | None = None
    probabilities: dict[str, float] = field(default_factory=dict)  # smoothed
    instant: dict[str, float] = field(default_factory=dict)  # this frame's own
    cells: list[dict[str, Any]] | None = None  # cell mode: the cells found in the frame
    timing: dict[str, float] = field(default_factory=dict)


class Stage(Protocol):
    """One mode's per-frame work (field and roi: :class:`ClassifyStage`; cells:
    :class:`CountStage`)."""

    #: Frames are shown only once classified (boxes drawn on their own frame), and a frame is
    #: not prepared while the last prepared one still waits (preparing it costs too much).
    shows_classified_frames: bool
    #: Crop from the camera's low-resolution stream where there is one.
    use_lores: bool

    def region(self, shape: tuple[int, ...]) -> Region:
        """The part of a frame of this shape the stage works on."""
        ...

    def prepare(self, frame: Frame, crop: np.ndarray, quality: Quality) -> tuple[Quality, Any]:
        """Capture thread: the quality this mode goes by and the payload for :meth:`classify`
        (None: nothing to classify)."""
        ...

    def classify(self, frame: Frame, quality: Quality, payload: Any) -> Outcome:
        """Inference thread: the outcome for a prepared frame."""
        ...

    @property
    def window(self) -> int:
        """How many frames the current answer is smoothed over."""
        ...

    @property
    def session(self) -> CountSession | None:
        """Cell mode's count session; None in the other modes."""
        ...


class ClassifyStage:
    """Field and roi mode: the model classifies the region of every good frame; answers are
    smoothed over the last frames and gated by confidence."""

    shows_classified_frames = False
    session = None

    def __init__(self, classifier: Any, mode: str, trust: TrustSection, smooth: bool,
                 field_crop: str = "center", roi: list[int] | None = None,
                 roi_size: float = 0.5) -> None:
        self.classifier = classifier
        self.classes: list[str] = list(classifier.classes)
        self.mode = mode
        self.use_lores = mode == "field"
        self.trust = trust
        self.field_crop, self.roi, self.roi_size = field_crop, list(roi or []), roi_size
        self.smoother = Smoother(trust.window if smooth else 1)
        self._invalid = 0  # frames whose model output was not finite

    def region(self, shape: tuple[int, ...]) -> Region:
        return model_region(shape, self.mode, self.field_crop, self.roi, self.roi_size)

    def prepare(self, frame: Frame, crop: np.ndarray, quality: Quality) -> tuple[Quality, Any]:
        return quality, self.classifier.prepare([crop]) if quality.state == OK else None

    def classify(self, frame: Frame, quality: Quality, payload: Any) -> Outcome:
        if payload is None:
            self.smoother.reset()
            return Outcome(quality.state)
        probs = np.asarray(self.classifier.predict(payload)[0], dtype=np.float32)
        if not np.all(np.isfinite(probs)):  # never a class, never smoothed into the next
            self.smoother.reset()
            self._warn_invalid_output()
            return Outcome(INVALID_OUTPUT)
        smoothed = self.smoother.update(probs)
        decision = decide(smoothed, self.classes, self.trust.min_confidence)
        return Outcome(
            decision.state, decision.label, decision.confidence,
            probabilities={c: float(p) for c, p in zip(self.classes, smoothed, strict=True)},
            instant={c: float(p) for c, p in zip(self.classes, probs, strict=True)},
        )

    @property
    def window(self) -> int:
        return len(self.smoother)

    def _warn_invalid_output(self) -> None:
        """Say it on the first non-finite output and then every 1000th (not every frame)."""
        self._invalid += 1
        if self._invalid % 1000 == 1:
            log.warning("the model answered NaN or infinity (%d frame(s) so far): those frames "
                        "are 'invalid_output', never a class; check the model file",
                        self._invalid)


class CountStage:
    """Cell mode: white cells found in the whole frame, classified, tracked and counted by the
    count session. A sparse field is no focus measure, so only the exposure gates a frame."""

    shows_classified_frames = True
    use_lores = False
    window = 0

    def __init__(self, session: CountSession) -> None:
        self.session = session

    def region(self, shape: tuple[int, ...]) -> Region:
        return 0, 0, shape[1], shape[0]

    def prepare(self, frame: Frame, crop: np.ndarray, quality: Quality) -> tuple[Quality, Any]:
        if quality.state in (TOO_DARK, TOO_BRIGHT):
            return quality, None
        return dataclasses.replace(quality, state=OK), self.session.stage.prepare(frame.image)

    def classify(self, frame: Frame, quality: Quality, payload: Any) -> Outcome:
        if payload is None:
            return Outcome(quality.state, cells=[])
        found = self.session.process(payload, frame.image, frame.mono, frame.index)
        return Outcome(quality.state, cells=found.cells,
                       timing={"detect_ms": round(found.detect_ms, 2),
                               "classify_ms": round(found.classify_ms, 2)})
