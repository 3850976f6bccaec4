"""The live page's side of the review: the log followed as it grows, the current session's
gallery as JSON, review requests checked before they become log events.

The web module owns the routes and the log writer; this module only reads the log (never
rewrites it) and turns requests into ``review`` records (CELLS_SCHEMA) for the writer to append.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lgld.runtime.core.files import log_files
from lgld.runtime.review.order import review_order
from lgld.runtime.review.report import CropFiles, percentages, render_html
from lgld.runtime.review.sessionlog import (
    REVIEW_ACTIONS,
    UNCLASSIFIED,
    Session,
    SessionLog,
    SessionReader,
)


class ReviewError(ValueError):
    """A review request that cannot be applied: a one-line reason and its HTTP status (400 bad
    request, 404 no such cell, 409 no count session)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class LogFollower:
    """A JSONL log read incrementally: each ``current()`` reads only the lines appended since
    the last one (complete lines only), and follows a rotation (the file it was reading became
    ``.1``) without reading everything again."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self._lock = threading.Lock()
        self._start_over()

    def _start_over(self) -> None:
        self._reader = SessionReader()
        self._ident: tuple[int, int] | None = None
        self._offset = 0

    def _feed(self, path: Path, offset: int, to_end: bool) -> int:
        """Feed lines from ``offset``; stop before a last incomplete line unless ``to_end``."""
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
        cut = len(data) if to_end else data.rfind(b"\n") + 1
        for line in data[:cut].splitlines():
            self._reader.feed(line)
        return offset + cut

    def _catch_up(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return  # no log yet: no sessions
        ident = (st.st_dev, st.st_ino)
        if self._ident is None:
            for older in log_files(self.path)[:-1]:
                self._feed(older, 0, to_end=True)
        elif ident != self._ident or st.st_size < self._offset:
            rotated = self.path.with_name(f"{self.path.name}.1")
            try:
                old = os.stat(rotated)
                finished = (old.st_dev, old.st_ino) == self._ident
            except FileNotFoundError:
                finished = False
            if not finished:  # rotated more than once since the last look: read it all again
                self._start_over()
                self._catch_up()
                return
            self._feed(rotated, self._offset, to_end=True)
            self._offset = 0
        self._ident = ident
        self._offset = self._feed(self.path, self._offset, to_end=False)

    @contextlib.contextmanager
    def current(self) -> Iterator[SessionLog]:
        """The log as it is now, held still (locked) while the caller uses it."""
        with self._lock:
            try:
                self._catch_up()
            except OSError:
                self._start_over()  # unreadable for a moment (rotation race): next time
            yield self._reader.result(self.path, log_files(self.path))


def gallery(log: SessionLog, session: Session) -> dict[str, Any]:
    """The page's review gallery: counts and every counted cell of the session."""
    crops = CropFiles(log)
    model, reviewed = session.model_counts(), session.reviewed_counts()
    return {
        "session": session.id,
        "sample": session.sample,
        "target": session.target,
        "classes": session.classes(),
        "review_classes": review_classes(session),
        "model_counts": model,
        "reviewed_counts": reviewed,
        "reviewed_percent": {k: round(v, 1) for k, v in percentages(reviewed).items()},
        "cells_total": len(session.cells),
        "reviewed_total": sum(reviewed.values()),
        "rejected": session.rejected,
        "review_first": review_first(session),
        "cells": [
            {
                "track": cell.track,
                "model_class": cell.model_class,
                "class": cell.reviewed_class,  # None: rejected
                "confidence": cell.confidence,
                "review": cell.review,
                "crop": bool(crops.found(cell)),
            }
            for cell in session.cells
        ],
    }


def review_first(session: Session, limit: int = 24) -> list[Any]:
    """Tracks of the unreviewed cells to review first for adapting the model (review.order)."""
    todo = [c for c in session.cells if c.review is None and c.probs]
    classes = session.classes()
    probs = [[float(c.probs.get(k) or 0.0) for k in classes] for c in todo]
    return [todo[i].track for i in review_order(probs)[:limit]]


def review_classes(session: Session) -> list[str]:
    """The classes a cell can be reclassified to: the model's (unclassified is not a choice)."""
    return [c for c in (session.model.classes or session.classes()) if c != UNCLASSIFIED]


def _find_track(session: Session, track: Any) -> Any:
    for cell in session.cells:
        if cell.track == track or (cell.track is not None and str(cell.track) == str(track)):
            return cell.track
    raise ReviewError(f"track {track!r} is not a counted cell of session {session.id}", 404)


def review_record(session: Session, body: Any) -> dict[str, Any]:
    """A review request (``{"track": T, "action": "confirm|reclassify|reject", "class": C}``)
    checked against the session, as the ``review`` event to append to the log."""
    if not isinstance(body, dict):
        raise ReviewError("expected a JSON object with track and action")
    action = body.get("action")
    if action not in REVIEW_ACTIONS:
        raise ReviewError(f"action must be one of {', '.join(REVIEW_ACTIONS)}")
    track = _find_track(session, body.get("track"))
    record: dict[str, Any] = {
        "event": "review",
        "session": session.id,
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "track": track,
        "action": action,
    }
    if action == "reclassify":
        name = body.get("class")
        choices = review_classes(session)
        if name not in choices:
            raise ReviewError(f"class must be one of {', '.join(choices)}")
        record["class"] = name
    return record


def crop_file(log: SessionLog, session: Session, track: Any) -> Path | None:
    """The crop file of a counted cell (None when none was saved or it is gone); looked up by
    track, so a request can never name an arbitrary file."""
    wanted = _find_track(session, track)
    crops = CropFiles(log)
    for cell in session.cells:
        if cell.track == wanted and crops.found(cell):
            return Path(str(crops.path(cell)))
    return None


class ReviewDesk:
    """What the web routes call: the current session's gallery, reviews (appended through the
    app's own log writer, so lines never interleave), crops and report. The current session is
    the latest in the log."""

    def __init__(
        self,
        log_path: str | Path,
        write: Callable[[dict[str, Any]], None],
        on_review: Callable[[], None] | None = None,
    ) -> None:
        self.follower = LogFollower(log_path)
        self.write = write
        self.on_review = on_review  # e.g. the live count re-derives its reviewed counts

    def gallery(self) -> dict[str, Any]:
        with self.follower.current() as log:
            if not log.sessions:
                return {"session": None, "cells": []}
            return gallery(log, log.sessions[-1])

    def review(self, body: Any) -> dict[str, Any]:
        """Check and log one review; the updated gallery (ReviewError when refused)."""
        with self.follower.current() as log:
            if not log.sessions:
                raise ReviewError("no count session yet", 409)
            record = review_record(log.sessions[-1], body)
            self.write(record)
        if self.on_review is not None:
            self.on_review()
        return self.gallery()

    def crop(self, track: Any) -> bytes | None:
        with self.follower.current() as log:
            if not log.sessions:
                raise ReviewError("no count session yet", 409)
            path = crop_file(log, log.sessions[-1], track)
        try:
            return None if path is None else path.read_bytes()
        except OSError:
            return None

    def report_html(self) -> str:
        """The current session's lab report (the same HTML as lgld-report)."""
        with self.follower.current() as log:
            if not log.sessions:
                raise ReviewError("no count session yet", 409)
            return render_html(log, log.sessions[-1])
