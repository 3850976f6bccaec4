"""``--profile``: where ONNX Runtime spends a model's time, summed by op type."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from lgld.runtime.core.classifier import session_options


def aggregate_profile(events: list[dict], skip_runs: int = 0) -> dict[str, Any]:
    """Sum ONNX Runtime node kernel times by op type, ignoring the first ``skip_runs`` runs."""
    runs = sorted(e["ts"] for e in events if e.get("cat") == "Session"
                  and e.get("name") == "model_run")
    start = runs[skip_runs] if len(runs) > skip_runs else 0
    counted = max(1, len(runs) - skip_runs)
    totals: dict[str, list[float]] = {}
    for e in events:
        if e.get("cat") != "Node" or e.get("ts", 0) < start:
            continue
        if not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        op = e.get("args", {}).get("op_name", "?")
        entry = totals.setdefault(op, [0.0, 0])
        entry[0] += float(e.get("dur", 0))
        entry[1] += 1
    total_us = sum(v[0] for v in totals.values()) or 1.0
    ops = [
        {"op": op, "ms_per_run": us / counted / 1e3, "share": us / total_us,
         "nodes_per_run": n / counted}
        for op, (us, n) in sorted(totals.items(), key=lambda kv: -kv[1][0])
    ]
    return {"runs": counted, "kernel_ms_per_run": total_us / counted / 1e3, "ops": ops}


def profile_onnx(path: Path, threads: int, runs: int, warmup: int, tmp: Path) -> dict[str, Any]:
    """Run ``path`` with ONNX Runtime profiling on and aggregate the profile by op type."""
    so = session_options(threads)
    so.enable_profiling = True
    so.profile_file_prefix = str(tmp / f"ort-profile-{path.stem}")
    sess = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    for _ in range(warmup + runs):
        sess.run(None, {inp.name: x})
    prof = Path(sess.end_profiling())
    try:
        report = aggregate_profile(json.loads(prof.read_text()), skip_runs=warmup)
    finally:
        prof.unlink(missing_ok=True)
    report["model"] = str(path)
    report["threads"] = threads
    return report


def format_profile(report: dict[str, Any], title: str) -> str:
    lines = [f"{title}: {report['kernel_ms_per_run']:.2f} ms of kernels per run "
             f"({report['runs']} runs, {report['threads']} threads)",
             f"  {'op':<22}{'ms/run':>9}{'share':>8}{'nodes':>7}"]
    for op in report["ops"]:
        lines.append(f"  {op['op']:<22}{op['ms_per_run']:>9.2f}{100 * op['share']:>7.1f}%"
                     f"{op['nodes_per_run']:>7.0f}")
    return "\n".join(lines)
