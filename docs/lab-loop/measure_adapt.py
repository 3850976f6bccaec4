"""Adaptation to a new microscope, measured two-fold on labelled fields (docs/lab-loop.md).

    python docs/lab-loop/measure_adapt.py MODEL.pt LOG.jsonl FIELDS_DIR WBC5 SPLIT.json \
        [--json out.json] [--quick]

LOG.jsonl: a cell-mode count of FIELDS_DIR's images with crops saved (lgld-run --mode cells
--source images:FIELDS_DIR/images, [http] snapshot_dir); its last session is used. Each
counted cell gets its image's type from FIELDS_DIR/labels.csv as review_from_labels.py
gives it. The fields are split in two folds by image (alternate names); each fold adapts on
its own cells and is scored on the other fold's labelled cells; right and scored cells are
summed over both folds. Measured:

* unsupervised: AdaBN blends 0.3 / 0.5 / 1.0, and blend 0.5 + TENT, against the model as is;
* reviewed cells: 10 / 25 / 50 / 100 cells (capped by the fold's labelled cells), picked in
  review.order's order or at random (3 seeds), the classifier layer fitted as
  ``lgld-adapt --reviewed`` does (training.finetune) on the model or on its best unsupervised
  adaptation, with PBC training crops mixed in (mix ratio 0.5);
* the mix-ratio trade-off: all of a fold's labelled cells, mix ratio 0 / 0.5 / 0.8, accuracy
  on the other fold and on PBC validation crops (--pbc, default 60).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from review_from_labels import field_truth, frame_files  # noqa: E402

from lgld.models.checkpoint import load_checkpoint  # noqa: E402
from lgld.runtime.core.countlog import read_log  # noqa: E402
from lgld.runtime.review.order import review_order  # noqa: E402
from lgld.training.adapt import adabn, load_inputs, tent  # noqa: E402
from lgld.training.finetune import fit_classifier, pooled_features, quarter_turns  # noqa: E402

SIZES = (10, 25, 50, 100)


def labelled_cells(log_path: Path, fields: Path, classes: list[str]) -> list[dict]:
    """Counted cells with a crop: image, fold, label index (or -1 when unknown)."""
    session = read_log(log_path).get()
    truth = field_truth(log_path, fields)
    files = frame_files(log_path)
    images = sorted({files.get((session.id, c.frame)) for c in session.cells} - {None})
    fold = {name: i % 2 for i, name in enumerate(images)}
    out = []
    for c in session.cells:
        name = files.get((session.id, c.frame))
        label = truth.get(c.track)
        if name is None or not c.crop or label is None:
            continue
        out.append({"crop": log_path.resolve().parent / c.crop, "fold": fold[name],
                    "label": classes.index(label) if label in classes else -1})
    return out


def rate(linear, feats, y) -> tuple[int, int]:
    with torch.no_grad():
        return int((linear(feats).argmax(1).numpy() == y).sum()), len(y)


CONFIGS = {"none": (0.0, 0), "adabn 0.3": (0.3, 0), "adabn 0.5": (0.5, 0),
           "adabn 1.0": (1.0, 0), "adabn 0.5 + tent 10": (0.5, 10)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name in ("model", "log", "fields", "wbc5", "split"):
        p.add_argument(name)
    p.add_argument("--json")
    p.add_argument("--pbc", type=int, default=60, help="PBC val crops scored (default 60)")
    p.add_argument("--mix-pool", type=int, default=150, help="PBC train crops to mix from")
    p.add_argument("--seeds", type=int, default=3, help="random review orders (default 3)")
    p.add_argument("--starts", default="",
                   help="comma-separated unsupervised configurations the reviewed-cell runs "
                   "start from (default: none and the best one measured)")
    p.add_argument("--no-sweep", action="store_true",
                   help="skip the unsupervised sweep (with --starts)")
    return p


class Study:
    """The model, the labelled cells in two folds, the PBC crops, and the results so far."""

    def __init__(self, a: argparse.Namespace) -> None:
        self.t0 = time.time()
        ckpt = load_checkpoint(a.model)
        self.base = ckpt.build_model()
        spec = ckpt.preprocess
        cells = labelled_cells(Path(a.log), Path(a.fields), ckpt.classes)
        self.x_all = load_inputs([c["crop"] for c in cells], spec)
        self.fold = np.array([c["fold"] for c in cells])
        self.y_all = np.array([c["label"] for c in cells])
        split = json.loads(Path(a.split).read_text())["splits"]
        rng = np.random.default_rng(0)
        train = split["train"]
        pick = rng.choice(len(train), a.mix_pool, replace=False)
        self.mix_x = load_inputs([Path(a.wbc5) / train[i]["path"] for i in pick], spec)
        self.mix_y = torch.tensor([ckpt.classes.index(train[i]["label"]) for i in pick])
        val = [split["val"][i] for i in rng.choice(len(split["val"]), a.pbc, replace=False)]
        self.pbc_x = load_inputs([Path(a.wbc5) / e["path"] for e in val], spec)
        self.pbc_y = np.array([ckpt.classes.index(e["label"]) for e in val])
        self.out: dict = {
            "model": str(a.model), "cells": len(cells),
            "labelled_per_fold": [int(((self.fold == f) & (self.y_all >= 0)).sum())
                                  for f in (0, 1)],
            "pbc_val_scored": a.pbc, "results": {}}

    def log_result(self, name: str, right: int, n: int, pr: int = 0, pn: int = 0) -> None:
        res = {"right": right, "scored": n, "accuracy": round(right / n, 4)}
        if pn:
            res["pbc_accuracy"] = round(pr / pn, 4)
        self.out["results"][name] = res
        print(f"{name}: {right}/{n} = {100 * right / n:.1f}%"
              + (f"  PBC {100 * pr / pn:.1f}%" if pn else "")
              + f"  [{time.time() - self.t0:.0f} s]", flush=True)

    def adapted(self, f: int, blend: float, steps: int):
        m = copy.deepcopy(self.base)
        if blend or steps:
            adabn(m, self.x_all[self.fold == f], blend)
            if steps:
                tent(m, self.x_all[self.fold == f], steps=steps)
        return m

    def sweep(self) -> str:
        """Unsupervised: adapt on one fold, score the other (and the PBC crops); the best."""
        for name, (blend, steps) in CONFIGS.items():
            tot = [0, 0, 0, 0]
            for f in (0, 1):
                m = self.adapted(f, blend, steps)
                test = (self.fold != f) & (self.y_all >= 0)
                r = rate(m.head[-1], pooled_features(m, self.x_all[test]), self.y_all[test])
                q = rate(m.head[-1], pooled_features(m, self.pbc_x), self.pbc_y)
                tot = [tot[0] + r[0], tot[1] + r[1], tot[2] + q[0], tot[3] + q[1]]
            self.log_result(name, *tot)
        best = max(CONFIGS, key=lambda k: self.out["results"][k]["accuracy"])
        self.out["best_unsupervised"] = best
        return best

    def fold_runs(self, start: str, f: int, sizes: list[int], available: int, seeds: int,
                  curves: dict[tuple, list]) -> None:
        """Reviewed cells of fold f: features once, then only the last layer is fitted."""
        m = self.adapted(f, *CONFIGS[start])
        own = np.flatnonzero((self.fold == f) & (self.y_all >= 0))
        test = np.flatnonzero((self.fold != f) & (self.y_all >= 0))
        own_f = pooled_features(m, quarter_turns(self.x_all[own]))  # view-major, 4 views
        test_f = pooled_features(m, self.x_all[test])
        mix_f = pooled_features(m, self.mix_x)
        pbc_f = pooled_features(m, self.pbc_x)
        with torch.no_grad():
            probs = m.head[-1](own_f[: len(own)]).softmax(1).numpy()
        orders = {"ours": review_order(probs)}
        for s in range(seeds):
            orders[f"random {s}"] = np.random.default_rng(s).permutation(len(own)).tolist()
        runs = [(n, o, 0.5) for n in sizes for o in orders]
        runs += [(available, "ours", r) for r in (0.0, 0.8)]
        for n, o, ratio in runs:
            chosen = np.asarray(orders[o][:n])
            idx = np.concatenate([chosen + k * len(own) for k in range(4)])
            feats = own_f[idx]
            labels = torch.from_numpy(np.tile(self.y_all[own][chosen], 4))
            n_mix = int(round(n * ratio / (1 - ratio)))
            if n_mix:
                feats = torch.cat([feats, mix_f[:n_mix].repeat(4, 1)])
                labels = torch.cat([labels, self.mix_y[:n_mix].repeat(4)])
            linear = copy.deepcopy(m.head[-1])
            fit_classifier(linear, feats, labels)
            r, q = rate(linear, test_f, self.y_all[test]), rate(linear, pbc_f, self.pbc_y)
            acc = curves.setdefault((start, n, o, ratio), [0, 0, 0, 0])
            curves[(start, n, o, ratio)] = [acc[0] + r[0], acc[1] + r[1], acc[2] + q[0],
                                            acc[3] + q[1]]

    def reviewed(self, starts: list[str], seeds: int) -> None:
        """The learning curves over both folds, and the mean of the random orders."""
        available = min(self.out["labelled_per_fold"])
        sizes = sorted({min(s, available) for s in SIZES})
        curves: dict[tuple, list] = {}
        for start in starts:
            for f in (0, 1):
                self.fold_runs(start, f, sizes, available, seeds, curves)
        for (start, size, order, ratio), (r, n, pr, pn) in curves.items():
            self.log_result(f"reviewed {size} {order} mix {ratio} from {start}", r, n, pr, pn)
        results = self.out["results"]
        for start in {k[0] for k in curves}:
            for n in sizes:
                accs = [results[f"reviewed {n} random {s} mix 0.5 from {start}"]["accuracy"]
                        for s in range(seeds)]
                results[f"reviewed {n} random mean mix 0.5 from {start}"] = {
                    "accuracy": round(float(np.mean(accs)), 4)}


def main(argv: list[str]) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    starts = [s.strip() for s in a.starts.split(",")] if a.starts else []
    unknown = [s for s in starts if s not in CONFIGS]
    if unknown:
        p.error(f"unknown --starts {unknown}; choose from {list(CONFIGS)}")
    if a.no_sweep and not starts:
        p.error("--no-sweep needs --starts")
    torch.manual_seed(0)
    torch.set_num_threads(1)
    study = Study(a)
    if not a.no_sweep:
        best = study.sweep()
        starts = starts or (["none"] + ([best] if best != "none" else []))
    study.reviewed(starts, a.seeds)
    study.out["seconds"] = round(time.time() - study.t0, 1)
    if a.json:
        Path(a.json).write_text(json.dumps(study.out, indent=1) + "\n")
    return 0

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
