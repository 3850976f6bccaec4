"""The disk budget of the counted cells' crops: a Pi's SD card must not fill up with them.

Cell mode saves each counted cell's files in ``<snapshot_dir>/cells-<session>/`` (its crop at
the model's framing and a context thumbnail of the whole frame, ``<stem>.jpg`` and
``<stem>.context.jpg``); the files of one cell share the part of the name before the first dot
and go together. Other files of the snapshot folder (``POST /api/snapshot``) are not counted
and never deleted. When the crops grow past their budget, whole cells are deleted, oldest
first: cells nobody reviewed before any reviewed cell (the ones a lab data set is built from).
The folder is scanned once at start; afterwards only the sizes of new files are added, so a
save costs nothing until the budget is exceeded, and pruning runs on its own thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from lgld.runtime.core.countlog import read_log
from lgld.runtime.core.files import IMAGE_SUFFIXES

log = logging.getLogger("lgld.runtime")

#: The session folders cell mode saves counted cells in (runtime/cells/session.py).
SESSION_DIRS = "cells-*"
#: After pruning, the crops take at most this share of the budget (so a burst of new cells
#: does not rescan the folder for every file).
LOW_WATER = 0.9


@dataclass
class _CellFiles:
    paths: list[Path]
    size: int
    mtime: float


def _cell_key(path: Path) -> tuple[Path, str]:
    return path.parent, path.name.split(".", 1)[0]


def scan(folder: Path) -> dict[tuple[Path, str], _CellFiles]:
    """Every counted cell's files in the session folders under ``folder``, by cell."""
    cells: dict[tuple[Path, str], _CellFiles] = {}
    for session_dir in sorted(folder.glob(SESSION_DIRS)):
        if not session_dir.is_dir():
            continue
        for dirpath, _dirs, names in os.walk(session_dir):
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
    """Delete whole cells until the crops take <= LOW_WATER * limit_bytes: unreviewed cells
    oldest first, then reviewed ones oldest first. Returns (deleted files, bytes left)."""
    cells = scan(folder)
    total = sum(c.size for c in cells.values())
    if total <= limit_bytes:
        return [], total
    keep = {_cell_key(Path(p).resolve()) for p in reviewed}
    resolved = {key: _cell_key(cell.paths[0].resolve()) for key, cell in cells.items()}
    order = sorted(cells.items(),
                   key=lambda kv: (resolved[kv[0]] in keep, kv[1].mtime, str(kv[0])))
    target = int(limit_bytes * LOW_WATER)
    deleted: list[Path] = []
    emptied: set[Path] = set()
    for key, cell in order:
        if total <= target:
            break
        for path in cell.paths:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                deleted.append(path)
        emptied.add(key[0])
        total -= cell.size
    for session_dir in emptied:  # a session whose cells are all gone leaves no empty folder
        with contextlib.suppress(OSError):
            session_dir.rmdir()
    return deleted, total


class CropBudget:
    """Keeps the crops under ``folder`` within ``limit_mb``; cell mode calls :meth:`added`
    with the files it saved for a counted cell.

    ``reviewed`` returns the crop files reviewed so far (e.g. :func:`reviewed_crops` of the
    log); it is asked only when pruning.
    """

    def __init__(self, folder: str | os.PathLike, limit_mb: float,
                 reviewed: Callable[[], Collection[Path]] = frozenset,
                 background: bool = True) -> None:
        if limit_mb <= 0:
            raise ValueError(f"crop_budget_mb must be > 0, got {limit_mb}")
        self.folder = Path(folder).expanduser().resolve()
        self.limit = int(limit_mb * 1024 * 1024)
        self.reviewed = reviewed
        self.background = background
        self.total = sum(c.size for c in scan(self.folder).values())
        self.deleted = 0  # files deleted so far
        self._lock = threading.Lock()
        self._pruning: threading.Thread | None = None
        if self.total > self.limit:
            self.prune()

    def added(self, *paths: str | os.PathLike | None) -> None:
        """Count newly saved files; prune (on a thread) once the budget is exceeded."""
        with self._lock:
            for p in paths:
                if p is not None:
                    with contextlib.suppress(OSError):  # already gone: nothing to count
                        self.total += Path(p).stat().st_size
            if self.total <= self.limit or self._pruning is not None:
                return
            if not self.background:
                self._pruning = threading.current_thread()
        if self.background:
            self._pruning = threading.Thread(target=self.prune, name="lgld-crop-budget",
                                             daemon=True)
            self._pruning.start()
        else:
            self.prune()

    def prune(self) -> list[Path]:
        try:
            reviewed = self.reviewed()
        except (OSError, ValueError) as exc:  # an unreadable log: no cell counts as reviewed
            log.warning("crop budget: cannot read the reviews (%s); pruning oldest first", exc)
            reviewed = frozenset()
        deleted, left = prune(self.folder, self.limit, reviewed)
        with self._lock:
            self.total = left
            self.deleted += len(deleted)
            self._pruning = None
        if deleted:
            log.info("crop budget: deleted %d files of the oldest cells (%.1f MB left of %.1f)",
                     len(deleted), left / 2**20, self.limit / 2**20)
        return deleted

    def wait(self) -> None:
        """Wait for a pruning thread (tests, shutdown)."""
        thread = self._pruning
        if thread is not None and thread is not threading.current_thread():
            thread.join()


def reviewed_crops(log_path: str | os.PathLike) -> set[Path]:
    """The crop files of every reviewed cell in a cell-mode log (and its rotated siblings)."""
    session_log = read_log(log_path)
    base = session_log.path.parent
    return {(base / cell.crop).resolve() for s in session_log.sessions for cell in s.cells
            if cell.review is not None and cell.crop}
