"""``images:DIR_OR_GLOB``: every image of a folder or glob once (batch mode)."""

from __future__ import annotations

import glob
import logging
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

    def __init__(self, spec: str) -> None:
        super().__init__()
        self.spec = spec
        self.name = f"images:{spec}"
        self.files: list[Path] = []
        self.skipped = 0
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
                return self._frame(read_image(path), name=str(path))
            except ImageError as exc:
                self.skipped += 1
                log.warning("skipped: %s", exc)
        return None
