"""What a table means: the issue's targets as PASS/FAIL/SKIP lines, and the table as text."""

from __future__ import annotations

import argparse
import statistics
from typing import Any

from lgld.bench.models import Models
from lgld.bench.parity import ATOL

SPEEDUP_TARGET = 3.0  # row 1 / row 3
PIPELINE_TARGET = 0.90  # pipeline FPS / model-only FPS


def targets(table: dict[str, Any]) -> list[dict[str, Any]]:
    """PASS/FAIL/SKIP lines for the issue's targets."""
    rows = {r["key"]: r for r in table["rows"]}
    out = []
    ratio = rows["onnx"]["ratio_vs_row1"]
    parity = table["outputs"]
    if ratio is None:
        out.append({"target": "speedup", "status": "SKIP",
                    "text": "row1/row3 >= 3.0: no reference row (rows 1-2 skipped)"})
    else:
        same = parity.get("ok")
        diff = max(parity.get("max_abs_diff_vs_lgld_torch", 0),
                   parity.get("max_abs_diff_vs_reference", 0)) if parity.get("checked") else None
        status = "PASS" if ratio >= SPEEDUP_TARGET and same else "FAIL"
        detail = (f"max |logit diff| {diff:.1e} <= {ATOL:.0e}, top-1 identical "
                  f"{parity['top1_identical']}/{parity['images']}" if diff is not None
                  else "outputs not checked: " + parity.get("reason", ""))
        out.append({"target": "speedup", "status": status, "value": ratio,
                    "text": f"row1/row3 = {ratio:.2f} (target >= {SPEEDUP_TARGET:.1f}); {detail}"})
    int8 = rows.get("int8")
    if ratio is not None and int8 is not None and int8.get("ratio_vs_row1") is not None:
        best = int8["ratio_vs_row1"]
        out.append({
            "target": "speedup_int8", "status": "PASS" if best >= SPEEDUP_TARGET else "FAIL",
            "value": best,
            "text": f"row1/row3i = {best:.2f} (INT8, the model's best precision; target >= "
                    f"{SPEEDUP_TARGET:.1f}); INT8 answers are held to fp32 by lgld-export's gate",
        })
    pipe, model = rows["pipeline"], rows["onnx"]
    if pipe["skipped"] or not pipe["fps"] or not table["pipeline"].get("live"):
        out.append({"target": "pipeline", "status": "SKIP", "text": "pipeline not measured"})
    else:
        live = table["pipeline"]["live"]
        bound = min(model["fps"], live["camera_fps"])
        share = pipe["fps"] / bound
        limited = " (camera-limited)" if live["camera_fps"] < model["fps"] else ""
        model_mean = 1000.0 / statistics.fmean(model["samples_ms"])
        out.append({
            "target": "pipeline", "status": "PASS" if share >= PIPELINE_TARGET else "FAIL",
            "value": share,
            "value_sustained": live["throughput_fps"] / min(model_mean, live["camera_fps"]),
            "text": f"pipeline {pipe['fps']:.1f} FPS = {100 * share:.1f}% of model-only "
                    f"{bound:.1f} FPS{limited} (medians; target >= "
                    f"{100 * PIPELINE_TARGET:.0f}%); sustained (means): "
                    f"{live['throughput_fps']:.1f} vs {model_mean:.1f} results/s",
        })
    return out


def _fmt(value: float | None, spec: str, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}{spec}}"


def format_table(table: dict[str, Any], m: Models, args: argparse.Namespace) -> str:
    head = (f"{m.onnx_path.name}: {m.info.variant}, {len(m.info.classes)} classes, "
            f"{m.input_size} px, batch 1, {table['threads']} thread(s), {args.repeats} repeats "
            f"after {args.warmup} warm-up (rows 1-3 interleaved); MACs "
            + (f"{m.macs / 1e9:.3f} G ({m.macs_source})" if m.macs else m.macs_source))
    lines = [head, f"{'row':<4}{'':<44}{'median ms':>10}{'p90 ms':>9}{'FPS':>8}{'x row1':>8}"
                   f"{'GMAC/s':>8}{'% peak':>8}"]
    for r in table["rows"]:
        lines.append(
            f"{r['id']:<4}{r['name'][:43]:<44}{_fmt(r['median_ms'], '.2f', 10)}"
            f"{_fmt(r['p90_ms'], '.2f', 9)}{_fmt(r['fps'], '.1f', 8)}"
            f"{_fmt(r['ratio_vs_row1'], '.2f', 8)}{_fmt(r['gmacs'], '.1f', 8)}"
            f"{_fmt(r['pct_of_peak'], '.0f', 7)}{'%' if r['pct_of_peak'] is not None else ''}"
            + (f"  [{r['note']}]" if r["note"] else "")
        )
    pipe = table["pipeline"]
    if pipe:
        parts = " | ".join(f"{k} {v['median_ms']:.2f}" for k, v in pipe["stages"].items())
        lines.append(f"stages (ms, median, one frame in sequence): {parts} | total "
                     f"{pipe['sequential_ms']:.2f} -> {pipe['sequential_fps']:.1f} FPS on one "
                     "thread"
                     + (f"; live pipeline latency (gate+preprocess+inference) "
                        f"{pipe['live']['latency_ms_median']:.2f} ms" if pipe["live"] else ""))
    lines += [f"{t['status']} {t['text']}" for t in table["targets"]]
    return "\n".join(lines)
