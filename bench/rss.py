"""``--rss-frames``: the resident memory of the real ``lgld-run`` over N demo frames."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from lgld.bench import BenchError

RSS_LIMIT_MB = 250.0
RSS_FLAT_MB = 5.0  # steady-state growth allowed over the whole run


def read_rss_mb(pid: int) -> float | None:
    """VmRSS of a process in MB (from /proc), or None when it has gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_check(model: Path, frames: int, threads: int, interval: float = 0.5) -> dict[str, Any]:
    """Run ``lgld-run --source demo --frames N`` and sample its resident memory."""
    if not Path("/proc/self/status").is_file():
        raise BenchError("--rss-frames needs /proc (Linux)")
    cmd = [sys.executable, "-m", "lgld.runtime.cli", "--source", "demo", "--frames",
           str(frames), "--model", str(model), "--threads", str(threads), "--preview", "off"]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    samples: list[tuple[float, float]] = []
    while proc.poll() is None:
        rss = read_rss_mb(proc.pid)
        if rss is not None:
            samples.append((time.monotonic() - t0, rss))
        time.sleep(interval)
    err = proc.stderr.read() if proc.stderr else ""
    if proc.returncode != 0:
        last = (err.strip().splitlines() or ["no message"])[-1]
        raise BenchError(f"lgld-run exited with {proc.returncode}: {last[:200]}")
    return summarize_rss(samples, frames, " ".join(cmd[3:]))


def summarize_rss(samples: list[tuple[float, float]], frames: int, command: str) -> dict:
    """Start/end/max and the least-squares slope of the steady state (after the first 20%)."""
    if len(samples) < 5:
        raise BenchError(f"lgld-run ended after {len(samples)} memory samples; use more frames")
    steady = samples[len(samples) // 5:]
    t = np.array([s[0] for s in steady])
    r = np.array([s[1] for s in steady])
    slope = float(np.polyfit(t, r, 1)[0]) if np.ptp(t) > 0 else 0.0  # MB per second
    growth = slope * float(np.ptp(t))
    peak = max(s[1] for s in steady)
    return {
        "command": f"lgld-run {command}",
        "frames": frames,
        "seconds": samples[-1][0],
        "samples": len(samples),
        "start_mb": steady[0][1],
        "end_mb": steady[-1][1],
        "max_mb": peak,
        "max_mb_overall": max(s[1] for s in samples),
        "slope_mb_per_min": slope * 60,
        "steady_growth_mb": growth,
        "under_limit": peak < RSS_LIMIT_MB,
        "flat": abs(growth) <= RSS_FLAT_MB,
    }


def format_rss(rss: dict[str, Any]) -> str:
    """The PASS/FAIL line of the memory check."""
    ok = rss["under_limit"] and rss["flat"]
    return (f"{'PASS' if ok else 'FAIL'} lgld-run RSS over {rss['frames']} demo frames: "
            f"start {rss['start_mb']:.1f} MB, end {rss['end_mb']:.1f} MB, max "
            f"{rss['max_mb']:.1f} MB (limit {RSS_LIMIT_MB:.0f}), slope "
            f"{rss['slope_mb_per_min']:+.2f} MB/min, steady growth "
            f"{rss['steady_growth_mb']:+.1f} MB (flat if within {RSS_FLAT_MB:.0f})")
