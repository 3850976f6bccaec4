"""A differential-count session: its log events, counted-cell crops, and resuming it from the log.

Events (docs/cells.md, agreed in CELLS_SCHEMA.md): ``session_start`` when a count starts,
one ``cell`` per counted cell, ``session_end`` when the next one starts or the run ends. The
frame records themselves are written by the pipeline's log listener. Because every counted
cell is one line in the log, a restart continues the last session where it stopped
(:meth:`CountSession.resume`), with reviews from the page applied (the last one per track).
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lgld.runtime.cells.stage import CellFrame, CellInput, CellStage
from lgld.runtime.cells.track import UNCLASSIFIED, CountedCell
from lgld.runtime.core.domain import DomainCheck
from lgld.runtime.core.jsonlog import read_records

log = logging.getLogger("lgld.runtime")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def new_session_id() -> str:
    """YYYYmmdd-HHMMSS-xxxx: the start time plus 4 random hex digits."""
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


@dataclass
class _LoggedSession:
    """The last count session of a log: its cells and the last review of each track."""

    id: str
    sample: str = ""
    cells: list[dict[str, Any]] = field(default_factory=list)
    reviews: dict[Any, dict[str, Any]] = field(default_factory=dict)
    ended: bool = False

    @property
    def top_track(self) -> int:
        return max((c["track"] for c in self.cells if isinstance(c.get("track"), int)), default=0)

    def reviewed_labels(self) -> list[str]:
        """Each counted cell's label after review (rejected cells left out)."""
        labels = []
        for cell in self.cells:
            label = str(cell.get("class") or UNCLASSIFIED)
            review = self.reviews.get(cell.get("track"))
            if review is not None and review.get("action") == "reject":
                continue
            if review is not None and review.get("action") == "reclassify":
                label = str(review.get("class") or label)
            labels.append(label)
        return labels


def _last_session(log_path: str | os.PathLike) -> _LoggedSession | None:
    """The log's last count session (None when it has none)."""
    last: _LoggedSession | None = None
    ended: set[str] = set()
    for r in read_records(log_path):
        event = r.get("event")
        if event == "session_start" and isinstance(r.get("session"), str):
            last = _LoggedSession(r["session"], str(r.get("sample") or ""))
        elif event == "session_end":
            ended.add(str(r.get("session")))
        elif last is not None and r.get("session") == last.id:
            if event == "cell":
                last.cells.append(r)
            elif event == "review":
                last.reviews[r.get("track")] = r
    if last is not None:
        last.ended = last.id in ended
    return last


class CountSession:
    """The running count session of a cell-mode run (thread-safe)."""

    def __init__(
        self,
        stage: CellStage,
        write: Callable[[dict[str, Any]], None] | None = None,
        model: dict[str, Any] | None = None,
        sample: str = "",
        crops_dir: str | os.PathLike | None = None,
        log_path: str | os.PathLike | None = None,
        calibration: dict[str, Any] | None = None,
        crop_budget: Callable[..., None] | None = None,
        domain: DomainCheck | None = None,
    ) -> None:
        self.stage = stage
        self.domain = domain  # the microscope check of each session (core.domain)
        self.write = write
        self.model = model or {}
        self.sample = sample
        self.crops_dir = Path(crops_dir).expanduser() if crops_dir else None
        self.log_dir = Path(log_path).expanduser().resolve().parent if log_path else None
        self.calibration = calibration
        self.crop_budget = crop_budget  # told about every saved file (CropBudget.added)
        self.id: str | None = None
        self.started = 0.0
        self._lock = threading.RLock()

    # -- sessions ------------------------------------------------------------------------------

    def start(self, sample: str | None = None) -> str:
        """End the current session (if any) and start a new, empty count."""
        with self._lock:
            self.end()
            if sample is not None:
                self.sample = sample
            self.stage.reset()
            if self.domain is not None:
                self.domain.reset()
            self.id = new_session_id()
            self.started = time.time()
            self._emit({"event": "session_start", "session": self.id, "time": now_iso(),
                        "sample": self.sample, "model": self.model,
                        "calibration": self.calibration, "target": self.stage.count.target})
            return self.id

    def end(self) -> None:
        """Write session_end for the current session (idempotent)."""
        with self._lock:
            if self.id is not None:
                end = {"event": "session_end", "session": self.id, "time": now_iso(),
                       "counted": self.stage.count.total}
                if self.domain is not None:
                    end["domain"] = self.domain.state()
                self._emit(end)
                self.id = None

    def resume(self, log_path: str | os.PathLike) -> bool:
        """Continue the last session of the log when it did not end; True when resumed."""
        last = _last_session(log_path)
        if last is None or last.ended:
            return False
        with self._lock:
            self.stage.reset()
            self.stage.count.add_all(last.reviewed_labels())
            if self.stage.tracker is not None:
                self.stage.tracker.reset(next_id=last.top_track + 1)
            self.id, self.sample, self.started = last.id, last.sample, time.time()
        log.info("resumed count session %s: %d cells counted", last.id, self.stage.count.total)
        return True

    def recount(self, log_path: str | os.PathLike) -> None:
        """Re-derive the running count of the current session from the log with its reviews
        applied, so the live count panel shows the reviewed counts right after a correction.
        The log is read under the lock that also guards counting, so no counted cell is missed."""
        with self._lock:
            last = _last_session(log_path)
            if last is None or last.id != self.id:
                return
            self.stage.count.reset()
            self.stage.count.add_all(last.reviewed_labels())

    # -- frames --------------------------------------------------------------------------------

    def process(self, prepared: CellInput, image: np.ndarray, now: float,
                frame_index: int) -> CellFrame:
        """Classify, track and count one prepared frame; log each counted cell."""
        with self._lock:
            if self.id is None:
                self.start()
            result = self.stage.classify(prepared, image, now)
            for counted, crop in zip(result.counted, result.crops, strict=True):
                crop_path, context_path = self._save_crop(counted, crop, frame_index, image)
                self._emit({
                    "event": "cell", "session": self.id, "time": now_iso(),
                    "track": counted.track if counted.track >= 0 else None,
                    "class": counted.label, "confidence": round(counted.confidence, 4),
                    "probs": counted.probs, "frames_seen": counted.frames_seen,
                    "box": list(counted.box), "frame": frame_index, "crop": crop_path,
                    "context": context_path,
                })
            if self.domain is not None and self.domain.add(result.logits):
                state = self.domain.state()
                log.info("count session %s: %s", self.id, state["message"])
                self._emit({"event": "domain", "session": self.id, "time": now_iso(), **state})
            for warning in result.warnings:
                log.warning("frame %d: %s", frame_index, warning)
            return result

    def count(self) -> dict[str, Any]:
        """/api/count: the counts plus the session they belong to."""
        state = self.stage.count.to_dict()
        state.update(session=self.id, sample=self.sample,
                     domain=None if self.domain is None else self.domain.state())
        return state

    # -- helpers -------------------------------------------------------------------------------

    def _emit(self, event: dict[str, Any]) -> None:
        if self.write is not None:
            self.write(event)

    def _save_crop(self, counted: CountedCell, crop: np.ndarray, frame: int,
                   image: np.ndarray) -> tuple[str | None, str | None]:
        """Save the cell's crop (full resolution) and a context thumbnail of the whole frame
        with the cell boxed; their paths as logged (relative to the log's folder)."""
        if self.crops_dir is None:
            return None, None
        folder = self.crops_dir / f"cells-{self.id}"
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
        if self.crop_budget is not None and saved:
            self.crop_budget(*saved)
        paths = [self._logged_path(p) for p in saved] + [None, None]
        return paths[0], paths[1]

    def _logged_path(self, path: Path) -> str:
        path = path.resolve()
        if self.log_dir is not None:
            return os.path.relpath(path, self.log_dir)
        return str(path)


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
