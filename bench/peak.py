"""The machine's measured fp32 multiply-add peak: a large single-precision matmul (SGEMM).

An ``n x n`` float32 matmul performs ``n**3`` multiply-adds, so ``GMAC/s = n**3 / t / 1e9``.
The thread count is controlled the simple, checkable way: the matmul runs in a fresh Python
subprocess whose ``OPENBLAS_NUM_THREADS`` / ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` (and the
other common BLAS variables) are set *before* numpy is imported, so the BLAS thread pool is
created with exactly that many threads. The subprocess reports which BLAS numpy uses.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass

THREAD_VARS = (
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)

_CHILD = r"""
import json, sys, time
import numpy as np
n, warmup, repeats = (int(v) for v in sys.argv[1:4])
rng = np.random.default_rng(0)
a = rng.standard_normal((n, n), dtype=np.float32)
b = rng.standard_normal((n, n), dtype=np.float32)
c = np.empty((n, n), dtype=np.float32)
for _ in range(warmup):
    np.matmul(a, b, out=c)
times = []
for _ in range(repeats):
    t0 = time.perf_counter()
    np.matmul(a, b, out=c)
    times.append(time.perf_counter() - t0)
blas = "unknown"
try:
    cfg = np.show_config(mode="dicts")
    dep = cfg["Build Dependencies"]["blas"]
    blas = f"{dep.get('name', '?')} {dep.get('version', '')}".strip()
except Exception:
    pass
print(json.dumps({"times": times, "numpy": np.__version__, "blas": blas}))
"""


class PeakError(RuntimeError):
    """The SGEMM subprocess failed (one-line reason)."""


@dataclass(frozen=True)
class Peak:
    """Measured SGEMM throughput with a fixed BLAS thread count."""

    n: int
    threads: int
    times_s: list[float]
    numpy: str
    blas: str
    method: str

    @property
    def median_gmacs(self) -> float:
        """GMAC/s at the median time (the number the model rows are compared with)."""
        return self.n**3 / statistics.median(self.times_s) / 1e9

    @property
    def best_gmacs(self) -> float:
        """GMAC/s at the fastest repeat."""
        return self.n**3 / min(self.times_s) / 1e9

    def to_dict(self) -> dict:
        d = asdict(self)
        d["median_gmacs"] = round(self.median_gmacs, 3)
        d["best_gmacs"] = round(self.best_gmacs, 3)
        d["median_ms"] = round(statistics.median(self.times_s) * 1e3, 3)
        return d


def measure_peak(
    threads: int, n: int = 2048, warmup: int = 1, repeats: int = 5, timeout: float = 300.0
) -> Peak:
    """Time ``repeats`` n x n float32 matmuls in a subprocess with ``threads`` BLAS threads."""
    env = dict(os.environ)
    env.update({var: str(threads) for var in THREAD_VARS})
    cmd = [sys.executable, "-c", _CHILD, str(n), str(warmup), str(repeats)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise PeakError(f"SGEMM {n}x{n} did not finish within {timeout:.0f} s") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise PeakError(f"SGEMM subprocess failed: {last[:200]}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return Peak(
        n=n,
        threads=threads,
        times_s=[float(t) for t in data["times"]],
        numpy=data["numpy"],
        blas=data["blas"],
        method=f"numpy float32 {n}x{n} matmul in a subprocess with "
        f"{'/'.join(THREAD_VARS[:3])}={threads} set before numpy is imported",
    )
