"""One table: every row at one thread count, timed in the same process."""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lgld.bench import BenchError
from lgld.bench.inputs import sample_images
from lgld.bench.machine import loadavg, torch_or_none
from lgld.bench.models import Models, prepare_models
from lgld.bench.parity import check_outputs
from lgld.bench.peak import PeakError, measure_peak
from lgld.bench.pipeline_row import FRAME_SIZE, pipeline_stages, run_pipeline
from lgld.bench.targets import targets
from lgld.bench.timing import in_fresh_process, median_ci, percentile, time_interleaved
from lgld.runtime.core.classifier import OnnxClassifier
from lgld.runtime.core.cpu import cpu_features
from lgld.runtime.core.preprocess import preprocess

MAX_CAMERA_FPS = 120.0


@dataclass
class Row:
    """One line of the table."""

    id: str
    key: str
    name: str
    samples_ms: list[float] = field(default_factory=list)
    note: str = ""
    skipped: bool = False
    gmacs: float | None = None  # achieved GMAC/s (peak row: the peak)

    @property
    def median_ms(self) -> float | None:
        return statistics.median(self.samples_ms) if self.samples_ms else None

    @property
    def p90_ms(self) -> float | None:
        return percentile(self.samples_ms, 90) if self.samples_ms else None

    @property
    def fps(self) -> float | None:
        return 1000.0 / self.median_ms if self.median_ms else None


def time_model_rows(m: Models, clf: OnnxClassifier, threads: int, args: argparse.Namespace,
                    by_key: dict[str, Row]) -> None:
    """Rows 1-3 (and 3i), timed interleaved on the same preprocessed sample image."""
    torch = torch_or_none() if m.torch_model is not None else None
    x = preprocess(sample_images(m.input_size)[0], clf.info.preprocess)
    fns: dict[str, Callable[[], Any]] = {}
    if torch is not None:
        torch.set_num_threads(threads)
        xt = torch.from_numpy(x)

        def eager(model: Any) -> Callable[[], Any]:
            def call() -> Any:
                with torch.inference_mode():
                    return model(xt)
            return call

        fns["reference"], fns["torch"] = eager(m.reference), eager(m.torch_model)
    else:
        for key in ("reference", "torch"):
            by_key[key].skipped, by_key[key].note = True, f"skipped: {m.torch_skip}"
    fns["onnx"] = lambda: clf.logits(x)
    if m.int8_path is not None:
        int8 = OnnxClassifier(m.int8_path, threads=threads)
        x8 = preprocess(sample_images(m.input_size)[0], int8.info.preprocess)
        fns["int8"] = lambda: int8.logits(x8)
        by_key["int8"].note = (f"{m.int8_path.name} ({int8.info.quantization}); CPU "
                               f"{cpu_features().summary()}")
    for key, samples in time_interleaved(fns, args.warmup, args.repeats).items():
        by_key[key].samples_ms = samples


def measure_pipeline_row(row: Row, clf: OnnxClassifier, args: argparse.Namespace,
                         model_fps: float) -> dict[str, Any]:
    """Row 4 and the stage times; {} when --pipeline-seconds is 0."""
    if args.pipeline_seconds <= 0:
        row.skipped, row.note = True, "skipped (--pipeline-seconds 0)"
        return {}
    stage_samples = pipeline_stages(clf, args.warmup, args.repeats)
    stages = {name: {"median_ms": statistics.median(v), "p90_ms": percentile(v, 90)}
              for name, v in stage_samples.items()}
    seq_ms = sum(s["median_ms"] for s in stages.values())
    camera = args.camera_fps or min(MAX_CAMERA_FPS, max(30.0, 1.25 * model_fps))
    info = {"stages": stages, "sequential_ms": seq_ms, "sequential_fps": 1000.0 / seq_ms,
            "live": None}
    try:
        live = run_pipeline(clf, args.pipeline_seconds, camera)
    except BenchError as exc:
        row.skipped, row.note = True, f"failed: {exc}"
        return info
    row.samples_ms = live.pop("intervals_ms")
    row.note = (f"{live['throughput_fps']:.1f} results/s sustained; camera "
                f"{live['camera_fps']:.1f} fps, stream {live['stream_fps']:.1f} fps, "
                f"{live['dropped']} frames dropped")
    info["live"] = live
    return info


def measure_peak_row(row: Row, threads: int, size: int) -> dict[str, Any] | None:
    """Row 5, the SGEMM peak; None when skipped."""
    if size <= 0:
        row.skipped, row.note = True, "skipped (--peak-size 0)"
        return None
    try:
        peak = measure_peak(threads, n=size)
    except PeakError as exc:
        row.skipped, row.note = True, f"skipped: {exc}"
        return None
    row.samples_ms = [t * 1e3 for t in peak.times_s]
    row.gmacs = peak.best_gmacs
    row.name = f"SGEMM fp32 peak ({peak.n}x{peak.n}, {peak.blas})"
    row.note = "peak = fastest of the repeats; model rows use their median"
    return peak.to_dict()


def row_entries(rows: list[Row], macs: int | None) -> list[dict[str, Any]]:
    """The rows as JSON objects, with ratios to row 1 and shares of the peak."""
    by_key = {r.key: r for r in rows}
    row1, peak_row = by_key["reference"].median_ms, by_key["peak"]
    out_rows = []
    for r in rows:
        if r.key != "peak" and macs and r.fps:
            r.gmacs = macs * r.fps / 1e9
        ratio = row1 / r.median_ms if row1 and r.median_ms and r.key != "peak" else None
        pct = (100.0 * r.gmacs / peak_row.gmacs
               if r.gmacs and peak_row.gmacs and not peak_row.skipped else None)
        out_rows.append({
            "id": r.id, "key": r.key, "name": r.name, "skipped": r.skipped, "note": r.note,
            "median_ms": r.median_ms, "p90_ms": r.p90_ms,
            "fps": r.fps if r.key != "peak" else None,
            "ratio_vs_row1": ratio, "gmacs": r.gmacs, "pct_of_peak": pct, "n": len(r.samples_ms),
            "median_ci_ms": list(median_ci(r.samples_ms)) if r.samples_ms else None,
            "samples_ms": [round(v, 4) for v in r.samples_ms],
        })
    return out_rows


def run_table(m: Models, threads: int, args: argparse.Namespace) -> dict[str, Any]:
    """Every row at one thread count."""
    rows = [
        Row("1", "reference", "reference: paper-style PyTorch eager"),
        Row("2", "torch", "lgld PyTorch eager"),
        Row("3", "onnx", "lgld ONNX fp32 (runtime session)"),
    ]
    if m.int8_path is not None:
        rows.append(Row("3i", "int8", "lgld ONNX INT8 (runtime session)"))
    rows += [Row("4", "pipeline", f"pipeline: demo {FRAME_SIZE[0]}x{FRAME_SIZE[1]}, per result"),
             Row("5", "peak", "SGEMM fp32 peak")]
    by_key = {r.key: r for r in rows}
    clf = OnnxClassifier(m.onnx_path, threads=threads)
    time_model_rows(m, clf, threads, args, by_key)
    stages_info = measure_pipeline_row(by_key["pipeline"], clf, args, by_key["onnx"].fps or 0.0)
    peak_info = measure_peak_row(by_key["peak"], threads, args.peak_size)
    table = {"threads": threads, "rows": row_entries(rows, m.macs), "pipeline": stages_info,
             "peak": peak_info, "outputs": check_outputs(m, threads), "loadavg_end": loadavg()}
    table["targets"] = targets(table)
    return table


def _child_table(args: argparse.Namespace, threads: int) -> dict[str, Any]:
    torch = torch_or_none()
    if torch is not None:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="lgld-bench-") as tmpdir:
        return run_table(prepare_models(args, Path(tmpdir)), threads, args)


def run_table_isolated(args: argparse.Namespace, threads: int) -> dict[str, Any]:
    """:func:`run_table` in a fresh process, so no thread pool of an earlier table leaks in."""
    return in_fresh_process(_child_table, args, threads)
