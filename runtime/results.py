"""What the pipeline concludes about a frame: :class:`Result`, its JSON record, and the JSONL log.

The record (:meth:`Result.to_record`) is the one schema written to the log and served by the
HTTP API. The log is durable: the file is opened unbuffered, so each line reaches the operating
system in one ``write`` as soon as it is made (a crash of lgld-run loses nothing written);
``fsync`` forces it to the storage medium at most ``fsync_interval_s`` apart and on close (a
power cut loses at most that much). Rotation: when a line would take the file past
``max_bytes`` it is renamed to ``.1`` (older ones shift to ``.2`` ... ``.N``, the oldest is
deleted) and a new file starts.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lgld.runtime.config import LogSection
from lgld.runtime.core.countlog import FRAME
from lgld.runtime.core.strictjson import dumps
from lgld.runtime.core.untrusted import utf8_safe
from lgld.runtime.geometry import Region
from lgld.runtime.trust import Quality


@dataclass
class Result:
    """What the pipeline concluded about one frame."""

    seq: int
    frame: int
    time: float
    source: str
    mode: str
    model: str
    state: str  # one of lgld.runtime.trust.STATES
    label: str | None
    confidence: float | None
    probabilities: dict[str, float]  # smoothed; empty when the frame was not classified
    instant: dict[str, float]  # this frame alone; empty when not classified
    latency_ms: float  # quality check + preprocessing + inference
    e2e_ms: float  # capture -> result
    quality: Quality
    region: Region
    window: int  # frames in the smoothing window
    name: str | None = None
    cells: list[dict[str, Any]] | None = None  # cell mode: every cell of the frame
    session: str | None = None  # cell mode: the count session
    timing: dict[str, float] | None = None  # cell mode: detect_ms, classify_ms

    def top(self, k: int = 3) -> list[tuple[str, float, float]]:
        """[(class, smoothed, instant)] for the k most probable (smoothed) classes."""
        ranked = sorted(self.probabilities.items(), key=lambda kv: -kv[1])[:k]
        return [(c, p, self.instant.get(c, 0.0)) for c, p in ranked]

    def instant_top(self) -> tuple[str | None, float | None]:
        if not self.instant:
            return None, None
        label = max(self.instant, key=self.instant.__getitem__)
        return label, self.instant[label]

    def to_record(self) -> dict[str, Any]:
        """The JSON object written to the log and served by the API."""
        ilabel, iconf = self.instant_top()
        record: dict[str, Any] = {
            "ts": datetime.fromtimestamp(self.time, UTC).isoformat(timespec="milliseconds"),
            "frame": self.frame,
            "source": self.source,
            "mode": self.mode,
            "class": self.label,
            "confidence": None if self.confidence is None else round(self.confidence, 4),
            "probabilities": {k: round(v, 4) for k, v in self.probabilities.items()},
            "state": self.state,
            "latency_ms": round(self.latency_ms, 2),
            "model": self.model,
            "instant": {
                "class": ilabel,
                "confidence": None if iconf is None else round(iconf, 4),
                "probabilities": {k: round(v, 4) for k, v in self.instant.items()},
            },
            "window": self.window,
            "e2e_ms": round(self.e2e_ms, 2),
            "quality": self.quality.to_dict(),
            "region": list(self.region),
        }
        if self.name is not None:
            record["file"] = self.name
        if self.cells is not None:  # cell mode: a "frame" event (docs/log-format.md)
            record.update(event=FRAME, session=self.session, cells=self.cells,
                          **(self.timing or {}))
        return record


# ---------------------------------------------------------------------------------------------
# The JSONL log


class ResultLogError(RuntimeError):
    """The log cannot be opened or written (one-line reason)."""


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def check_writable(path: str | Path) -> Path:
    """Create the log's folder if needed and make sure a file can be appended there."""
    path = Path(path).expanduser()
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ResultLogError(f"log folder {folder} cannot be created: {_reason(exc)}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ResultLogError(f"log folder {folder} is not writable")
    if path.is_dir():
        raise ResultLogError(f"log path {path} is a folder, not a file")
    return path


class ResultLog:
    """Append JSON lines to ``path`` with rotation; thread-safe."""

    def __init__(
        self,
        path: str | Path,
        max_bytes: int = LogSection.max_bytes,
        backups: int = LogSection.backups,
        fsync_interval_s: float = LogSection.fsync_interval_s,
    ) -> None:
        self.path = check_writable(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self.fsync_interval_s = fsync_interval_s
        self.lines = 0
        self._lock = threading.Lock()
        self._last_sync = time.monotonic()
        self._file = self._open()

    def _open(self) -> Any:
        try:
            handle = open(self.path, "ab", buffering=0)  # noqa: SIM115 - kept open for the run
        except OSError as exc:
            raise ResultLogError(f"cannot open log {self.path}: {_reason(exc)}") from None
        try:
            self._size = os.fstat(handle.fileno()).st_size
            if self._size and not self._ends_with_newline():
                # a line cut short (a power cut, another program): end it, so the next record
                # is a line of its own; the fragment stays, readers skip it
                handle.write(b"\n")
                self._size += 1
        except OSError as exc:
            handle.close()
            raise ResultLogError(f"cannot open log {self.path}: {_reason(exc)}") from None
        return handle

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) == b"\n"

    def _rotate(self) -> None:
        self._sync()
        self._file.close()
        try:
            if self.backups > 0:
                for n in range(self.backups - 1, 0, -1):
                    older = self.path.with_name(f"{self.path.name}.{n}")
                    if older.exists():
                        os.replace(older, self.path.with_name(f"{self.path.name}.{n + 1}"))
                os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
            else:
                self.path.unlink(missing_ok=True)
        except OSError as exc:
            raise ResultLogError(f"cannot rotate log {self.path}: {_reason(exc)}") from None
        self._file = self._open()

    def _sync(self) -> None:
        try:
            os.fsync(self._file.fileno())
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: e.g. a character device, nothing to sync
                raise
        self._last_sync = time.monotonic()

    def write(self, record: dict[str, Any]) -> None:
        """Append one record as one line of strict JSON (flushed to the OS before returning).

        A write that fails part-way (ENOSPC: the disk is full) is cut back off the file, so the
        log holds only whole lines and a later run appends cleanly."""
        # a file name with a byte that is not UTF-8 (images:) arrives as a lone surrogate
        line = utf8_safe(dumps(record, ensure_ascii=False, separators=(",", ":")))
        data = (line + "\n").encode()
        with self._lock:
            if self._file is None:
                raise ResultLogError(f"log {self.path} is closed")
            try:
                if self._size and self._size + len(data) > self.max_bytes:
                    self._rotate()
                start = os.fstat(self._file.fileno()).st_size
                try:
                    view = memoryview(data)
                    while view:
                        written = self._file.write(view)
                        view = view[written:]
                except OSError:
                    with contextlib.suppress(OSError):
                        os.ftruncate(self._file.fileno(), start)
                    raise
                self._size = start + len(data)
                self.lines += 1
                if time.monotonic() - self._last_sync >= self.fsync_interval_s:
                    self._sync()
            except OSError as exc:
                raise ResultLogError(f"cannot write log {self.path}: {_reason(exc)}") from None

    def __call__(self, result: Result) -> None:
        """Pipeline listener: log a Result."""
        self.write(result.to_record())

    def close(self) -> None:
        """fsync and close (idempotent)."""
        with self._lock:
            handle, self._file = self._file, None
            if handle is None:
                return
            with contextlib.suppress(OSError):
                os.fsync(handle.fileno())
            handle.close()

    def __enter__(self) -> ResultLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
