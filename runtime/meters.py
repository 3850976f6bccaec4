"""Thread-safe measuring instruments: an event rate over a sliding window and a histogram."""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque

#: Latency histogram buckets (seconds), as exported on /metrics.
LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


class RateMeter:
    """Events per second over the last ``window`` seconds (bounded memory)."""

    def __init__(self, window: float = 2.0) -> None:
        self.window = window
        self._times: deque[float] = deque(maxlen=1024)
        self._lock = threading.Lock()

    def tick(self, now: float | None = None) -> None:
        with self._lock:
            self._times.append(time.monotonic() if now is None else now)

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            while self._times and self._times[0] < now - self.window:
                self._times.popleft()
            n = len(self._times)
            if n < 2:
                return 0.0
            span = max(now - self._times[0], self._times[-1] - self._times[0])
            return (n - 1) / span if span > 0 else 0.0


class Histogram:
    """A Prometheus-style cumulative histogram."""

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = tuple(sorted(buckets))
        self.counts = [0] * (len(self.buckets) + 1)  # last = +Inf only
        self.sum = 0.0
        self.count = 0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            self.counts[bisect.bisect_left(self.buckets, value)] += 1
            self.sum += value
            self.count += 1

    def cumulative(self) -> tuple[list[tuple[str, int]], float, int]:
        """[(le, cumulative count), ..., ("+Inf", count)], sum, count."""
        with self._lock:
            out, total = [], 0
            for bound, n in zip(self.buckets, self.counts, strict=False):
                total += n
                out.append((repr(float(bound)), total))
            out.append(("+Inf", self.count))
            return out, self.sum, self.count
