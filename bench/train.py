"""``lgld-bench --train``: lgld-train's img/s against the paper-style model's bare training step.

The measurement lives in :mod:`lgld.bench.throughput` (fresh processes per setting, the
allocator lgld-train picks); this module only hands it the paper-style reference model
(:mod:`.reference`) and turns the flags into its arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from lgld.bench import BenchError
from lgld.bench.throughput import format_training, measure_training, parse_sizes

REFERENCE_FACTORY = "lgld.bench.reference:ReferenceLGLDNet"


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training throughput (--train)")
    g.add_argument("--train", action="store_true",
                   help="measure lgld-train end to end against the paper-style model's bare "
                   "training step (batch 32, Adam) instead of the inference table")
    g.add_argument("--train-data", metavar="DIR",
                   help="labelled image folder lgld-train reads (e.g. the ALL data set)")
    g.add_argument("--train-sizes", default="224", metavar="224,...",
                   help="input sizes (default 224)")
    g.add_argument("--train-rounds", type=int, default=2,
                   help="rounds of every setting, alternating (default 2)")
    g.add_argument("--train-limit-per-class", type=int, default=40,
                   help="images per class for lgld-train's epoch (default 40)")
    g.add_argument("--train-core-only", action="store_true",
                   help="only the authors' step (glibc defaults and lgld-train's settings) and "
                   "lgld-train as shipped (skips lgld's bare step and lgld-train before the "
                   "restart: half the time)")


def run_train(args: argparse.Namespace) -> dict[str, Any]:
    """The --train measurement, printed; returns the results for the JSON report."""
    if not args.train_data:
        raise BenchError("--train needs --train-data DIR (a labelled image folder)")
    if not Path(args.train_data).is_dir():
        raise BenchError(f"--train-data: no such folder: {args.train_data}")
    if args.train_rounds < 1 or args.train_limit_per_class < 3:
        raise BenchError("--train-rounds must be >= 1 and --train-limit-per-class >= 3")
    try:
        sizes = parse_sizes(args.train_sizes)
    except ValueError as exc:
        raise BenchError(f"--train-sizes: {exc}") from None
    try:
        results = measure_training(
            REFERENCE_FACTORY, args.train_data, sizes, rounds=args.train_rounds,
            limit_per_class=args.train_limit_per_class,
            log=lambda m: print(m, file=sys.stderr, flush=True),
            core_only=args.train_core_only,
        )
    except RuntimeError as exc:  # a child process failed: its last words
        raise BenchError(str(exc)) from None
    print(format_training(results), flush=True)
    return results
