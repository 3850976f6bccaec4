"""Read a cell-mode JSONL log (and its rotated siblings) back into count sessions.

The log is the only record of a count (docs/report.md): ``session_start``, one ``cell`` event
per counted track, ``review`` corrections from the page and ``session_end``. Reading applies the
reviews (the last review of a track wins; ``reject`` marks an artefact, which leaves the reviewed
counts) and keeps the model's own counts beside the reviewed ones. Torn lines (a crash mid-write,
a truncated copy) and lines that are not lgld records are skipped and counted, never fatal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from lgld.runtime.core.files import log_files
from lgld.runtime.core.jsonlog import iter_lines, parse_line

UNCLASSIFIED = "unclassified"
REVIEW_ACTIONS = ("confirm", "reclassify", "reject")
SESSION_EVENTS = ("session_start", "cell", "review", "session_end", "frame", "domain")


class SessionLogError(ValueError):
    """The log cannot be read, or the asked-for session is not in it (one-line reason)."""


def parse_time(text: Any) -> datetime | None:
    """An ISO 8601 time from the log, or None when absent or malformed."""
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _track_key(value: Any) -> int | str | None:
    return value if isinstance(value, int | str) and not isinstance(value, bool) else None


@dataclass
class ModelInfo:
    """The model a session counted with, as the session_start event recorded it."""

    name: str = ""
    path: str = ""
    sha256: str = ""
    precision: str = ""
    classes: list[str] = field(default_factory=list)

    @classmethod
    def from_record(cls, raw: Any) -> ModelInfo:
        if not isinstance(raw, dict):
            return cls()
        classes = raw.get("classes")
        return cls(
            name=str(raw.get("name") or ""),
            path=str(raw.get("path") or ""),
            sha256=str(raw.get("sha256") or ""),
            precision=str(raw.get("precision") or ""),
            classes=[str(c) for c in classes] if isinstance(classes, list) else [],
        )


@dataclass
class Cell:
    """One counted track, with the last review applied to it (if any)."""

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
    model: ModelInfo = field(default_factory=ModelInfo)
    calibration: dict[str, Any] | None = None
    target: int | None = None
    cells: list[Cell] = field(default_factory=list)
    frames: int = 0
    reviews: int = 0  # review events applied
    orphan_reviews: int = 0  # review events for a track this session never counted
    counted_at_end: int | None = None  # "counted" from session_end, as the live count saw it
    last_event: datetime | None = None
    _by_track: dict[int | str, int] = field(default_factory=dict, repr=False)

    # --- counts -------------------------------------------------------------------------
    def classes(self) -> list[str]:
        """Class order for tables: the model's classes, any others seen, unclassified last."""
        order = list(self.model.classes)
        seen = set(order)
        extra: list[str] = []
        for cell in self.cells:
            for name in (cell.model_class, cell.reviewed_class):
                if name and name not in seen:
                    seen.add(name)
                    extra.append(name)
        unclassified = [UNCLASSIFIED] if UNCLASSIFIED in extra else []
        return order + sorted(c for c in extra if c != UNCLASSIFIED) + unclassified

    def model_counts(self) -> dict[str, int]:
        """Cells per class as the model counted them (every cell event)."""
        counts = dict.fromkeys(self.classes(), 0)
        for cell in self.cells:
            counts[cell.model_class] += 1
        return counts

    def reviewed_counts(self) -> dict[str, int]:
        """Cells per class after review (rejected cells left out)."""
        counts = dict.fromkeys(self.classes(), 0)
        for cell in self.cells:
            name = cell.reviewed_class
            if name is not None:
                counts[name] += 1
        return counts

    @property
    def rejected(self) -> int:
        return sum(cell.rejected for cell in self.cells)

    @property
    def reviewed_cells(self) -> int:
        return sum(cell.review is not None for cell in self.cells)

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

    def _apply_review(self, track: int | str, action: str, name: str | None) -> None:
        index = self._by_track.get(track)
        if index is None:
            self.orphan_reviews += 1
            return
        cell = self.cells[index]
        cell.review = action
        cell.review_class = name if action == "reclassify" else None
        self.reviews += 1


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

    def ids(self) -> list[str]:
        return [s.id for s in self.sessions]

    def get(self, session_id: str | None = None) -> Session:
        """The session with this id (the latest when None); SessionLogError when absent."""
        if not self.sessions:
            raise SessionLogError(
                f"no count sessions in {self.path} ({self.lines} lines read, "
                f"{self.skipped} skipped): is it a --mode cells log?"
            )
        if session_id is None:
            return self.sessions[-1]
        for session in self.sessions:
            if session.id == session_id:
                return session
        raise SessionLogError(
            f"session {session_id!r} is not in {self.path}; sessions: {', '.join(self.ids())}"
        )


class SessionReader:
    """Folds log lines into sessions, one line at a time (``feed``), so a follower can keep
    reading a live log where it stopped."""

    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}
        self.skipped = 0
        self.other = 0
        self.lines = 0

    def result(self, path: Path, files: list[Path]) -> SessionLog:
        return SessionLog(path=path, files=files, sessions=list(self.sessions.values()),
                          lines=self.lines, skipped=self.skipped, other_records=self.other)

    def session(self, sid: str) -> Session:
        found = self.sessions.get(sid)
        if found is None:  # events whose session_start was rotated away still count
            found = self.sessions[sid] = Session(id=sid)
        return found

    def feed(self, line: bytes) -> None:
        self.lines += 1
        if not line.strip():
            self.lines -= 1
            return
        record, whole = parse_line(line)
        if not whole:  # a torn line or bad UTF-8; the event appended after it still counts
            self.skipped += 1
            if record is None:
                return
        if not isinstance(record, dict):
            self.skipped += 1
            return
        event = record.get("event")
        if event not in SESSION_EVENTS:
            self.other += 1
            return
        sid = record.get("session")
        if not isinstance(sid, str) or not sid:
            if event == "frame":  # a frame of another mode, or outside any session
                self.other += 1
            else:
                self.skipped += 1
            return
        if not getattr(self, f"_on_{event}")(sid, record):
            self.skipped += 1

    def _on_domain(self, sid: str, record: dict[str, Any]) -> bool:
        """The session's microscope check (read back by review.validation)."""
        self.session(sid)._seen(parse_time(record.get("time")))
        return True

    def _on_frame(self, sid: str, record: dict[str, Any]) -> bool:
        session = self.session(sid)
        session.frames += 1
        session._seen(parse_time(record.get("time")))
        return True

    def _on_session_start(self, sid: str, record: dict[str, Any]) -> bool:
        session = self.session(sid)
        when = parse_time(record.get("time"))
        if session.start is None or (when is not None and _later(session.start, when)):
            session.start = when
        sample = record.get("sample")
        if isinstance(sample, str) and sample:
            session.sample = sample
        model = ModelInfo.from_record(record.get("model"))
        if model.name or model.sha256 or model.classes:
            session.model = model
        calibration = record.get("calibration")
        if isinstance(calibration, dict):
            session.calibration = calibration
        target = record.get("target")
        if isinstance(target, int) and not isinstance(target, bool) and target > 0:
            session.target = target
        session._seen(when)
        return True

    def _on_cell(self, sid: str, record: dict[str, Any]) -> bool:
        name = record.get("class")
        if not isinstance(name, str) or not name:
            return False
        probs = record.get("probs")
        box = record.get("box")
        crop = record.get("crop")
        frames_seen = record.get("frames_seen")
        frame = record.get("frame")
        when = parse_time(record.get("time"))
        cell = Cell(
            track=_track_key(record.get("track")),
            time=when,
            model_class=name,
            confidence=_number(record.get("confidence")),
            probs=(
                {str(k): float(v) for k, v in probs.items() if _number(v) is not None}
                if isinstance(probs, dict)
                else {}
            ),
            frames_seen=frames_seen if isinstance(frames_seen, int) else None,
            box=box if isinstance(box, list) and len(box) == 4 else None,
            frame=frame if isinstance(frame, int) else None,
            crop=crop if isinstance(crop, str) and crop else None,
        )
        session = self.session(sid)
        session._add_cell(cell)
        session._seen(when)
        return True

    def _on_review(self, sid: str, record: dict[str, Any]) -> bool:
        track = _track_key(record.get("track"))
        action = record.get("action")
        name = record.get("class")
        if track is None or action not in REVIEW_ACTIONS:
            return False
        if action == "reclassify" and (not isinstance(name, str) or not name):
            return False
        session = self.session(sid)
        session._apply_review(track, action, name if isinstance(name, str) else None)
        session._seen(parse_time(record.get("time")))
        return True

    def _on_session_end(self, sid: str, record: dict[str, Any]) -> bool:
        session = self.session(sid)
        when = parse_time(record.get("time"))
        session.end = when or session.end
        session.ended = True
        counted = record.get("counted")
        if isinstance(counted, int) and not isinstance(counted, bool):
            session.counted_at_end = counted
        session._seen(when)
        return True


def read_log(path: str | Path) -> SessionLog:
    """Read a log and its rotated siblings into sessions; SessionLogError when unreadable."""
    path = Path(path).expanduser()
    if not path.exists():
        raise SessionLogError(f"log not found: {path}")
    if not path.is_file():
        raise SessionLogError(f"log is not a file: {path}")
    files = log_files(path)
    reader = SessionReader()
    try:
        for line in iter_lines(files):
            reader.feed(line)
    except OSError as exc:
        raise SessionLogError(f"cannot read log {path}: {exc.strerror or exc}") from None
    return reader.result(path, files)
