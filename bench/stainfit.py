"""Fit a stain reference on the crops cell mode cuts: ``python -m lgld.bench.stainfit``.

``fit DIR --split-file SPLIT.json --part train -o REF.json``: every crop goes through the real
cell stage (detection, framing, white balance) exactly as :mod:`.celltypes` scores it; the
reference is the median of the crops' stains (:func:`.stainnorm.fit_reference`). ``montage``
writes a PNG of crops before (top) and after (bottom) normalisation, to look at.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from lgld.bench.cellmode import load_items
from lgld.bench.celltypes import add_stage_arguments, make_session
from lgld.bench.stainnorm import fit_reference, load_reference, normalise_bgr, save_reference
from lgld.runtime.core.cliutil import OneLineParser, run_cli
from lgld.runtime.core.preprocess import read_image


def stage_crops(args: argparse.Namespace) -> list[np.ndarray]:
    """The BGR crops cell mode would classify, for ``args.limit`` images spread evenly."""
    items = load_items(Path(args.data), args.split_file, args.part)
    if args.limit:
        items = items[:: max(1, len(items) // args.limit)][: args.limit]
    if not items:
        raise ValueError(f"no images in {args.data}")
    crops: list[np.ndarray] = []
    stage = make_session(args, record=crops).stage
    for path, _ in items:
        stage.process(read_image(path))
    if not crops:
        raise ValueError(f"no cell found in {len(items)} images of {args.data}")
    return crops


def fit(args: argparse.Namespace) -> int:
    crops = stage_crops(args)
    ref, used = fit_reference([np.ascontiguousarray(c[..., ::-1]) for c in crops])
    save_reference(ref, args.output, fitted_on=f"{used} of {len(crops)} cell-mode crops of "
                   f"{Path(args.data).name}" + (f", {args.part} part" if args.split_file else ""))
    print(f"{args.output}: nucleus {np.round(ref.vectors[0], 3).tolist()}, red-cell "
          f"{np.round(ref.vectors[1], 3).tolist()} (OD, RGB), 99th-percentile concentrations "
          f"{np.round(ref.max_concentrations, 3).tolist()}, from {used} of {len(crops)} crops")
    return 0


def montage(args: argparse.Namespace) -> int:
    reference = load_reference(args.reference)
    crops = stage_crops(args)[: args.count]
    after = [normalise_bgr(c, reference, args.stain_method) for c in crops]
    side = max(c.shape[0] for c in crops)
    tile = [cv2.resize(c, (side, side)) for c in crops]
    rows = [np.hstack(tile), np.hstack([cv2.resize(c, (side, side)) for c in after])]
    if not cv2.imwrite(str(args.output), np.vstack(rows)):
        raise OSError(f"cannot write {args.output}")
    print(f"{args.output}: {len(crops)} crops, before (top) and after (bottom)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m lgld.bench.stainfit", description=__doc__)
    sub = p.add_subparsers(dest="what", required=True)
    f = sub.add_parser("fit", help="fit a reference on cell-mode crops")
    m = sub.add_parser("montage", help="crops before and after normalisation, as a PNG")
    m.add_argument("reference", help="a reference written by fit")
    m.add_argument("--count", type=int, default=10, help="how many crops (default 10)")
    for q in (f, m):
        add_stage_arguments(q)
        q.add_argument("--split-file", help="lgld split.json; use its --part only")
        q.add_argument("--part", default="train")
        q.add_argument("--limit", type=int, default=0, help="at most N images, evenly spread")
        q.add_argument("-o", "--output", type=Path, required=True)
    return p


def run(args: argparse.Namespace) -> int:
    if args.what == "montage":
        args.limit = args.limit or args.count
        return montage(args)
    return fit(args)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    return run_cli(parser.prog, run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
