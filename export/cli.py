"""``lgld-export``: checkpoint -> simplified, verified, self-describing ONNX (optionally INT8)."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from lgld.export import ExportError
from lgld.runtime.core.cliutil import OneLineParser, run_cli

PROG = "lgld-export"


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog=PROG,
        description="Export an lgld-train checkpoint to ONNX for the runtime: exact algebraic "
        "rewrites (BN folding and more), onnxsim, ONNX Runtime vs PyTorch verification, "
        "metadata with everything the runtime needs. Optional static INT8 (QDQ).",
    )
    p.add_argument("checkpoint", help="checkpoint (.pt) written by lgld-train")
    p.add_argument("-o", "--output", required=True, help="output .onnx path")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
    p.add_argument("--batch", choices=("1", "dynamic"), default="1",
                   help="fixed batch size 1 (default) or a dynamic batch dimension")
    p.add_argument("--no-simplify", action="store_true", help="skip onnxsim")
    p.add_argument("--no-rewrite", action="store_true",
                   help="export the model as written, without the algebraic rewrites "
                   "(for comparisons; forbidden ops are not checked)")
    p.add_argument("--verify-data", metavar="DIR",
                   help="verify on the images under DIR (default: fixed synthetic images)")
    p.add_argument("--verify-limit", type=int, default=None, metavar="N",
                   help="verify on at most N images of --verify-data, evenly spread")
    p.add_argument("--name", default=None,
                   help="model name for the metadata (default: the training data set's name)")
    p.add_argument("--threads", type=int, default=None,
                   help="ONNX Runtime threads for verification and timing")
    d = p.add_argument_group("domain reference (cell mode's per-session microscope check)")
    d.add_argument("--domain-data", metavar="DIR",
                   help="the model's training data folder: its validation images are "
                   "recorded as what this model knows (without it cell mode cannot tell a new "
                   "microscope)")
    d.add_argument("--domain-split", metavar="SPLIT.json",
                   help="the run's split.json: only its val part is used (recommended)")
    q = p.add_argument_group("INT8 (static post-training quantization, QDQ)")
    q.add_argument("--int8", action="store_true",
                   help="write an INT8 model to --output (the fp32 export is the reference)")
    q.add_argument("--calib-data", metavar="DIR",
                   help="calibration images, one sub-folder per class (the model's classes); "
                   "with --split-file: the data folder the split refers to")
    q.add_argument("--split-file", metavar="SPLIT.json",
                   help="the model's own lgld-train split: calibrate on its train part, gate on "
                   "its val part (checked against the split sizes recorded in the checkpoint)")
    q.add_argument("--calib-limit", type=int, default=None, metavar="N",
                   help="use at most N calibration images, evenly spread (default with "
                   "--split-file: 256)")
    q.add_argument("--int8-scope", choices=("gce", "all"), default="gce",
                   help="gce (default): quantize only the GCE's dilated convolutions (most of "
                   "the MACs), the rest stays fp32; all: every node ONNX Runtime can quantize")
    q.add_argument("--int8-full-range", action="store_true",
                   help="8-bit weights instead of 7-bit ones (can saturate on x86 without VNNI; "
                   "the runtime then needs its exact-kernel session option there)")
    q.add_argument("--int8-activations", choices=("u8", "s8"), default="u8",
                   help="activation type: u8 (default; fastest measured) or s8 (slower than "
                   "fp32 on x86)")
    q.add_argument("--latency-runs", type=int, default=30, metavar="N",
                   help="timed runs per model for the fp32 vs INT8 latency (default 30)")
    q.add_argument("--max-accuracy-drop", type=float, default=0.005,
                   help="refuse the INT8 model if its top-1 accuracy on the calibration "
                   "images is lower than fp32's by more than this (default 0.005)")
    return p


def _graph_lines(path: Path, macs: int) -> list[str]:
    """Node count, op histogram, parameter count and MACs of a written model."""
    import onnx

    from lgld.export.onnx_export import graph_parameter_count
    from lgld.export.verify import op_histogram

    model = onnx.load(str(path))
    hist = op_histogram(model)
    return [
        f"nodes: {len(model.graph.node)}",
        "ops: " + ", ".join(f"{op} {n}" for op, n in hist.items()),
        f"parameters: {graph_parameter_count(model):,} in the graph (weights, scales, zero "
        "points)",
        f"MACs: {macs / 1e9:.3f} G (the fp32 graph's; quantized ops do them in int8)",
    ]


def run(args: argparse.Namespace) -> int:
    from lgld.export.onnx_export import check_writable, export_checkpoint
    from lgld.export.quantize import labelled_images, quantize_int8, split_items
    from lgld.models.checkpoint import load_checkpoint

    if args.int8 and not (args.calib_data or args.split_file):
        raise ExportError("--int8 needs --calib-data DIR or --split-file SPLIT.json")
    if (args.calib_data or args.split_file) and not args.int8:
        raise ExportError("--calib-data and --split-file are only used with --int8")
    if args.domain_split and not args.domain_data:
        raise ExportError("--domain-split needs --domain-data DIR")
    for flag, value in (("--threads", args.threads), ("--verify-limit", args.verify_limit),
                        ("--calib-limit", args.calib_limit),
                        ("--latency-runs", args.latency_runs)):
        if value is not None and value < 1:
            raise ExportError(f"{flag} must be >= 1, got {value}")
    out = Path(args.output)
    check_writable(out)  # fail fast, before any slow work
    kwargs = dict(
        opset=args.opset, dynamic_batch=args.batch == "dynamic", simplify=not args.no_simplify,
        verify_images=args.verify_data, rewrite=not args.no_rewrite, name=args.name,
        verify_limit=args.verify_limit, threads=args.threads,
    )
    if not args.int8:
        report = export_checkpoint(args.checkpoint, out, **kwargs)
        print(report.summary())
        _domain_reference(args, out)
        return 0
    # fail fast on calibration data that cannot fit this checkpoint
    ckpt = load_checkpoint(args.checkpoint)
    if args.split_file:
        split_items(args.split_file, ckpt.classes, root=args.calib_data,
                    expect_counts=ckpt.training.get("split_counts"))
    else:
        labelled_images(args.calib_data, ckpt.classes)
    with tempfile.TemporaryDirectory(prefix="lgld-export-") as tmp:
        fp32_path = Path(tmp) / "fp32.onnx"
        report = export_checkpoint(args.checkpoint, fp32_path, **kwargs)
        print(f"fp32 reference: {report.node_count} nodes, {report.graph_parameters:,} "
              f"parameters, MACs {report.export_macs / 1e9:.3f} G")
        print(f"fp32 verified on {report.verification.summary()}")
        int8 = quantize_int8(
            fp32_path, out, args.calib_data, max_accuracy_drop=args.max_accuracy_drop,
            threads=args.threads, calib_limit=args.calib_limit, activations=args.int8_activations,
            latency_runs=args.latency_runs, scope=args.int8_scope,
            reduce_range=not args.int8_full_range, split_file=args.split_file,
        )
    print(f"wrote {out} ({out.stat().st_size / 1024:.1f} KiB, int8-qdq, opset {report.opset}, "
          f"{'dynamic' if args.batch == 'dynamic' else 'fixed'} batch)")
    print("\n".join(_graph_lines(out, report.export_macs)))
    print(int8.summary())
    _domain_reference(args, out)
    return 0


def _domain_reference(args: argparse.Namespace, out: Path) -> None:
    """Stamp the written model with its domain reference, or say that it has none."""
    if not args.domain_data:
        print("no domain reference: cell mode will not tell a new microscope "
              "(--domain-data DIR [--domain-split SPLIT.json] records one)")
        return
    from lgld.export.domainstats import stamp_models

    print("\n".join(stamp_models([out], args.domain_data, args.domain_split,
                                 threads=args.threads or 1)))


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    return run_cli(PROG, run, args, (ExportError, ValueError, OSError))


if __name__ == "__main__":
    sys.exit(main())
