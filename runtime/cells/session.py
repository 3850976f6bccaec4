"""A differential-count session: its lifecycle, the events it logs, reviews, and resuming it.

The events are those of docs/log-format.md: ``session_start`` when a count starts, one
``cell`` per counted cell, ``review`` corrections from the page, ``session_end`` when the next
one starts or the run ends (the frame records are written by the pipeline's log listener).
Every record this writes is also folded into an in-memory replay of the current session (the
same :class:`~lgld.runtime.core.countlog.SessionReader` that resume, ``lgld-report`` and
``lgld-dataset`` read the log with), so a review costs O(1) under the counting lock and the
live count, a restart and the report always agree. The log is read once, at start-up.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from lgld.runtime.cells.countcrops import CountedCrops
from lgld.runtime.cells.stage import CellFrame, CellInput, CellStage
from lgld.runtime.core.countlog import (
    FRAME,
    TIME_KEY,
    UNCLASSIFIED,
    Cell,
    ReviewError,
    Session,
    SessionLog,
    SessionReader,
    cell_record,
    check_review,
    domain_record,
    now_iso,
    parse_track,
    replay,
    session_end_record,
    session_start_record,
)
from lgld.runtime.core.domain import DomainCheck
from lgld.runtime.core.files import log_files
from lgld.runtime.core.strictjson import dumps

log = logging.getLogger("lgld.runtime")


def new_session_id() -> str:
    """YYYYmmdd-HHMMSS-xxxxxxxx: the start time plus 8 random hex digits (sessions started
    within one second, e.g. "new count" pressed twice, must not share an id: with 4 digits a
    log's replay could merge two of them)."""
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(4)


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
        if domain is not None:  # the stage reads it to decide which calls are shown as sure
            stage.domain = domain
        self.domain = stage.domain  # the microscope check of each session (core.domain)
        self.write = write
        self.model = model or {}
        self.sample = sample
        self.log_path = Path(log_path).expanduser() if log_path else None
        self.crops = CountedCrops(crops_dir, log_path, crop_budget)
        self.calibration = calibration
        self.id: str | None = None
        self.started = 0.0
        self._replay = SessionReader()  # the current session, from the records written
        self._stage_lock = threading.RLock()  # the stage: classifying, tracking, resetting
        self._lock = threading.RLock()  # the replay and the log writes (taken after the above)

    # -- sessions ------------------------------------------------------------------------------

    def start(self, sample: str | None = None) -> str:
        """End the current session (if any) and start a new, empty count."""
        with self._stage_lock, self._lock:
            self.end()
            if sample is not None:
                self.sample = sample
            self.stage.reset()
            if self.domain is not None:
                self.domain.reset()
            self.id = new_session_id()
            self.started = time.time()
            self._replay.keep_only(None)
            self._emit(session_start_record(self.id, self.sample, self.model, self.calibration,
                                            self.stage.count.target))
            return self.id

    def end(self) -> None:
        """Write session_end for the current session (idempotent)."""
        with self._lock:
            if self.id is not None:
                self._emit(session_end_record(
                    self.id, self.stage.count.total,
                    None if self.domain is None else self.domain.state()))
                self.id = None

    def open(self, log_path: str | os.PathLike | None, resume: bool = True) -> bool:
        """Read the log once at start-up: new tracks get ids above every id it holds (a stale
        page's track never names a new cell), and its last session is continued when
        ``resume`` and it did not end, else a new session starts. True when resumed."""
        if log_path is not None and self._adopt(log_path, resume):
            return True
        self.start()
        return False

    def resume(self, log_path: str | os.PathLike) -> bool:
        """Continue the last session of the log when it did not end; True when resumed."""
        return self._adopt(log_path, True)

    def _adopt(self, log_path: str | os.PathLike, resume: bool) -> bool:
        try:
            logged = replay(log_path)
        except OSError as exc:
            log.warning("cannot read the log %s (%s): the count starts afresh", log_path,
                        exc.strerror or exc)
            return False
        if logged.skipped:
            log.warning("%s: %d unreadable or invalid lines skipped", log_path, logged.skipped)
        last = logged.current()
        with self._stage_lock, self._lock:
            if self.stage.tracker is not None:
                self.stage.tracker.reset()
                self.stage.tracker.continue_after(logged.top_track())
            if not resume or last is None or last.ended:
                return False
            self.stage.count.reset()
            self.stage.count.add_all(last.reviewed_labels())
            self._replay = _holding(logged, last)
            self.id, self.sample, self.started = last.id, last.sample, time.time()
        log.info("resumed count session %s: %d cells counted", last.id, self.stage.count.total)
        return True

    # -- frames and reviews --------------------------------------------------------------------

    def process(self, prepared: CellInput, image: np.ndarray, now: float,
                frame_index: int) -> CellFrame:
        """Classify, track and count one prepared frame; log each counted cell. The model call
        and the crops' disk writes hold only the stage's lock, never the one reviews take."""
        with self._stage_lock:
            if self.id is None:
                self.start()
            sid = self.id
            result = self.stage.classify(prepared, image, now)
            saved = [self.crops.save(sid, counted, crop, frame_index, image)
                     for counted, crop in zip(result.counted, result.crops, strict=True)]
            with self._lock:
                for counted, (crop_path, context_path) in zip(result.counted, saved,
                                                              strict=True):
                    self._emit(cell_record(
                        sid, counted.track if counted.track >= 0 else None, counted.label,
                        counted.confidence, counted.probs, counted.frames_seen, counted.box,
                        frame_index, crop_path, context_path, counted.state))
                if self.domain is not None and self.domain.add(result.logits):
                    state = self.domain.state()
                    log.info("count session %s: %s", sid, state["message"])
                    self._emit(domain_record(sid, state))
                # the pipeline's log listener writes this frame's record; the replay counts it
                self._replay.apply({"event": FRAME, "session": sid, TIME_KEY: now_iso()})
        for warning in result.warnings:
            log.warning("frame %d: %s", frame_index, warning)
        return result

    def review(self, body: Any) -> Cell:
        """Check and log one review from the page (``{"session", "track", "action", "class"}``)
        and move the live count with it: O(1), the log is not read. The reviewed cell;
        ReviewError when refused (409 for another session than the current one: a stale page)."""
        with self._lock:
            session = self._current()
            logged = session.model.classes  # a resumed session's model, as its log says
            record = check_review(session, body, [
                c for c in self.stage.classes if c != UNCLASSIFIED and (not logged or c in logged)])
            before = self._cell(session, record["track"]).reviewed_class
            self._emit(record)
            cell = self._cell(session, record["track"])
            self.stage.count.move(before, cell.reviewed_class)
            return cell

    # -- views ---------------------------------------------------------------------------------

    def count(self) -> dict[str, Any]:
        """/api/count: the counts plus the session they belong to."""
        state = self.stage.count.to_dict()
        state.update(session=self.id, sample=self.sample,
                     domain=None if self.domain is None else self.domain.state())
        return state

    def view(self, files: bool = True) -> SessionLog | None:
        """The current session as the review page shows it: a still copy (no file is read
        under the counting lock), with the log's files listed when ``files``; None before the
        first session."""
        with self._lock:
            if self.id is None:
                return None
            session = self._current().still()
            r = self._replay
            lines, skipped, other = r.lines, r.skipped, r.other
        path = self.log_path or Path("results.jsonl")
        listed = log_files(path) if files and self.log_path else []
        return SessionLog(path, listed, [session], lines, skipped, other, session.id)

    def cell(self, track: Any) -> Cell:
        """A counted cell of the current session, named by its track."""
        track = parse_track(track)
        with self._lock:
            return self._cell(self._current(), track)

    # -- helpers -------------------------------------------------------------------------------

    def _current(self) -> Session:
        if self.id is None:
            raise ReviewError("no count session yet", 409)
        return self._replay.session(self.id)

    @staticmethod
    def _cell(session: Session, track: int) -> Cell:
        cell = session.cell_of(track)
        if cell is None:
            raise ReviewError(f"track {track} is not a counted cell of session {session.id}", 404)
        return cell

    def _emit(self, record: dict[str, Any]) -> None:
        """Write a record and fold it into the replay exactly as the log will hold it."""
        line = dumps(record, ensure_ascii=False, separators=(",", ":"))
        if self.write is not None:
            self.write(record)
        self._replay.apply(json.loads(line))


def _holding(logged: SessionLog, session: Session) -> SessionReader:
    """A replay that continues from the log's state, holding only ``session``'s cells."""
    reader = SessionReader()
    reader.sessions = {session.id: session}
    reader.latest = session.id
    reader.lines, reader.skipped, reader.other = logged.lines, logged.skipped, logged.other_records
    return reader
