"""Leave-one-microscope-out: every model on every microscope's labelled images, through cell mode.

``python -m lgld.bench.microscopes --model pbc=zoo/lgld-wbc5.onnx --model lisc=lisc.onnx
--crops pbc=DATA/WBC5@pbc-split.json:val --crops lisc=DATA/LISC@lisc-split.json:test
--fields bccd=DATA/BCCD-dev`` scores each model (named by the microscopes it was trained on,
joined by ``+``) on each test set with :mod:`lgld.bench.celltypes` and prints one table. A
cell whose microscope the model was trained on is marked ``seen``: only the others say how the
model does on a microscope it never saw. Crops of a microscope are scored with the scale read
from the crop (``--diameter auto``), as a new microscope would be; fields with cell mode's
defaults.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass

from lgld.bench.celltypes import build_parser as celltypes_parser
from lgld.bench.celltypes import score_crops, score_fields
from lgld.runtime.core.cliutil import OneLineParser, run_cli


@dataclass(frozen=True)
class TestSet:
    """One microscope's labelled images: crops (a split file's part) or whole fields."""

    name: str
    kind: str  # crops | fields
    data: str
    split_file: str = ""
    part: str = ""

    def celltypes_argv(self, model: str, threads: int) -> list[str]:
        argv = [self.kind, self.data, "--model", model, "--threads", str(threads)]
        if self.kind == "crops":
            argv += ["--diameter", "auto"]
            if self.split_file:
                argv += ["--split-file", self.split_file, "--part", self.part]
        return argv


def parse_model(text: str) -> tuple[frozenset[str], str]:
    """``pbc+lisc=PATH`` -> ({"pbc", "lisc"}, PATH)."""
    names, sep, path = text.partition("=")
    if not sep or not names or not path:
        raise argparse.ArgumentTypeError(f"{text!r}: expected MICROSCOPES=MODEL, e.g. pbc=m.onnx")
    return frozenset(n.strip().lower() for n in names.split("+")), path


def parse_crops(text: str) -> TestSet:
    """``lisc=DIR@SPLIT.json:PART`` (the split optional) -> a crops test set."""
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=DIR[@SPLIT.json:PART]")
    data, _, split = rest.partition("@")
    split_file, _, part = split.rpartition(":") if ":" in split else (split, "", "test")
    return TestSet(name.strip().lower(), "crops", data, split_file, part or "test")


def parse_fields(text: str) -> TestSet:
    """``bccd=DIR`` -> a whole-fields test set (images/, annotations/, labels.csv)."""
    name, sep, data = text.partition("=")
    if not sep or not name or not data:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=DIR")
    return TestSet(name.strip().lower(), "fields", data)


def score(test: TestSet, model: str, threads: int) -> dict:
    """celltypes' summary of one model on one test set."""
    args = celltypes_parser().parse_args(test.celltypes_argv(model, threads))
    scored, classes = (score_fields if test.kind == "fields" else score_crops)(args)
    return scored.summary(classes)


def matrix(models: list[tuple[frozenset[str], str]], tests: list[TestSet],
           threads: int = 1) -> list[dict]:
    """One row per model and test set: the scores and whether the model saw that microscope."""
    rows = []
    for trained_on, path in models:
        for test in tests:
            result = score(test, path, threads)
            rows.append({"model": path, "trained_on": sorted(trained_on), "test": test.name,
                         "seen": test.name in trained_on,
                         **{k: v for k, v in result.items() if k not in ("confusion", "f1")}})
    return rows


def format_table(rows: list[dict], tests: list[str]) -> str:
    """Markdown: a row per model, a column per test set (right type, macro F1, sure-wrong)."""
    lines = ["| trained on | " + " | ".join(tests) + " |", "| --- " * (len(tests) + 1) + "|"]
    by_model: dict[str, dict[str, dict]] = {}
    for r in rows:
        by_model.setdefault(r["model"], {})[r["test"]] = r
    for model, cells in by_model.items():
        first = next(iter(cells.values()))
        out = []
        for t in tests:
            r = cells[t]
            out.append(f"{r['right_type']:.1%}, F1 {r['macro_f1']:.2f}, sure-wrong "
                       f"{r['sure_wrong_of_sure']:.0%}" + (" (seen)" if r["seen"] else ""))
        lines.append(f"| {'+'.join(first['trained_on'])} (`{model}`) | " + " | ".join(out) + " |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m lgld.bench.microscopes", description=__doc__)
    p.add_argument("--model", type=parse_model, action="append", required=True,
                   help="MICROSCOPES=MODEL, e.g. pbc+lisc=m.onnx (repeat)")
    p.add_argument("--crops", type=parse_crops, action="append", default=[],
                   help="NAME=DIR[@SPLIT.json:PART]: single-cell crops of one microscope")
    p.add_argument("--fields", type=parse_fields, action="append", default=[],
                   help="NAME=DIR: whole fields with white-cell boxes and labels.csv")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    return p


def run(args: argparse.Namespace) -> int:
    tests = [*args.crops, *args.fields]
    if not tests:
        raise ValueError("give at least one --crops or --fields test set")
    rows = matrix(args.model, tests, args.threads)
    print(json.dumps(rows, indent=1) if args.json else format_table(rows, [t.name for t in tests]))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    return run_cli(parser.prog, run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
