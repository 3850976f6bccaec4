"""``lgld-dataset``: reviewed cell-mode sessions -> an ImageFolder data set with a manifest.

    lgld-dataset results.jsonl -o lab-data                 # reviewed cells of every session
    lgld-dataset a.jsonl b.jsonl --crops A/ --crops B/ -o lab-data --min-per-class 10
    lgld-dataset results.jsonl -o lab-data --include-unreviewed --min-confidence 0.95

Torch-free: runs on the Pi as well as on the workstation.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lgld.lab.build import (
    DatasetError,
    Options,
    Plan,
    Source,
    plan,
    remove_stale_temp,
    write,
)
from lgld.runtime.core.cliutil import OneLineParser, run_cli
from lgld.runtime.core.untrusted import text_arg

PROG = "lgld-dataset"


def _parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description=__doc__.splitlines()[0].replace("``", ""))
    p.add_argument("logs", nargs="+", type=lambda v: Path(text_arg(v)), metavar="LOG",
                   help="cell-mode JSONL log(s); rotated siblings (.1, .2 ...) are read too")
    p.add_argument("-o", "--output", "--out", dest="out", required=True,
                   type=lambda v: Path(text_arg(v)),
                   help="data-set folder to create (must not exist)")
    p.add_argument("--crops", action="append", type=lambda v: Path(text_arg(v)), default=[],
                   help="folder the logged crop paths are relative to (default: the log's "
                        "folder); once for all logs or once per log, in order")
    p.add_argument("--session", action="append", default=[], type=text_arg,
                   help="use only this session id (repeatable; default: every session)")
    p.add_argument("--min-per-class", type=int, default=5,
                   help="refuse when a class has fewer images (default 5)")
    p.add_argument("--omit-small", action="store_true",
                   help="leave classes below --min-per-class out instead of refusing")
    p.add_argument("--include-unreviewed", action="store_true",
                   help="also add cells nobody reviewed, labelled by the model (marked)")
    p.add_argument("--min-confidence", type=float, default=0.9,
                   help="with --include-unreviewed: the model's confidence needed (default 0.9)")
    return p


def _sources(logs: list[Path], crops: list[Path]) -> list[Source]:
    if len(crops) > 1 and len(crops) != len(logs):
        raise DatasetError(f"give --crops once, or once per log ({len(logs)} logs, "
                           f"{len(crops)} --crops)")
    if not crops:
        return [Source(log, log.parent) for log in logs]
    if len(crops) == 1:
        return [Source(log, crops[0]) for log in logs]
    return [Source(log, c) for log, c in zip(logs, crops, strict=True)]


def format_counts(p: Plan) -> str:
    """The per-class table and what was left out, as printed after a build."""
    counts = p.counts()
    width = max(10, *(len(c) for c in counts))
    lines = [f"{'class':<{width}} {'reviewed':>9} {'model':>6} {'total':>6}"]
    for name, n in counts.items():
        lines.append(f"{name:<{width}} {n['reviewed']:>9} {n['model']:>6} "
                     f"{n['reviewed'] + n['model']:>6}")
    total = len(p.entries)
    lines.append(f"{'total':<{width}} {'':>9} {'':>6} {total:>6}   "
                 f"({len({e.group for e in p.entries})} cells, "
                 f"{len(p.sessions)} session(s))")
    gone = [f"{n} {why}" for why, n in p.left_out.most_common()]
    if p.duplicates:
        gone.append(f"{len(p.duplicates)} duplicate image(s)")
    gone += [f"class {c} ({n} < --min-per-class)" for c, n in p.omitted_classes.items()]
    if gone:
        lines.append("left out: " + ", ".join(gone))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    options = Options(min_per_class=args.min_per_class, include_unreviewed=args.include_unreviewed,
                      min_confidence=args.min_confidence, omit_small=args.omit_small,
                      sessions=list(args.session))
    if args.out.exists():  # refuse before reading anything
        raise DatasetError(f"{args.out} already exists; choose a new output folder")
    if args.out.parent.is_dir():
        for stale in remove_stale_temp(args.out):
            print(f"{PROG}: removed {stale}, left by a build that was stopped", file=sys.stderr)
    checked = plan(_sources(args.logs, args.crops), options)
    write(checked, args.out)
    print(format_counts(checked), flush=True)
    print(f"{PROG}: wrote {args.out} ({len(checked.entries)} images, manifest "
          f"{args.out / 'manifest.json'})", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``lgld-dataset``."""
    return run_cli(PROG, run, _parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
