"""The crops of counted cells on disk: each counted cell's crop and a context thumbnail of its
frame, saved under the count session's folder, their paths logged relative to the log's folder,
and every saved file told to the crop disk budget."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lgld.runtime.cells.track import CountedCell

log = logging.getLogger("lgld.runtime")

#: Width of the whole-frame context thumbnail kept with each counted cell's crop.
CONTEXT_WIDTH = 320


def context_thumbnail(image: np.ndarray, box: Any) -> np.ndarray:
    """The whole frame, CONTEXT_WIDTH wide, with the cell's box drawn (for the reviewer)."""
    h, w = image.shape[:2]
    scale = min(1.0, CONTEXT_WIDTH / w)
    thumb = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))),
                       interpolation=cv2.INTER_AREA) if scale < 1 else image.copy()
    x0, y0, x1, y1 = (int(round(v * scale)) for v in box)
    cv2.rectangle(thumb, (x0, y0), (x1, y1), (0, 220, 255), 2)
    return thumb


class CountedCrops:
    """Where the counted cells' crops go (nothing is saved without a folder)."""

    def __init__(self, folder: str | os.PathLike | None, log_path: str | os.PathLike | None,
                 budget: Callable[..., None] | None = None) -> None:
        self.folder = Path(folder).expanduser() if folder else None
        self.log_dir = Path(log_path).expanduser().resolve().parent if log_path else None
        self.budget = budget  # told about every saved file (CropBudget.added)

    def save(self, session: str, counted: CountedCell, crop: np.ndarray, frame: int,
             image: np.ndarray) -> tuple[str | None, str | None]:
        """Save the cell's crop (full resolution) and a context thumbnail of the whole frame
        with the cell boxed; their paths as logged (relative to the log's folder)."""
        if self.folder is None:
            return None, None
        folder = self.folder / f"cells-{session}"
        who = f"t{counted.track}" if counted.track >= 0 else f"c{counted.detection_index}"
        stem = f"f{frame}-{who}-{counted.label}"
        saved: list[Path] = []
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for name, picture, quality in ((f"{stem}.jpg", crop, 90),
                                           (f"{stem}.context.jpg", context_thumbnail(
                                               image, counted.box), 80)):
                ok, data = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, quality])
                if not ok:
                    break
                (folder / name).write_bytes(data.tobytes())
                saved.append(folder / name)
        except OSError as exc:
            log.warning("cannot save the crop of a counted cell in %s: %s", folder, exc.strerror)
        if self.budget is not None and saved:
            self.budget(*saved)
        paths = [self._logged_path(p) for p in saved] + [None, None]
        return paths[0], paths[1]

    def _logged_path(self, path: Path) -> str:
        path = path.resolve()
        if self.log_dir is not None:
            return os.path.relpath(path, self.log_dir)
        return str(path)
