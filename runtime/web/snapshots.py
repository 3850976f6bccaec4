"""Saved snapshots with a rate limit and a size cap on their folder.

``POST /api/snapshot`` writes about 1 MB; any client (or a page that slipped past the Origin
check) could fill the disk. Saves closer together than ``min_interval_s`` are refused, and
after each save the oldest snapshot files are removed until the folder is under ``max_bytes``
(the log says what was removed).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from lgld.runtime.core.files import write_atomic

log = logging.getLogger("lgld.runtime")

PATTERN = "lgld-*"  # every file a snapshot writes starts with this


class SnapshotRefused(RuntimeError):
    """Too soon after the previous snapshot; ``retry_after`` seconds to wait."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"one snapshot per interval: try again in {retry_after:.0f} s")
        self.retry_after = retry_after


class SnapshotStore:
    """Writes snapshot files into a folder, rate-limited and size-capped (thread-safe)."""

    def __init__(self, folder: str | Path, min_interval_s: float = 2.0,
                 max_bytes: int = 500_000_000) -> None:
        self.folder = Path(folder).expanduser()
        self.min_interval_s = min_interval_s
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._last = float("-inf")

    def claim(self) -> None:
        """Reserve the next save or raise SnapshotRefused."""
        with self._lock:
            now = time.monotonic()
            wait = self._last + self.min_interval_s - now
            if wait > 0:
                raise SnapshotRefused(wait)
            self._last = now

    def save(self, stem: str, parts: list[tuple[str, bytes]]) -> list[Path]:
        """Write ``stem.suffix`` for each (suffix, data), then prune; raises OSError."""
        self.folder.mkdir(parents=True, exist_ok=True)
        written = []
        for suffix, data in parts:
            path = self.folder / f"{stem}.{suffix}"
            write_atomic(path, data)
            written.append(path)
        self.prune(keep=set(written))
        return written

    def prune(self, keep: set[Path] = frozenset()) -> list[Path]:
        """Remove the oldest snapshot files until the folder is under max_bytes."""
        with self._lock:
            files = []
            for path in self.folder.glob(PATTERN):
                try:
                    st = path.stat()
                except OSError:
                    continue
                if path.is_file():
                    files.append((st.st_mtime, path.name, path, st.st_size))
            total = sum(f[3] for f in files)
            removed: list[Path] = []
            for _, _, path, size in sorted(files):
                if total <= self.max_bytes:
                    break
                if path in keep:
                    continue
                try:
                    path.unlink()
                except OSError:
                    continue
                total -= size
                removed.append(path)
        if removed:
            log.info("snapshots: removed the %d oldest files (%s ... %s) to keep %s under %d MB",
                     len(removed), removed[0].name, removed[-1].name, self.folder,
                     self.max_bytes // 1_000_000)
        return removed
