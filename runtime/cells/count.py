"""The differential count: counted white cells per class, percentages, progress to a target.

A hematology differential classifies a fixed number of white cells (100 or 200) and reports
the share of each type. Cells the model was unsure of are counted as "unclassified" and shown
apart, so that the percentages of the classes still add up to 100% of all counted cells.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import Any

from lgld.runtime.cells.track import UNCLASSIFIED
from lgld.runtime.config import CellsSection


class DifferentialCount:
    """Thread-safe running count (the pipeline adds, the web page reads and resets)."""

    def __init__(self, classes: Sequence[str], target: int = CellsSection.target) -> None:
        if target < 1:
            raise ValueError("cells target must be >= 1")
        self.classes = list(classes)
        self.target = int(target)
        self._lock = threading.Lock()
        self._counts = dict.fromkeys([*self.classes, UNCLASSIFIED], 0)

    def add(self, label: str) -> None:
        """Count one cell as label (a class name or "unclassified")."""
        with self._lock:
            key = label if label in self._counts else UNCLASSIFIED
            self._counts[key] += 1

    def add_all(self, labels: Iterable[str]) -> None:
        for label in labels:
            self.add(label)

    def move(self, old: str | None, new: str | None) -> None:
        """One counted cell changes class (a review): out of ``old``, into ``new``; None is
        no class (a rejected cell)."""
        with self._lock:
            if old is not None:
                self._counts[old if old in self._counts else UNCLASSIFIED] -= 1
            if new is not None:
                self._counts[new if new in self._counts else UNCLASSIFIED] += 1

    def reset(self) -> None:
        with self._lock:
            for k in self._counts:
                self._counts[k] = 0

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    @property
    def complete(self) -> bool:
        return self.total >= self.target

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def to_dict(self) -> dict[str, Any]:
        """What /api/count returns: counts, percentages, total, target, complete."""
        counts = self.counts()
        total = sum(counts.values())
        return {
            "counts": counts,
            "percent": {k: (round(100.0 * v / total, 1) if total else 0.0)
                        for k, v in counts.items()},
            "total": total,
            "target": self.target,
            "complete": total >= self.target,
        }
