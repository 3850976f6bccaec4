"""The cell-mode stage of the pipeline: detect -> crops -> one batched model call -> track -> count.

It knows nothing about threads, sources, logs or the web page; the pipeline calls
:meth:`CellStage.process` once per frame and publishes what comes back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lgld.runtime.cells.count import DifferentialCount
from lgld.runtime.cells.crops import cell_crop, cell_crops, check_white_cell_model, crop_side
from lgld.runtime.cells.detect import CellDetector, Detection, DetectorSettings
from lgld.runtime.cells.track import CellTracker, CountedCell, TrackerSettings


@dataclass
class CellFrame:
    """One frame's cell-mode result."""

    cells: list[dict[str, Any]]  # the "cells" of the frame record (CELLS_SCHEMA.md)
    counted: list[CountedCell] = field(default_factory=list)  # counted in this frame
    crops: list[np.ndarray] = field(default_factory=list)  # full-resolution crop per counted
    detect_ms: float = 0.0
    classify_ms: float = 0.0
    warnings: list[str] = field(default_factory=list)
    capped: bool = False


class CellStage:
    """Everything cell mode does to a frame; ``tracking=False`` for unrelated images."""

    def __init__(self, classifier: Any, detector: DetectorSettings | None = None,
                 tracker: TrackerSettings | None = None, target: int = 100,
                 tracking: bool = True) -> None:
        check_white_cell_model(classifier.classes)
        self.classifier = classifier
        self.classes = list(classifier.classes)
        self.detector = CellDetector(detector)
        self.tracker_settings = tracker or TrackerSettings()
        self.tracker = CellTracker(self.classes, self.tracker_settings) if tracking else None
        self.count = DifferentialCount(self.classes, target)

    def reset(self) -> None:
        """Start a new count: counts to zero, tracks forgotten (new tracks get new ids)."""
        self.count.reset()
        if self.tracker is not None:
            self.tracker.reset()

    def process(self, image: np.ndarray, now: float | None = None) -> CellFrame:
        now = time.monotonic() if now is None else now
        t0 = time.perf_counter()
        found = self.detector.detect(image)
        t1 = time.perf_counter()
        # live: partial cells are shown but never counted, so not classified (saves time);
        # unrelated images: every cell gets a class, partial ones keep their state
        whole = [i for i, c in enumerate(found.cells) if self.tracker is None or not c.partial]
        probs = np.zeros((len(found.cells), len(self.classes)), np.float32)
        if whole:
            crops = cell_crops(image, [found.cells[i] for i in whole], found.typical_diameter,
                               self.classifier.info.input_size)
            probs[whole] = self.classifier.probabilities(crops)
        t2 = time.perf_counter()
        result = CellFrame([], detect_ms=1000 * (t1 - t0), classify_ms=1000 * (t2 - t1),
                           warnings=found.warnings, capped=found.capped)
        if self.tracker is None:
            result.cells = [self._untracked(c, probs[i]) for i, c in enumerate(found.cells)]
            return result
        update = self.tracker.update(found.cells, probs, image.shape[1], now)
        for shown in update.cells:
            result.cells.append({
                "box": list(shown.box), "class": shown.label,
                "confidence": round(shown.confidence, 4), "state": shown.state,
                "track": shown.track, "probs": shown.probs, "counted": shown.counted,
            })
        side = crop_side(found.typical_diameter)
        for counted in update.counted:
            self.count.add(counted.label)
            result.counted.append(counted)
            result.crops.append(cell_crop(image, found.cells[counted.detection_index].centre,
                                          side).copy())
        return result

    def _untracked(self, cell: Detection, p: np.ndarray) -> dict[str, Any]:
        k = int(np.argmax(p))
        conf = float(p[k])
        state = "partial" if cell.partial else (
            "ok" if conf >= self.tracker_settings.min_confidence else "uncertain")
        return {"box": list(cell.box), "class": self.classes[k], "confidence": round(conf, 4),
                "state": state,
                "probs": dict(zip(self.classes, np.round(p, 4).tolist(), strict=True))}
