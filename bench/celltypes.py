"""Cell types on labelled images from a microscope, scored through cell mode itself.

``python -m lgld.bench.celltypes fields DIR`` scores whole fields laid out like BCCD
(``images/``, ``annotations/*.xml`` with ``WBC`` boxes, ``labels.csv`` with ``file,types``:
one type per image, or several separated by ``;`` in no particular order): every field goes
through the real :class:`~lgld.runtime.cells.stage.CellStage` (detection, framing, white
balance, one batched model call, the confidence gate) as a folder of images would in
``lgld-run --mode cells``. A detected whole cell that overlaps a labelled white-cell box
(IoU >= 0.3) is scored; where a field holds several labelled cells, the called and true types
are matched as multisets (their order does not follow the boxes).

``python -m lgld.bench.celltypes crops DIR`` scores single-cell crops
(``<class>/*.jpg``, optionally one part of an lgld split file): the detected cell nearest
the centre of each crop, as cell mode frames it.

``--stain-normalise REF.json`` re-stains every crop to a reference (:mod:`.stainnorm`, fitted
by :mod:`.stainfit`) before the model's own preprocessing: the measured ablation of stain
normalisation.

Both report the share of cells with the right type, macro F1, the calls shown as sure
(state ``ok``) that are wrong, and the differential error (total variation distance between
the true and the called class shares). Each folder is one count session of cell mode (a
:class:`~lgld.runtime.cells.session.CountSession`, as ``lgld-run --source images:``), with the
model's microscope check (core.domain) deciding which calls are shown as sure, exactly as in
cell mode; ``--no-domain-check`` leaves it out (the confidence gate alone).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lgld.bench.cellmode import iou, load_items, parse_diameter, voc_boxes
from lgld.bench.stainnorm import METHODS, Stains, load_reference, normalise_bgr
from lgld.runtime.cells.detect import FRAMINGS, DetectorSettings
from lgld.runtime.cells.session import CountSession
from lgld.runtime.cells.stage import CellStage
from lgld.runtime.cells.track import TrackerSettings
from lgld.runtime.config import CellsSection
from lgld.runtime.core.classifier import OnnxClassifier
from lgld.runtime.core.cliutil import OneLineParser, run_cli
from lgld.runtime.core.domain import DomainCheck, DomainReference
from lgld.runtime.core.preprocess import read_image
from lgld.runtime.core.zoo import resolve_model

MIN_IOU = 0.3


@dataclass
class Scored:
    """(true, called, state) per scored cell, and what could not be scored."""

    cells: list[tuple[str, str, str]] = field(default_factory=list)
    missed: int = 0  # labelled cells with no whole detection on them
    images: int = 0
    domain: dict | None = None  # the session's microscope check at the end

    def summary(self, classes: list[str]) -> dict:
        n = len(self.cells)
        if not n:
            raise ValueError("no cell could be scored")
        right = sum(t == c for t, c, _ in self.cells)
        sure = [(t, c) for t, c, s in self.cells if s == "ok"]
        sure_wrong = sum(t != c for t, c in sure)
        f1s = {}
        for k in classes:
            tp = sum(t == k and c == k for t, c, _ in self.cells)
            fp = sum(t != k and c == k for t, c, _ in self.cells)
            fn = sum(t == k and c != k for t, c, _ in self.cells)
            if tp + fn:  # classes absent from the truth are left out of the macro mean
                f1s[k] = 2 * tp / max(1, 2 * tp + fp + fn)
        true_share = Counter(t for t, _, _ in self.cells)
        called_share = Counter(c for _, c, _ in self.cells)
        tv = 0.5 * sum(abs(true_share[k] - called_share[k]) / n for k in classes)
        confusion = {t: dict(Counter(c for tt, c, _ in self.cells if tt == t))
                     for t in sorted(true_share)}
        return {
            "images": self.images, "cells": n, "missed": self.missed,
            "right_type": right / n,
            "macro_f1": float(np.mean(list(f1s.values()))), "f1": f1s,
            "sure": len(sure) / n,
            "unfamiliar": sum(s == "unfamiliar" for _, _, s in self.cells) / n,
            "microscope": self.domain,
            "sure_wrong_of_sure": sure_wrong / max(1, len(sure)),
            "sure_wrong_of_cells": sure_wrong / n,
            "right_of_sure": (len(sure) - sure_wrong) / max(1, len(sure)),
            "differential_tv": tv,
            "confusion": confusion,
        }


def read_labels(path: Path) -> dict[str, list[str]]:
    """labels.csv (file,types) -> file name -> list of types."""
    with open(path, newline="", encoding="utf-8") as fh:
        return {row["file"]: [t.strip() for t in row["types"].split(";") if t.strip()]
                for row in csv.DictReader(fh)}


class StainNormalised:
    """A classifier whose crops are stain-normalised (and/or recorded) before its own
    preprocessing; everything else is the wrapped classifier's."""

    def __init__(self, classifier: OnnxClassifier, reference: Stains | None,
                 method: str = "macenko", record: list[np.ndarray] | None = None) -> None:
        self.classifier, self.reference, self.method = classifier, reference, method
        self.record = record

    def __getattr__(self, name: str):
        return getattr(self.classifier, name)

    def prepare(self, crops: list[np.ndarray]) -> np.ndarray:
        if self.record is not None:
            self.record.extend(c.copy() for c in crops)
        if self.reference is not None:
            crops = [normalise_bgr(c, self.reference, self.method) for c in crops]
        return self.classifier.prepare(crops)


def make_session(args: argparse.Namespace,
                 record: list[np.ndarray] | None = None) -> CountSession:
    """Cell mode's stage and count session for a folder of images, with the model's
    microscope check as lgld-run builds it (no stored validations); ``record`` collects every
    crop the model is given."""
    stains = load_reference(args.stain_normalise) if args.stain_normalise else None
    classifier = OnnxClassifier(resolve_model(args.model), threads=args.threads)
    if stains is not None or record is not None:
        classifier = StainNormalised(classifier, stains, args.stain_method, record)
    tracker = TrackerSettings(min_confidence=args.min_confidence) if args.min_confidence \
        else None
    stage = CellStage(classifier, DetectorSettings(diameter_px=args.diameter,
                                                  framing=args.framing),
                      tracker, tracking=False)
    reference = classifier.info.domain
    domain = None if args.no_domain_check else DomainCheck(
        DomainReference.from_dict(reference) if reference else None,
        max(1, CellsSection.domain_cells))
    return CountSession(stage, domain=domain)


def classify(session: CountSession, image: np.ndarray, index: int) -> list[dict]:
    """One image through cell mode (prepare, then the session's classify and count)."""
    prepared = session.stage.prepare(image)
    return session.process(prepared, image, time.monotonic(), index).cells


def finish(out: Scored, session: CountSession) -> None:
    out.domain = session.count()["domain"]


def score_fields(args: argparse.Namespace) -> tuple[Scored, list[str]]:
    root = Path(args.data)
    labels = read_labels(root / "labels.csv")
    session = make_session(args)
    out = Scored()
    # one session over the folder; the measured scale carries over, as in lgld-run
    for index, (name, types) in enumerate(sorted(labels.items())):
        image = read_image(root / "images" / name)
        boxes = voc_boxes(root / "annotations" / (Path(name).stem + ".xml"))
        cells = [c for c in classify(session, image, index) if c["state"] != "partial"]
        on_boxes = [c for c in cells if any(iou(c["box"], b) >= MIN_IOU for b in boxes)]
        # one cell per labelled box at most: the detections that overlap a box best
        on_boxes = sorted(on_boxes, key=lambda c: -max(iou(c["box"], b) for b in boxes))
        on_boxes = on_boxes[: len(types)]
        out.images += 1
        out.missed += len(types) - len(on_boxes)
        truth = Counter(types)
        called = sorted(on_boxes, key=lambda c: c["class"] not in truth)  # matches first
        pending = list(types)
        for c in called:  # multiset matching: a right call takes its own type
            t = c["class"] if c["class"] in pending else pending[0]
            pending.remove(t)
            out.cells.append((t, c["class"], c["state"]))
    finish(out, session)
    return out, session.stage.classes


def score_crops(args: argparse.Namespace) -> tuple[Scored, list[str]]:
    items = load_items(Path(args.data), args.split_file, args.part)
    if args.limit:
        items = items[:: max(1, len(items) // args.limit)][: args.limit]
    session = make_session(args)
    out = Scored()
    for index, (path, label) in enumerate(items):  # one session, as lgld-run --source images:
        image = read_image(path)
        h, w = image.shape[:2]
        cells = classify(session, image, index)
        out.images += 1
        if not cells:
            out.missed += 1
            continue
        c = min(cells, key=lambda c: math.hypot((c["box"][0] + c["box"][2] - w) / 2,
                                                (c["box"][1] + c["box"][3] - h) / 2))
        out.cells.append((label, c["class"], c["state"]))
    finish(out, session)
    return out, session.stage.classes


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m lgld.bench.celltypes", description=__doc__)
    sub = p.add_subparsers(dest="what", required=True)
    f = sub.add_parser("fields", help="whole fields: images/, annotations/, labels.csv")
    c = sub.add_parser("crops", help="single-cell crops: <class>/*.jpg")
    c.add_argument("--split-file", help="lgld split.json; score its --part only")
    c.add_argument("--part", default="val")
    c.add_argument("--limit", type=int, default=0, help="at most N crops, evenly spread")
    for q in (f, c):
        add_stage_arguments(q)
        q.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def add_stage_arguments(q: argparse.ArgumentParser) -> None:
    """The data folder and the options of :func:`make_session`."""
    q.add_argument("data")
    q.add_argument("--model", default="wbc5")
    q.add_argument("--threads", type=int, default=1)
    q.add_argument("--diameter", type=parse_diameter,
                   default=CellsSection().diameter_range(),
                   help="white-cell diameter range LO,HI in pixels, or auto "
                        "(default: cell mode's)")
    q.add_argument("--framing", choices=FRAMINGS, default=CellsSection.framing,
                   help="what scales the crops (default: cell mode's)")
    q.add_argument("--min-confidence", type=float, default=0.0,
                   help="the confidence gate (default: cell mode's)")
    q.add_argument("--no-domain-check", action="store_true",
                   help="leave out the model's microscope check (confidence gate only)")
    q.add_argument("--stain-normalise", metavar="REF.json",
                   help="re-stain every crop to this reference (python -m lgld.bench.stainfit)")
    q.add_argument("--stain-method", choices=METHODS, default="macenko",
                   help="what --stain-normalise maps (default: macenko)")


def run(args: argparse.Namespace) -> int:
    scored, classes = (score_fields if args.what == "fields" else score_crops)(args)
    result = scored.summary(classes)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"{result['cells']} cells of {result['images']} images ({result['missed']} missed): "
          f"right type {result['right_type']:.1%}, macro F1 {result['macro_f1']:.3f}, "
          f"sure {result['sure']:.1%} (wrong: {result['sure_wrong_of_sure']:.1%} of sure, "
          f"{result['sure_wrong_of_cells']:.1%} of cells), "
          f"differential TV {result['differential_tv']:.3f}")
    micro = result["microscope"]
    if micro:
        print(f"  microscope check: {micro['state']}" + (f" (z {micro['z']})" if "z" in micro
                                                          else "")
              + f"; not sure as unfamiliar: {result['unfamiliar']:.1%} of cells")
    for t, row in result["confusion"].items():
        print(f"  {t:<11} -> " + ", ".join(f"{k} {v}" for k, v in sorted(row.items())))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    return run_cli(parser.prog, run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
