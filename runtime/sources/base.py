"""What every frame source is: :class:`Frame`, the :class:`Source` interface and its errors.

``read()`` returns the next :class:`Frame` (BGR uint8), ``None`` at the end of a finite source,
raises :class:`CameraLost` when a live source stops delivering (the pipeline closes, waits and
reopens it) and :class:`SourceError` for anything that retrying will not fix.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

NO_CAMERA = "no camera found (use --source demo to try without one)"


class SourceError(RuntimeError):
    """A source cannot be opened or used (one-line reason)."""


class CameraNotFound(SourceError):
    """No such camera is connected."""


class CameraBusy(SourceError):
    """The camera exists but another program holds it."""


class CameraLost(SourceError):
    """A live source stopped delivering frames; closing and reopening it may help."""


@dataclass
class Frame:
    """One captured frame: the display image, plus a low-resolution copy if the camera has one."""

    image: np.ndarray  # BGR uint8 HxWx3, display resolution
    index: int  # 0, 1, 2, ... in capture order
    time: float  # wall clock (seconds since the epoch)
    mono: float  # time.monotonic() at capture
    lores: np.ndarray | None = None  # BGR uint8, same field of view, smaller
    name: str | None = None  # file name for image sources


class Source:
    """Base class: open(), read() -> Frame | None, close(); usable as a context manager."""

    name = "source"
    #: Every frame must be classified exactly once (no dropping), e.g. a folder of images.
    batch = False
    #: A camera or stream: CameraLost is retried with backoff.
    live = True

    def __init__(self) -> None:
        self._index = 0

    def _frame(
        self, image: np.ndarray, lores: np.ndarray | None = None, name: str | None = None
    ) -> Frame:
        frame = Frame(image, self._index, time.time(), time.monotonic(), lores, name)
        self._index += 1
        return frame

    def open(self) -> None:  # pragma: no cover - trivial
        pass

    def read(self) -> Frame | None:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - trivial
        pass

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
