"""Timing and its statistics: interleaved rounds, percentiles, the median's confidence interval,
and fresh processes so no thread pool of earlier work leaks into a measurement."""

from __future__ import annotations

import math
import multiprocessing
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in 0..100."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def median_ci(values: list[float]) -> tuple[float, float]:
    """Distribution-free ~95% confidence interval of the median (order statistics)."""
    s = sorted(values)
    n = len(s)
    half = 0.98 * math.sqrt(n)
    lo, hi = max(0, math.floor(n / 2 - half)), min(n - 1, math.ceil(n / 2 + half) - 1)
    return s[lo], s[max(lo, hi)]


def time_interleaved(
    fns: dict[str, Callable[[], Any]], warmup: int, repeats: int, block: int = 5
) -> dict[str, list[float]]:
    """Warm every function up, then time them in rounds; ms per call, ``repeats`` each.

    Each round gives every function one untimed call and then up to ``block`` timed calls in
    a row. Rounds spread a change in background load over all functions alike; the untimed
    call lets a multi-threaded runtime wake its thread pool, idle while the others ran (see
    docs/performance.md for what it changed).
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {key: [] for key in fns}
    while any(len(v) < repeats for v in samples.values()):
        for key, fn in fns.items():
            n = min(block, repeats - len(samples[key]))
            if n <= 0:
                continue
            fn()
            for _ in range(n):
                t0 = time.perf_counter()
                fn()
                samples[key].append((time.perf_counter() - t0) * 1e3)
    return samples


def in_fresh_process(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a newly spawned process: no thread pool of earlier work leaks in.

    PyTorch's OpenMP/oneDNN pools keep the thread count they first had, so a table after one
    with another thread count would be timed with the wrong pool (docs/performance.md).
    """
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)
