"""The count log's contract (docs/log-format.md): event names, record builders, and the one
replay of a cell-mode log.

Resume, the live count, the review page, ``lgld-report`` and ``lgld-dataset`` all derive their
counts from :class:`SessionReader`, so they cannot disagree: ``session_start``, one ``cell`` per
counted track, ``review`` corrections (the last valid review of a track wins; ``reject`` takes
the cell out of the reviewed counts) and ``session_end``. A line that is torn, not JSON, nested
too deep, or a record with a missing or out-of-range field is counted as skipped, never fatal.
New records carry their time as ``ts``; format-1 logs (``time``) read the same.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lgld.runtime.core.files import log_files
from lgld.runtime.core.jsonlog import iter_lines, parse_line

#: Log format written by this version (``format`` of ``session_start``); 1 had no such field.
FORMAT = 2
#: The time key of new records; format-1 cell-mode events used ``time`` (still read).
TIME_KEY = "ts"
SESSION_START, CELL, REVIEW, SESSION_END, FRAME, SKIP, DOMAIN = (
    "session_start", "cell", "review", "session_end", "frame", "skip", "domain")
SESSION_EVENTS = (SESSION_START, CELL, REVIEW, SESSION_END, FRAME, DOMAIN)
REVIEW_ACTIONS = ("confirm", "reclassify", "reject")
UNCLASSIFIED = "unclassified"
#: A counted cell's ``state``: shown as sure, below the confidence gate (counted unclassified),
#: or confident but not vouched for on this microscope (counted as its class, not sure).
CELL_STATES = ("ok", "uncertain", "unfamiliar")
MAX_INT = 2**53  # the largest integer every JSON reader holds exactly
MAX_TEXT = 1000  # characters of a sample label, model name or path read back
MAX_ID = 128  # characters of a session id
MAX_DEPTH = 16  # nesting of a kept free-form value (calibration)


class SessionLogError(ValueError):
    """The log cannot be read, or the asked-for session is not in it (one-line reason)."""


class ReviewError(ValueError):
    """A review that cannot be applied: a one-line reason and its HTTP status (400 bad request,
    404 no such cell, 409 no count session or another session than the current one)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# --- values -----------------------------------------------------------------------------------

def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def parse_time(text: Any) -> datetime | None:
    """An ISO 8601 time from the log, or None when absent or malformed."""
    if not isinstance(text, str) or len(text) > 64:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def record_time(record: dict[str, Any]) -> datetime | None:
    """A record's time: ``ts`` (format 2, and every frame record), else format 1's ``time``."""
    return parse_time(record.get(TIME_KEY)) or parse_time(record.get("time"))


def _int(value: Any, low: int = 0, high: int = MAX_INT) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if low <= value <= high else None


def _unit(value: Any) -> float | None:
    """A number in [0, 1] (a confidence or probability), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, int) and not 0 <= value <= 1:  # float() of a 400-digit int overflows
        return None
    number = float(value)
    return number if math.isfinite(number) and 0.0 <= number <= 1.0 else None


def _text(value: Any, limit: int = MAX_TEXT) -> str:
    """A bounded string without NUL, else "" (what a text shows is the reader's to make safe)."""
    return value if isinstance(value, str) and len(value) <= limit and "\0" not in value else ""


def _session_id(value: Any) -> str | None:
    text = _text(value, MAX_ID)
    return text if text and text.isprintable() else None


def _depth_ok(value: Any, depth: int = 0) -> bool:
    if depth > MAX_DEPTH:
        return False
    if isinstance(value, dict):
        return all(_depth_ok(v, depth + 1) for v in value.values())
    if isinstance(value, list):
        return all(_depth_ok(v, depth + 1) for v in value)
    return True


def track_key(value: Any) -> int | str | None:
    """A logged track id: a non-negative integer (``true`` is not track 1), or for logs lgld
    did not write a short string kept as it is; None otherwise."""
    if isinstance(value, str):
        return _text(value, 64) or None
    return _int(value)


def parse_track(value: Any) -> int:
    """A track named by a request (a JSON integer, or decimal digits in a query string)."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 16:
        value = int(value)
    track = _int(value)
    if track is None:
        raise ReviewError("track must be a non-negative integer (a counted cell's track)")
    return track


# --- record builders --------------------------------------------------------------------------

def session_start_record(session: str, sample: str, model: dict[str, Any],
                         calibration: dict[str, Any] | None, target: int) -> dict[str, Any]:
    return {"event": SESSION_START, "format": FORMAT, "session": session, TIME_KEY: now_iso(),
            "sample": sample, "model": model, "calibration": calibration, "target": target}


def session_end_record(session: str, counted: int,
                       domain: dict[str, Any] | None = None) -> dict[str, Any]:
    record = {"event": SESSION_END, "session": session, TIME_KEY: now_iso(), "counted": counted}
    if domain is not None:
        record["domain"] = domain  # the microscope check's state (core.domain)
    return record


def domain_record(session: str, state: dict[str, Any]) -> dict[str, Any]:
    """The microscope check's result, once its first cells are scored (core.domain)."""
    return {"event": DOMAIN, "session": session, TIME_KEY: now_iso(), **state}


def cell_record(session: str, track: int | None, label: str, confidence: float,
                probs: dict[str, float], frames_seen: int, box: Any, frame: int,
                crop: str | None, context: str | None, state: str = "ok") -> dict[str, Any]:
    return {"event": CELL, "session": session, TIME_KEY: now_iso(), "track": track,
            "class": label, "confidence": round(confidence, 4), "probs": probs,
            "frames_seen": frames_seen, "box": list(box), "frame": frame, "crop": crop,
            "context": context, "state": state}


def review_record(session: str, track: int, action: str,
                  label: str | None = None) -> dict[str, Any]:
    record = {"event": REVIEW, "session": session, TIME_KEY: now_iso(), "track": track,
              "action": action}
    if action == "reclassify":
        record["class"] = label
    return record


def check_review(session: Session, body: Any, classes: list[str] | None = None) -> dict[str, Any]:
    """A review request (``{"session", "track", "action", "class"}``) checked against the
    session it must name, as the ``review`` record to log; ``classes``: what a cell may be
    reclassified to (default: the session's model's). ReviewError when refused: 409 for
    another session than this one (a stale page), 404 for a track it never counted."""
    if not isinstance(body, dict):
        raise ReviewError("expected a JSON object with session, track and action")
    action = body.get("action")
    if action not in REVIEW_ACTIONS:
        raise ReviewError(f"action must be one of {', '.join(REVIEW_ACTIONS)}")
    track = parse_track(body.get("track"))
    named = body.get("session")
    if not isinstance(named, str) or not named:
        raise ReviewError("session must name the count session the cell belongs to")
    if named != session.id:
        raise ReviewError(f"session {named[:64]!r} is not the current count session "
                          f"({session.id}): reload the page", 409)
    if session.cell_of(track) is None:
        raise ReviewError(f"track {track} is not a counted cell of session {session.id}", 404)
    name = body.get("class") if action == "reclassify" else None
    choices = session.review_classes() if classes is None else classes
    if action == "reclassify" and name not in choices:
        raise ReviewError(f"class must be one of {', '.join(choices)}")
    return review_record(session.id, track, action, name)


# --- the replay -------------------------------------------------------------------------------

@dataclass
class LoggedModel:
    """The model a session counted with, as its session_start recorded it."""

    name: str = ""
    path: str = ""
    sha256: str = ""
    precision: str = ""
    classes: list[str] = field(default_factory=list)

    @classmethod
    def from_record(cls, raw: Any) -> LoggedModel:
        if not isinstance(raw, dict):
            return cls()
        classes = raw.get("classes")
        path = _text(raw.get("path"))
        if path and Path(path).name in ("", ".", ".."):  # no file can be beside "/" or "."
            path = ""
        return cls(
            name=_text(raw.get("name")),
            path=path,
            sha256=_text(raw.get("sha256"), 64),
            precision=_text(raw.get("precision"), 16),
            classes=[c for c in classes if _text(c, 100)][:1000]
            if isinstance(classes, list) else [],
        )


@dataclass
class Cell:
    """One counted track, with the last review applied to it (if any). Never changed once in
    a session: a review replaces it, so a copy of the cell list is a still picture."""

    track: int | str | None
    time: datetime | None
    model_class: str
    confidence: float | None
    probs: dict[str, float]
    frames_seen: int | None
    box: list[int] | None
    frame: int | None
    crop: str | None
    review: str | None = None  # the last review's action: confirm | reclassify | reject
    review_class: str | None = None  # the class a reclassify review gave
    state: str | None = None  # as logged (CELL_STATES); None in logs written before it

    @property
    def sure(self) -> bool:
        """Shown as sure when counted: state ``ok``; a log without states (older lgld) showed
        every cell counted as a class as sure."""
        if self.state is not None:
            return self.state == "ok"
        return self.model_class != UNCLASSIFIED

    @property
    def rejected(self) -> bool:
        return self.review == "reject"

    @property
    def reviewed_class(self) -> str | None:
        """The class after review: None for a rejected cell (an artefact)."""
        if self.review == "reject":
            return None
        if self.review == "reclassify" and self.review_class:
            return self.review_class
        return self.model_class

    @property
    def corrected(self) -> bool:
        """True when the review changed the outcome (reclassified to another class, or rejected)."""
        return self.rejected or self.reviewed_class != self.model_class


@dataclass
class Session:
    """One differential count: its metadata, its counted cells, and the reviews applied to them."""

    id: str
    start: datetime | None = None
    end: datetime | None = None
    ended: bool = False  # True when a session_end event closed it
    sample: str = ""
    model: LoggedModel = field(default_factory=LoggedModel)
    calibration: dict[str, Any] | None = None
    target: int | None = None
    cells: list[Cell] = field(default_factory=list)
    frames: int = 0
    reviews: int = 0  # review events applied
    orphan_reviews: int = 0  # review events for a track this session never counted
    counted_at_end: int | None = None  # "counted" from session_end, as the live count saw it
    last_event: datetime | None = None
    _by_track: dict[int | str, int] = field(default_factory=dict, repr=False)
    # kept as cells are added and reviewed, so counts cost O(classes), not O(cells)
    _model_tally: Counter[str] = field(default_factory=Counter, repr=False)
    _reviewed_tally: Counter[str] = field(default_factory=Counter, repr=False)
    _names: set[str] = field(default_factory=set, repr=False)  # every class named, as logged
    _rejected: int = field(default=0, repr=False)
    _reviewed_cells: int = field(default=0, repr=False)

    # --- counts -------------------------------------------------------------------------
    def classes(self) -> list[str]:
        """Class order for tables: the model's classes, any others seen, unclassified last."""
        order = list(self.model.classes)
        extra = self._names - set(order)
        if self._model_tally[UNCLASSIFIED] or self._reviewed_tally[UNCLASSIFIED]:
            extra.add(UNCLASSIFIED)  # what a class the model lacks counts as
        unclassified = [UNCLASSIFIED] if UNCLASSIFIED in extra else []
        return order + sorted(extra - {UNCLASSIFIED}) + unclassified

    def review_classes(self) -> list[str]:
        """The classes a cell can be reclassified to: the model's (unclassified is not one)."""
        return [c for c in (self.model.classes or self.classes()) if c != UNCLASSIFIED]

    def counted_as(self, name: str) -> str:
        """The class a cell of this name counts as: a class the session's model lacks counts as
        unclassified, as the live count counts it (its name stays on the cell)."""
        known = self.model.classes
        return UNCLASSIFIED if known and name not in known else name

    def model_counts(self) -> dict[str, int]:
        """Cells per class as the model counted them (every cell event)."""
        return {name: self._model_tally[name] for name in self.classes()}

    def reviewed_counts(self) -> dict[str, int]:
        """Cells per class after review (rejected cells left out)."""
        return {name: self._reviewed_tally[name] for name in self.classes()}

    def reviewed_labels(self) -> list[str]:
        """Each counted cell's class after review as it counts, rejected cells left out (the
        live count)."""
        return [self.counted_as(c.reviewed_class) for c in self.cells
                if c.reviewed_class is not None]

    def cell_of(self, track: int | str) -> Cell | None:
        """The counted cell of a track (the last one counted with that id)."""
        index = self._by_track.get(track)
        return None if index is None else self.cells[index]

    @property
    def top_track(self) -> int:
        return max((t for t in self._by_track if isinstance(t, int)), default=0)

    @property
    def rejected(self) -> int:
        return self._rejected

    @property
    def reviewed_cells(self) -> int:
        return self._reviewed_cells

    @property
    def corrections(self) -> int:
        return sum(cell.corrected for cell in self.cells)

    # --- timing -------------------------------------------------------------------------
    @property
    def finish(self) -> datetime | None:
        """The session_end time, or the session's last event when it never got one."""
        return self.end or self.last_event

    def duration_s(self) -> float | None:
        if self.start is None or self.finish is None:
            return None
        try:
            return max(0.0, (self.finish - self.start).total_seconds())
        except TypeError:  # one time with a zone, the other without
            return None

    def cells_per_minute(self) -> float | None:
        duration = self.duration_s()
        if not duration:
            return None
        return len(self.cells) * 60.0 / duration

    def time_to_target_s(self) -> float | None:
        """Seconds from the start to the target-th counted cell (None if not reached)."""
        if not self.target or len(self.cells) < self.target or self.start is None:
            return None
        reached = self.cells[self.target - 1].time
        if reached is None:
            return None
        try:
            return max(0.0, (reached - self.start).total_seconds())
        except TypeError:
            return None

    # --- confidence ---------------------------------------------------------------------
    def sure_calls(self) -> dict[str, int]:
        """Counted cells by how they were shown: sure, not vouched for on this microscope
        (``unfamiliar``), below the confidence gate (``uncertain``)."""
        tally = Counter("ok" if c.sure else c.state or "uncertain" for c in self.cells)
        return {state: tally[state] for state in CELL_STATES}

    def confidence_histogram(self, bins: int = 20) -> list[int]:
        """Counted cells per confidence bin over [0, 1] (``bins`` equal bins)."""
        hist = [0] * bins
        for cell in self.cells:
            if cell.confidence is not None:
                hist[min(bins - 1, max(0, int(cell.confidence * bins)))] += 1
        return hist

    def confidence_by_class(self) -> dict[str, tuple[float, float]]:
        """Per model class: (mean, minimum) confidence of its counted cells."""
        values: dict[str, list[float]] = {}
        for cell in self.cells:
            if cell.confidence is not None:
                values.setdefault(cell.model_class, []).append(cell.confidence)
        return {name: (sum(v) / len(v), min(v)) for name, v in values.items()}

    # --- building -----------------------------------------------------------------------
    def _seen(self, when: datetime | None) -> None:
        if when is not None and (self.last_event is None or _later(when, self.last_event)):
            self.last_event = when

    def _add_cell(self, cell: Cell) -> None:
        if cell.track is not None:
            self._by_track[cell.track] = len(self.cells)
        self.cells.append(cell)
        self._names.add(cell.model_class)
        self._model_tally[self.counted_as(cell.model_class)] += 1
        self._reviewed_tally[self.counted_as(cell.model_class)] += 1

    def _apply_review(self, track: int | str, action: str, name: str | None) -> None:
        index = self._by_track.get(track)
        if index is None:
            self.orphan_reviews += 1
            return
        old = self.cells[index]
        new = self.cells[index] = replace(
            old, review=action, review_class=name if action == "reclassify" else None)
        if old.reviewed_class is not None:
            self._reviewed_tally[self.counted_as(old.reviewed_class)] -= 1
        if new.reviewed_class is not None:
            self._names.add(new.reviewed_class)
            self._reviewed_tally[self.counted_as(new.reviewed_class)] += 1
        self._rejected += new.rejected - old.rejected
        self._reviewed_cells += old.review is None
        self.reviews += 1

    def still(self) -> Session:
        """A copy that later cells and reviews do not change (O(cells) pointer copies)."""
        copy = replace(self, cells=list(self.cells), _by_track=dict(self._by_track),
                       _names=set(self._names), _model_tally=Counter(self._model_tally),
                       _reviewed_tally=Counter(self._reviewed_tally))
        return copy


def _later(a: datetime, b: datetime) -> bool:
    try:
        return a > b
    except TypeError:
        return False


@dataclass
class SessionLog:
    """Every session in a log, in the order they started, plus what was skipped."""

    path: Path
    files: list[Path]
    sessions: list[Session]
    lines: int = 0
    skipped: int = 0  # torn lines, non-objects, session events with missing/invalid fields
    other_records: int = 0  # valid records that belong to no count session (field/roi mode)
    latest: str | None = None  # the session of the last session_start

    def ids(self) -> list[str]:
        return [s.id for s in self.sessions]

    def current(self) -> Session | None:
        """The session the log's writer is on: that of the last session_start (else the last
        one seen); None when there is none."""
        for session in reversed(self.sessions):
            if session.id == self.latest:
                return session
        return self.sessions[-1] if self.sessions else None

    def top_track(self) -> int:
        """The highest track id counted in any session (0 for none)."""
        return max((s.top_track for s in self.sessions), default=0)

    def get(self, session_id: str | None = None) -> Session:
        """The session with this id (the current one when None); SessionLogError when absent."""
        if not self.sessions:
            raise SessionLogError(
                f"no count sessions in {self.path} ({self.lines} lines read, "
                f"{self.skipped} skipped): is it a --mode cells log?"
            )
        if session_id is None:
            current = self.current()
            assert current is not None
            return current
        for session in self.sessions:
            if session.id == session_id:
                return session
        raise SessionLogError(
            f"session {session_id!r} is not in {self.path}; sessions: {', '.join(self.ids())}"
        )


class SessionReader:
    """Folds log lines (``feed``) or records (``apply``) into sessions, one at a time, so the
    live count applies each record it writes exactly as a later reader of the log will."""

    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}
        self.latest: str | None = None
        self.skipped = 0
        self.other = 0
        self.lines = 0

    def result(self, path: Path, files: list[Path]) -> SessionLog:
        return SessionLog(path=path, files=files, sessions=list(self.sessions.values()),
                          lines=self.lines, skipped=self.skipped, other_records=self.other,
                          latest=self.latest)

    def session(self, sid: str) -> Session:
        found = self.sessions.get(sid)
        if found is None:  # events whose session_start was rotated away still count
            found = self.sessions[sid] = Session(id=sid)
        return found

    def keep_only(self, sid: str | None) -> None:
        """Forget every session but ``sid`` (the live count holds one session's cells)."""
        self.sessions = {k: v for k, v in self.sessions.items() if k == sid}

    def feed(self, line: bytes) -> None:
        """One line of the log (a torn or unparsable line is counted as skipped)."""
        if not line.strip():
            return
        self.lines += 1
        record, whole = parse_line(line)
        if not whole:  # a torn line or bad UTF-8; the event appended after it still counts
            self.skipped += 1
            if record is None:
                return
        self._fold(record)

    def apply(self, record: dict[str, Any]) -> None:
        """One record as it is written to the log (the live count's side)."""
        self.lines += 1
        self._fold(record)

    def _fold(self, record: Any) -> None:
        if not isinstance(record, dict):
            self.skipped += 1
            return
        event = record.get("event")
        if event not in SESSION_EVENTS:
            self.other += 1
            return
        sid = _session_id(record.get("session"))
        if sid is None:
            if event == FRAME:  # a frame of another mode, or outside any session
                self.other += 1
            else:
                self.skipped += 1
            return
        if not getattr(self, f"_on_{event}")(sid, record):
            self.skipped += 1

    def _on_domain(self, sid: str, record: dict[str, Any]) -> bool:
        """The session's microscope check (core.domain; read back by review.validation)."""
        self.session(sid)._seen(record_time(record))
        return True

    def _on_frame(self, sid: str, record: dict[str, Any]) -> bool:
        session = self.session(sid)
        session.frames += 1
        session._seen(record_time(record))
        return True

    def _on_session_start(self, sid: str, record: dict[str, Any]) -> bool:
        session = self.session(sid)
        self.latest = sid
        when = record_time(record)
        if session.start is None or (when is not None and _later(session.start, when)):
            session.start = when
        sample = _text(record.get("sample"))
        if sample:
            session.sample = sample
        model = LoggedModel.from_record(record.get("model"))
        if model.name or model.sha256 or model.classes:
            session.model = model
        calibration = record.get("calibration")
        if isinstance(calibration, dict) and _depth_ok(calibration):
            session.calibration = calibration
        target = _int(record.get("target"), 1, 1_000_000)
        if target is not None:
            session.target = target
        session._seen(when)
        return True

    def _on_cell(self, sid: str, record: dict[str, Any]) -> bool:
        name = _text(record.get("class"), 100)
        if not name:
            return False
        session = self.session(sid)
        probs = record.get("probs")
        box = record.get("box")
        when = record_time(record)
        session._add_cell(Cell(
            track=track_key(record.get("track")),
            time=when,
            model_class=name,
            confidence=_unit(record.get("confidence")),
            probs=({str(k): p for k, v in probs.items() if (p := _unit(v)) is not None}
                   if isinstance(probs, dict) else {}),
            frames_seen=_int(record.get("frames_seen")),
            box=box if isinstance(box, list) and len(box) == 4
            and all(_int(v, -2**31, 2**31) is not None for v in box) else None,
            frame=_int(record.get("frame")),
            crop=_text(record.get("crop")) or None,
            state=record.get("state") if record.get("state") in CELL_STATES else None,
        ))
        session._seen(when)
        return True

    def _on_review(self, sid: str, record: dict[str, Any]) -> bool:
        track = track_key(record.get("track"))
        action = record.get("action")
        name = _text(record.get("class"), 100)
        if track is None or action not in REVIEW_ACTIONS:
            return False
        if action == "reclassify" and not name:
            return False
        session = self.session(sid)
        session._apply_review(track, action, name or None)
        session._seen(record_time(record))
        return True

    def _on_session_end(self, sid: str, record: dict[str, Any]) -> bool:
        session = self.session(sid)
        when = record_time(record)
        session.end = when or session.end
        session.ended = True
        counted = _int(record.get("counted"))
        if counted is not None:
            session.counted_at_end = counted
        session._seen(when)
        return True


def replay(path: str | Path) -> SessionLog:
    """Every session of a log and its rotated siblings (none for a missing log); OSError when
    a file cannot be read."""
    path = Path(path).expanduser()
    files = log_files(path)
    reader = SessionReader()
    for line in iter_lines(f for f in files if f.exists()):
        reader.feed(line)
    return reader.result(path, files)


def read_log(path: str | Path) -> SessionLog:
    """Read a log and its rotated siblings into sessions; SessionLogError when unreadable."""
    path = Path(path).expanduser()
    if not path.exists():
        raise SessionLogError(f"log not found: {path}")
    if not path.is_file():
        raise SessionLogError(f"log is not a file: {path}")
    try:
        return replay(path)
    except OSError as exc:
        raise SessionLogError(f"cannot read log {path}: {exc.strerror or exc}") from None
