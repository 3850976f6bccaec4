"""The crop files a cell-mode log's reviews point to: the crop budget deletes them last."""

from __future__ import annotations

import os
from pathlib import Path

from lgld.runtime.core.countlog import read_log


def reviewed_crops(log_path: str | os.PathLike) -> set[Path]:
    """The crop files of every reviewed cell in a cell-mode log (and its rotated siblings)."""
    session_log = read_log(log_path)
    base = session_log.path.parent
    return {(base / cell.crop).resolve() for s in session_log.sessions for cell in s.cells
            if cell.review is not None and cell.crop}
