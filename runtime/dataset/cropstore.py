"""The disk budget of the crop folder: a Pi's SD card must not fill up with cell crops.

Every counted cell leaves files in the crop folder (its crop at the model's framing and a
context thumbnail of the whole frame, named ``<stem>.<kind>.<ext>`` or ``<stem>.<ext>``); the
files of one cell share the part of the name before the first dot and go together. When the
folder grows past its budget, whole cells are deleted, oldest first: first cells nobody
reviewed, reviewed cells (the ones a lab data set is built from) only after all of those.
The folder is scanned once; afterwards the budget only adds the sizes of new files, so a save
costs nothing until the budget is exceeded.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from lgld.runtime.core.files import IMAGE_SUFFIXES
from lgld.runtime.review.sessionlog import read_log

#: After pruning, the folder holds at most this share of the budget (so a burst of new
#: cells does not rescan the folder for every file).
LOW_WATER = 0.9


@dataclass
class _CellFiles:
    paths: list[Path]
    size: int
    mtime: float


def _cell_key(path: Path) -> tuple[Path, str]:
    return path.parent, path.name.split(".", 1)[0]


def scan(folder: Path) -> dict[tuple[Path, str], _CellFiles]:
    """Every cell's files under ``folder`` (images and their .json sidecars), by cell key."""
    cells: dict[tuple[Path, str], _CellFiles] = {}
    for dirpath, _dirs, names in os.walk(folder):
        for name in names:
            path = Path(dirpath) / name
            if name.startswith(".") or path.suffix.lower() not in {*IMAGE_SUFFIXES, ".json"}:
                continue
            try:
                st = path.stat()
            except OSError:  # deleted meanwhile
                continue
            entry = cells.setdefault(_cell_key(path), _CellFiles([], 0, st.st_mtime))
            entry.paths.append(path)
            entry.size += st.st_size
            entry.mtime = min(entry.mtime, st.st_mtime)
    return cells


def prune(folder: Path, limit_bytes: int, reviewed: Collection[Path]) -> tuple[list[Path], int]:
    """Delete whole cells until the folder holds <= LOW_WATER * limit_bytes: unreviewed cells
    oldest first, then reviewed ones oldest first. Returns (deleted files, bytes left)."""
    cells = scan(folder)
    total = sum(c.size for c in cells.values())
    if total <= limit_bytes:
        return [], total
    keep = {_cell_key(Path(p).resolve()) for p in reviewed}
    order = sorted(cells.items(), key=lambda kv: (kv[0] in keep, kv[1].mtime, str(kv[0])))
    target = int(limit_bytes * LOW_WATER)
    deleted: list[Path] = []
    for _key, cell in order:
        if total <= target:
            break
        for path in cell.paths:
            try:
                path.unlink()
                deleted.append(path)
            except FileNotFoundError:
                pass
        total -= cell.size
    return deleted, total


class CropBudget:
    """Keeps a crop folder within ``limit_mb``; call :meth:`added` after saving a cell's files.

    ``reviewed`` returns the crop files reviewed so far (e.g. from the log through
    :func:`reviewed_crops`); it is asked only when the folder must be pruned.
    """

    def __init__(self, folder: str | os.PathLike, limit_mb: float,
                 reviewed: Callable[[], Collection[Path]] = frozenset) -> None:
        if limit_mb <= 0:
            raise ValueError(f"crop_budget_mb must be > 0, got {limit_mb}")
        self.folder = Path(folder).resolve()
        self.limit = int(limit_mb * 1024 * 1024)
        self.reviewed = reviewed
        self.folder.mkdir(parents=True, exist_ok=True)
        self.total = sum(c.size for c in scan(self.folder).values())
        self.deleted = 0  # files deleted so far (for the log / metrics)
        if self.total > self.limit:
            self.prune()

    def added(self, *paths: str | os.PathLike) -> None:
        for p in paths:
            with contextlib.suppress(OSError):  # already gone: nothing to count
                self.total += Path(p).stat().st_size
        if self.total > self.limit:
            self.prune()

    def prune(self) -> list[Path]:
        deleted, self.total = prune(self.folder, self.limit, self.reviewed())
        self.deleted += len(deleted)
        return deleted


def reviewed_crops(log_path: str | os.PathLike) -> set[Path]:
    """The crop files of every reviewed cell in a cell-mode log (and its rotated siblings)."""
    log = read_log(log_path)
    base = log.path.parent
    return {(base / cell.crop).resolve() for s in log.sessions for cell in s.cells
            if cell.review is not None and cell.crop}
