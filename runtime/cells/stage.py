"""The cell-mode stage of the pipeline: detect -> crops -> one batched model call -> track -> count.

:meth:`CellStage.prepare` (detection, crops, preprocessing) runs on the pipeline's capture
thread, beside inference; :meth:`CellStage.classify` (the one model call for all cells of the
frame, tracking, counting) on the inference thread. It knows nothing about threads, sources,
logs or the web page.

Live sources are tracked: a cell is counted once per track (see :mod:`.track`). Unrelated
images (``tracking=False``) have no tracks: every whole cell of every image is counted once,
so a folder of fields gives a differential count too.

With a microscope check (``domain``, core.domain; its cells are added by the count session) a
confident call the check cannot vouch for is shown as ``unfamiliar`` rather than ``ok``: it
still counts as its class, but is not shown as sure.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from lgld.runtime.cells.count import DifferentialCount
from lgld.runtime.cells.crops import (
    cell_crop,
    cell_crops,
    check_white_cell_model,
    crop_side,
    white_balanced,
)
from lgld.runtime.cells.detect import (
    CellDetector,
    Detection,
    Detections,
    DetectorSettings,
    background_reference,
)
from lgld.runtime.cells.track import (
    OK,
    PARTIAL,
    UNCERTAIN,
    UNCLASSIFIED,
    UNFAMILIAR,
    CellTracker,
    CountedCell,
    TrackerSettings,
)
from lgld.runtime.config import CellsSection
from lgld.runtime.core.classifier import softmax
from lgld.runtime.core.domain import DomainCheck


@dataclass
class CellInput:
    """A frame after detection and cropping: what the model call needs."""

    found: Detections
    classified: list[int]  # indices of the cells whose crops are in batch
    batch: np.ndarray | None  # (N, 3, S, S) model input, None when no cell is classified
    detect_ms: float
    prepare_ms: float


@dataclass
class CellFrame:
    """One frame's cell-mode result."""

    cells: list[dict[str, Any]]  # the "cells" of the frame record (docs/log-format.md)
    counted: list[CountedCell] = field(default_factory=list)  # counted in this frame
    crops: list[np.ndarray] = field(default_factory=list)  # full-resolution crop per counted
    logits: list[np.ndarray] = field(default_factory=list)  # model logits per counted cell
    detect_ms: float = 0.0
    classify_ms: float = 0.0
    warnings: list[str] = field(default_factory=list)


class CellStage:
    """Everything cell mode does to a frame; ``tracking=False`` for unrelated images."""

    def __init__(self, classifier: Any, detector: DetectorSettings | None = None,
                 tracker: TrackerSettings | None = None, target: int = CellsSection.target,
                 tracking: bool = True, domain: DomainCheck | None = None) -> None:
        check_white_cell_model(classifier.classes)
        self.classifier = classifier
        self.classes = list(classifier.classes)
        self.detector = CellDetector(detector)
        self.tracker_settings = tracker or TrackerSettings()
        self.tracker = CellTracker(self.classes, self.tracker_settings) if tracking else None
        self.count = DifferentialCount(self.classes, target)
        self.domain = domain  # the session's microscope check: which calls are shown as sure
        self._untracked_ids = 0  # images: each counted cell its own id, so it can be reviewed

    def reset(self) -> None:
        """Start a new count: counts to zero, tracks forgotten (new tracks get new ids)."""
        self.count.reset()
        self._untracked_ids = 0
        if self.tracker is not None:
            self.tracker.reset()

    def prepare(self, image: np.ndarray) -> CellInput:
        """Detection, crops and preprocessing (no model call)."""
        t0 = time.perf_counter()
        found = self.detector.detect(image)
        t1 = time.perf_counter()
        # live: partial cells are shown but never counted, so not classified (saves time);
        # unrelated images: every cell gets a class, partial ones keep their state
        chosen = [i for i, c in enumerate(found.cells) if self.tracker is None or not c.partial]
        batch = None
        if chosen:
            crops = cell_crops(image, [found.cells[i] for i in chosen], found.crop_diameter,
                               self.classifier.info.input_size)
            batch = self.classifier.prepare(crops)
        t2 = time.perf_counter()
        return CellInput(found, chosen, batch, 1000 * (t1 - t0), 1000 * (t2 - t1))

    def classify(self, prepared: CellInput, image: np.ndarray, now: float) -> CellFrame:
        """One model call for all cells, then tracking and counting."""
        t0 = time.perf_counter()
        found = prepared.found
        probs = np.zeros((len(found.cells), len(self.classes)), np.float32)
        logits = np.full(probs.shape, np.nan, np.float32)
        if prepared.batch is not None:
            if hasattr(self.classifier, "logits"):
                logits[prepared.classified] = self.classifier.logits(prepared.batch)
                probs[prepared.classified] = softmax(logits[prepared.classified])
            else:  # a classifier that gives probabilities only (tests' stand-ins)
                probs[prepared.classified] = self.classifier.predict(prepared.batch)
            probs[~np.isfinite(probs).all(axis=1)] = 0.0  # a broken output is never a class
        result = CellFrame([], detect_ms=prepared.detect_ms, warnings=list(found.warnings))
        side = crop_side(found.crop_diameter)
        scores = None if self.domain is None else self.domain.cell_scores(logits)
        if self.tracker is None:
            for i, cell in enumerate(found.cells):
                score = None if scores is None else float(scores[i])
                record = self._untracked(cell, probs[i], score)
                result.cells.append(record)
                if not cell.partial:
                    state = record["state"]
                    label = record["class"] if state != UNCERTAIN else UNCLASSIFIED
                    self._untracked_ids += 1
                    self._counted(result, CountedCell(
                        self._untracked_ids, label, record["confidence"], record["probs"], 1,
                        cell.box, i, state, score), image, found, side, logits)
        else:
            update = self.tracker.update(found.cells, probs, image.shape[1], now, scores)
            for shown in update.cells:
                result.cells.append({
                    "box": list(shown.box), "class": shown.label,
                    "confidence": round(shown.confidence, 4),
                    "state": self._vouched(shown.state, shown.domain_score),
                    "track": shown.track, "probs": shown.probs, "counted": shown.counted,
                })
            for counted in update.counted:
                counted = replace(counted, state=self._vouched(counted.state,
                                                               counted.domain_score))
                self._counted(result, counted, image, found, side, logits)
        result.classify_ms = prepared.prepare_ms + 1000 * (time.perf_counter() - t0)
        return result

    def process(self, image: np.ndarray, now: float | None = None) -> CellFrame:
        """prepare + classify in sequence (tests, tools)."""
        return self.classify(self.prepare(image), image,
                             time.monotonic() if now is None else now)

    def _counted(self, result: CellFrame, counted: CountedCell, image: np.ndarray,
                 found: Detections, side: int, logits: np.ndarray) -> None:
        self.count.add(counted.label)
        result.counted.append(counted)
        result.logits.append(logits[counted.detection_index])
        centre = found.cells[counted.detection_index].centre
        fill = background_reference(image)  # the saved crop is colour-balanced as the model saw it
        result.crops.append(white_balanced(cell_crop(image, centre, side, fill), fill))

    def _vouched(self, state: str, score: float | None) -> str:
        """``ok`` stays ``ok`` only when the microscope check vouches for the call."""
        if state != OK or self.domain is None or self.domain.vouches(score):
            return state
        return UNFAMILIAR

    def _untracked(self, cell: Detection, p: np.ndarray, score: float | None) -> dict[str, Any]:
        k = int(np.argmax(p))
        conf = float(p[k])
        state = PARTIAL if cell.partial else self._vouched(
            OK if conf >= self.tracker_settings.min_confidence else UNCERTAIN, score)
        return {"box": list(cell.box), "class": self.classes[k], "confidence": round(conf, 4),
                "state": state,
                "probs": dict(zip(self.classes, np.round(p, 4).tolist(), strict=True))}
