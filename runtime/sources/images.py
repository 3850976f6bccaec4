"""``images:DIR_OR_GLOB``: every image of a folder or glob once (batch mode).

One bad file never stops the batch: an image that cannot be read, or whose header claims more
than ``max_pixels`` pixels (read before anything is decoded), is skipped with a warning and
reported to the ``skip_listeners`` (the result log writes a line for it).
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Callable
from pathlib import Path

from lgld.runtime.core.files import is_image_file, list_images
from lgld.runtime.core.preprocess import ImageError, read_image
from lgld.runtime.sources.base import Frame, Source, SourceError

log = logging.getLogger("lgld.runtime")


def find_images(spec: str) -> list[Path]:
    """A folder (its image files), a glob pattern (``**`` recurses) or one image file, sorted."""
    path = Path(spec).expanduser()
    if path.is_dir():
        files = list_images(path)
    elif path.is_file():
        files = [path]
    else:
        files = [Path(p) for p in glob.glob(str(path), recursive=True)]
        files = [p for p in files if is_image_file(p)]
    return sorted(files)


def probe(spec: str) -> tuple[bool, str]:
    """How many images the spec finds (for the doctor)."""
    n = len(find_images(spec))
    return n > 0, f"{spec}: {n} image(s)"


class ImageFolderSource(Source):
    """Every image of a folder or glob once, in name order; then the end (batch mode)."""

    batch = True
    live = False

    def __init__(self, spec: str, max_pixels: int | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.name = f"images:{spec}"
        self.max_pixels = max_pixels
        self.files: list[Path] = []
        self.skipped = 0
        #: called with (path, reason) for each file skipped
        self.skip_listeners: list[Callable[[Path, str], None]] = []
        self._next = 0

    def open(self) -> None:
        self.files = find_images(self.spec)
        if not self.files:
            raise SourceError(f"no images found at {self.spec}")
        self._next = 0

    def read(self) -> Frame | None:
        while self._next < len(self.files):
            path = self.files[self._next]
            self._next += 1
            try:
                return self._frame(read_image(path, self.max_pixels), name=str(path))
            except (ImageError, OSError, MemoryError) as exc:
                self._skip(path, exc)
        return None

    def _skip(self, path: Path, exc: BaseException) -> None:
        reason = str(exc).strip() or type(exc).__name__
        reason = reason.removesuffix(f": {path}")  # the record names the file already
        if isinstance(exc, MemoryError):
            reason = "not enough memory to decode it"
        self.skipped += 1
        log.warning("skipped %s: %s", path, reason)
        for listener in self.skip_listeners:
            listener(path, reason)
