"""``demo:cells``: a panned synthetic blood smear for cell mode (see lgld.runtime.cells.slide).

Real PBC white cells (bundled) on drawn red cells; the stage moves right at a steady speed, so
every white cell crosses the field once and the count of unique cells is known.
"""

from __future__ import annotations

import time

from lgld.runtime.cells.slide import SlideScan, asset_files
from lgld.runtime.config import SourceSection
from lgld.runtime.sources.base import Frame, Source, SourceError

#: Stage speed in slide pixels per second (0.15 of a 640-pixel field).
STAGE_SPEED = 96.0


def probe() -> tuple[bool, str]:
    """Are the bundled cells there? (for the doctor)"""
    try:
        return True, f"demo:cells: {len(asset_files())} bundled white cells"
    except FileNotFoundError as exc:
        return False, str(exc)


class DemoCellsSource(Source):
    """Frames of the panned slide at ``fps`` (paced like a camera unless realtime=False)."""

    live = True

    def __init__(self, size: tuple[int, int] = (SourceSection.width, SourceSection.height),
                 fps: float = SourceSection.fps, realtime: bool = True, seed: int = 0,
                 speed: float = STAGE_SPEED) -> None:
        super().__init__()
        self.name = "demo:cells"
        self.size = (int(size[0]), int(size[1]))
        self.fps = float(fps)
        self.realtime = realtime
        self.seed = seed
        self.speed = speed
        self.scan: SlideScan | None = None
        self._t0 = 0.0

    def open(self) -> None:
        try:
            # a short lead-in: the first white cell enters after a second or two
            self.scan = SlideScan(self.size, self.fps, self.speed, self.seed,
                                  lead_in=min(1.0, 150.0 / self.size[0]))
        except FileNotFoundError as exc:
            raise SourceError(str(exc)) from None
        self._t0 = time.monotonic()
        self._index = 0

    def read(self) -> Frame:
        if self.scan is None:
            self.open()
        assert self.scan is not None
        index = self._index
        if self.realtime:
            delay = self._t0 + index / self.fps - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -1.0:  # the machine cannot keep up: do not try to catch up
                self._t0 = time.monotonic() - index / self.fps
        return self._frame(self.scan.frame(index))
