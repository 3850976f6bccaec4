"""The ``lgld-bench`` command line: flags, the order of the measurements, the JSON report."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from lgld.bench import BenchError
from lgld.bench.machine import loadavg, machine_info
from lgld.bench.menu import (
    MenuError,
    MenuItem,
    format_menu,
    parse_menu,
    run_menu,
    run_menu_isolated,
)
from lgld.bench.models import Models, export_at_size, prepare_models
from lgld.bench.ort_profile import format_profile, profile_onnx
from lgld.bench.rss import format_rss, rss_check
from lgld.bench.study import format_study, run_study
from lgld.bench.table import run_table, run_table_isolated
from lgld.bench.targets import format_table
from lgld.bench.train import add_train_arguments, run_train
from lgld.export import ExportError
from lgld.runtime.core.classifier import OnnxClassifier, default_threads
from lgld.runtime.core.cliutil import OneLineParser, run_cli
from lgld.runtime.core.files import write_atomic
from lgld.runtime.core.zoo import resolve_model

PROG = "lgld-bench"


def parse_threads(text: str | None) -> list[int]:
    if not text:
        return [default_threads()]
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise BenchError(f"--threads wants comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise BenchError(f"--threads values must be >= 1, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog=PROG,
        description="Benchmark lgld against the paper-style PyTorch model on this machine: "
        "median/p90 latency, FPS, ratios, GMAC/s vs the SGEMM peak, the live pipeline, "
        "targets as PASS/FAIL lines.",
    )
    p.add_argument("--model", default="all", metavar="all|wbc5|PATH",
                   help="lgld ONNX model (or a .pt checkpoint, exported on the fly); default all")
    p.add_argument("--checkpoint", metavar="PT",
                   help="weights for rows 1-2 (default: the .pt next to the model, if its sha256 "
                   "matches the model's metadata; else random weights)")
    p.add_argument("--int8", metavar="PATH", help="INT8 model (default: <model>.int8.onnx "
                   "next to the model, if present)")
    p.add_argument("--threads", metavar="1,2,...",
                   help=f"thread counts, one table each (default {default_threads()})")
    p.add_argument("--input-size", type=int, metavar="N",
                   help="build the models at N px (re-exports the ONNX; needs torch)")
    p.add_argument("--repeats", type=int, default=30, help="timed calls per row (default 30)")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls per row (default 5)")
    p.add_argument("--pipeline-seconds", type=float, default=10.0,
                   help="length of the live pipeline run (0 = skip; default 10)")
    p.add_argument("--camera-fps", type=float, default=None,
                   help="demo camera rate (default max(30, 1.25 x model FPS), at most 120)")
    p.add_argument("--peak-size", type=int, default=2048,
                   help="SGEMM matrix size for the peak (0 = skip; default 2048)")
    p.add_argument("--profile", action="store_true",
                   help="add an ONNX Runtime profile of the model by op type")
    p.add_argument("--study", action="store_true",
                   help="export and time the paper-style model and each export rewrite in turn "
                   "(needs torch, onnx, onnxsim)")
    p.add_argument("--menu", metavar="all,all-160,...|224,...",
                   help="also time these models (zoo names or .onnx paths; with the validation "
                   "accuracy recorded in each) interleaved; a number N re-exports the model's "
                   "weights at N px instead (speed only; needs torch)")
    p.add_argument("--rss-frames", type=int, default=0, metavar="N",
                   help="run lgld-run --source demo --frames N and check its resident memory "
                   "(0 = off; the issue's check is 10000)")
    p.add_argument("--cells", type=float, default=0.0, metavar="SECONDS",
                   help="cell-mode row: detection ms and the cell-mode pipeline with 3 cells "
                   "per frame for SECONDS (a white-cell model, e.g. --model wbc5; 0 = skip)")
    p.add_argument("-o", "--output", "--json", dest="json", metavar="OUT.json",
                   help="write everything measured to this JSON file")
    add_train_arguments(p)
    return p


def check_args(args: argparse.Namespace) -> None:
    """Refuse unusable numbers and an unwritable --json before anything is measured."""
    for flag, value, low in (("--repeats", args.repeats, 1), ("--warmup", args.warmup, 0),
                             ("--peak-size", args.peak_size, 0),
                             ("--rss-frames", args.rss_frames, 0)):
        if value < low:
            raise BenchError(f"{flag} must be >= {low}, got {value}")
    if args.input_size is not None and (args.input_size < 16 or args.input_size % 2):
        raise BenchError(f"--input-size must be an even number >= 16, got {args.input_size}")
    if args.pipeline_seconds < 0:
        raise BenchError("--pipeline-seconds must be >= 0")
    if args.json:
        out = Path(args.json)
        if out.is_dir() or not out.parent.is_dir():
            raise BenchError(f"cannot write JSON to {out}")


def run_profile_and_study(report: dict[str, Any], m: Models, threads: list[int],
                          args: argparse.Namespace, tmp: Path) -> None:
    """--profile and --study, printed and added to the report."""
    if args.profile:
        report["profile"] = profile_onnx(m.onnx_path, threads[0], args.repeats,
                                         args.warmup, tmp)
        print(format_profile(report["profile"], f"ONNX Runtime profile of {m.onnx_path.name}"))
    if not args.study:
        return
    if m.torch_model is None:
        report["study"] = {"skipped": "needs torch"}
        print("note: --study skipped: needs torch, onnx and onnxsim")
        return
    report["study"] = []
    for n in threads:
        study = run_study(m, n, args.warmup, args.repeats, tmp)
        report["study"].append(study)
        print(format_study(study), flush=True)
    if args.profile:
        plain = Path(report["study"][0]["forms"][0]["path"])
        prof = profile_onnx(plain, threads[0], args.repeats, args.warmup, tmp)
        report["profile_reference_plain_export"] = prof
        print(format_profile(prof, "ONNX Runtime profile of the plain export of the "
                                   "paper-style reference"))


def run_menus(items: list[MenuItem], m: Models, threads: list[int], args: argparse.Namespace,
              tmp: Path) -> list[dict[str, Any]]:
    """--menu at every thread count (model files in fresh processes when there are several)."""
    export_at = None
    if m.torch_model is not None:
        def export_at(size: int) -> tuple[Path, int]:
            return export_at_size(m, size, tmp)
    isolate = len(threads) > 1 and all(item.size is None for item in items)
    try:
        menus = [run_menu_isolated(items, n, args.warmup, args.repeats) if isolate
                 else run_menu(items, n, args.warmup, args.repeats, export_at)
                 for n in threads]
    except MenuError as exc:
        raise BenchError(str(exc)) from None
    for menu in menus:
        print(format_menu(menu), flush=True)
    return menus


def run(args: argparse.Namespace) -> int:
    threads = parse_threads(args.threads)
    try:
        menu_items = parse_menu(args.menu, resolve_model)
    except MenuError as exc:
        raise BenchError(str(exc)) from None
    check_args(args)
    report: dict[str, Any] = {"tool": PROG, "machine": machine_info()}
    if args.train:
        report["training"] = run_train(args)
        return write_report(report, args)
    with tempfile.TemporaryDirectory(prefix="lgld-bench-") as tmpdir:
        tmp = Path(tmpdir)
        m = prepare_models(args, tmp)
        report["settings"] = {
            "model": str(m.onnx_path), "input_size": m.input_size, "variant": m.info.variant,
            "classes": m.info.classes, "weights": m.weights, "int8": str(m.int8_path or ""),
            "threads": threads, "repeats": args.repeats, "warmup": args.warmup,
            "batch": 1, "macs": m.macs, "macs_source": m.macs_source, "notes": m.notes,
            "command": " ".join([PROG, *args.argv]),
        }
        print(f"{PROG}: {m.info.name} model {m.onnx_path} | weights for rows 1-2: {m.weights}")
        for note in m.notes:
            print(f"note: {note}")
        report["tables"] = []
        for n in threads:
            table = run_table(m, n, args) if len(threads) == 1 else run_table_isolated(args, n)
            report["tables"].append(table)
            print(format_table(table, m, args), flush=True)
        run_profile_and_study(report, m, threads, args, tmp)
        if menu_items:
            report["menu"] = run_menus(menu_items, m, threads, args, tmp)
        if args.rss_frames:
            report["rss"] = rss_check(m.onnx_path, args.rss_frames, threads[0])
            print(format_rss(report["rss"]))
        if args.cells:
            from lgld.bench.cells_row import format_cells, run_cells

            clf = OnnxClassifier(m.onnx_path, threads=threads[0])
            report["cells"] = run_cells(clf, args.cells, args.warmup, args.repeats)
            print(format_cells(report["cells"], m.onnx_path.name), flush=True)
    return write_report(report, args)


def write_report(report: dict[str, Any], args: argparse.Namespace) -> int:
    """Add the end load average; write --json if asked."""
    report["machine"]["loadavg_end"] = loadavg()
    if args.json:
        try:
            write_atomic(args.json, json.dumps(report, indent=1) + "\n")
        except OSError as exc:
            raise BenchError(f"cannot write {args.json}: {exc.strerror or exc}") from None
        print(f"wrote {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed on one line
        return exc.code if isinstance(exc.code, int) else 2
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return run_cli(PROG, run, args, (ExportError, ValueError, OSError, BenchError))


if __name__ == "__main__":
    sys.exit(main())
