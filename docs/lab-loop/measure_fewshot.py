"""Few reviewed cells on a new microscope: learning curves, two-fold (docs/lab-loop.md).

    python docs/lab-loop/measure_fewshot.py MODEL.pt LOG.jsonl FIELDS_DIR WBC5 SPLIT.json \
        --cache feats/ [--starts none,adabn0.3,tent10] [--seeds 3] [--json out.json]

LOG.jsonl, FIELDS_DIR and the folds are measure_adapt.py's (fields alternate between two
folds; each fold adapts on its own cells and is scored on the other's labelled cells; right
cells summed over both folds). The network runs once per (start, fold): the pooled features
of the fold's own cells (four quarter turns), of the other fold's cells, of 40 PBC training
crops (mixed in) and 50 PBC validation crops (the cost on PBC) are cached in --cache, and
every head below is fitted on them in seconds:

* starts (unsupervised, on the fold's unlabelled cells): ``none``, ``adabn0.3`` (statistics
  blend 0.3), ``tent10`` (10 TENT steps on the BatchNorm scales and shifts);
* ``fine-tune``: ``lgld-adapt --reviewed`` (training.finetune.finetune: Adam from the trained
  layer, L2 anchor, PBC crops mixed in 1:1);
* ``logreg``: training.finetune.refit_head, L2 0.1 towards the trained layer, classes
  without reviewed cells kept (its class-balanced form scored lower: the cells are mostly
  neutrophils);
* ``pseudo``: no labels, the layer refitted on the fold's own confident calls (>= 0.6);
* 10 / 25 / all reviewed cells, review.order's order or random (--seeds orders).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure_adapt import labelled_cells  # noqa: E402

from lgld.models.checkpoint import load_checkpoint  # noqa: E402
from lgld.runtime.review.order import review_order  # noqa: E402
from lgld.training.adapt import adabn, load_inputs, tent  # noqa: E402
from lgld.training.finetune import (  # noqa: E402
    fit_classifier,
    pooled_features,
    quarter_turns,
    refit_head,
)

STARTS = {"none": (0.0, 0), "adabn0.3": (0.3, 0), "tent10": (0.0, 10), "adabn0.5": (0.5, 0)}
SIZES = (10, 25, 999)
N_MIX, N_PBC = 40, 50


def extract(a: argparse.Namespace, starts: list[str]) -> None:
    """Cache each start's features per fold (the slow part: the network's forward passes)."""
    todo = [s for s in starts if not (Path(a.cache) / f"{s}.npz").is_file()]
    if not todo:
        return
    ckpt = load_checkpoint(a.model)
    spec = ckpt.preprocess
    cells = labelled_cells(Path(a.log), Path(a.fields), ckpt.classes)
    x = load_inputs([c["crop"] for c in cells], spec)
    fold = np.array([c["fold"] for c in cells])
    split = json.loads(Path(a.split).read_text())["splits"]
    rng = np.random.default_rng(0)
    draw = [rng.choice(len(split[k]), 100, replace=False) for k in ("train", "val")]
    mix = [split["train"][i] for i in draw[0][:N_MIX]]
    pbc = [split["val"][i] for i in draw[1][:N_PBC]]
    mix_x = load_inputs([Path(a.wbc5) / e["path"] for e in mix], spec)
    pbc_x = load_inputs([Path(a.wbc5) / e["path"] for e in pbc], spec)
    base = ckpt.build_model().eval()
    for start in todo:
        out = {"y": np.array([c["label"] for c in cells]), "fold": fold,
               "mix_y": np.array([ckpt.classes.index(e["label"]) for e in mix]),
               "pbc_y": np.array([ckpt.classes.index(e["label"]) for e in pbc])}
        blend, steps = STARTS[start]
        for f in (0, 1):
            m = copy.deepcopy(base)
            own = x[fold == f]
            if blend:
                adabn(m, own, blend)
            if steps:
                tent(m, own, steps=steps)
            cf = np.zeros((4, len(x), m.head[-1].in_features), np.float32)
            cf[:, fold == f] = pooled_features(m, quarter_turns(own)).numpy().reshape(
                4, len(own), -1)
            cf[0, fold != f] = pooled_features(m, x[fold != f]).numpy()
            out[f"{f}_cells"] = cf
            out[f"{f}_mix"] = pooled_features(m, mix_x).numpy()
            out[f"{f}_pbc"] = pooled_features(m, pbc_x).numpy()
            out[f"{f}_W"] = m.head[-1].weight.detach().numpy()
            out[f"{f}_b"] = m.head[-1].bias.detach().numpy()
        Path(a.cache).mkdir(parents=True, exist_ok=True)
        np.savez(Path(a.cache) / f"{start}.npz", **out)
        print(f"features of {start}: {time.time() - a.t0:.0f} s", flush=True)


def linear_of(w: np.ndarray, b: np.ndarray) -> nn.Linear:
    lin = nn.Linear(w.shape[1], w.shape[0])
    lin.load_state_dict({"weight": torch.tensor(w), "bias": torch.tensor(b)})
    return lin


def fine_tune(lin, feats, y, mix_f, mix_y):
    n = min(len(y) // 4, len(mix_y))  # mix ratio 0.5: as many PBC crops as reviewed cells
    fit_classifier(lin, torch.cat([feats, mix_f[:n].repeat(4, 1)]),
                   torch.cat([y, mix_y[:n].repeat(4)]))


METHODS = {
    "fine-tune": fine_tune,
    "logreg": lambda lin, f, y, *_: refit_head(lin, f, y, l2=0.1, balanced=False),
}


def pseudo(lin: nn.Linear, feats: torch.Tensor, threshold: float = 0.6) -> None:
    with torch.no_grad():
        conf, calls = lin(feats).softmax(1).max(1)
    keep = conf >= threshold
    if keep.any():
        refit_head(lin, feats[keep], calls[keep], l2=0.1, balanced=False)


def wilson(right: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson interval of a proportion."""
    p, d = right / n, 1 + z * z / n
    mid, half = (p + z * z / (2 * n)) / d, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return mid - half, mid + half


class Tally:
    """Right cells (all and per true class) and PBC crops, summed over folds and seeds (runs:
    the seeds, counted on fold 0)."""

    def __init__(self) -> None:
        self.rows: dict[tuple, np.ndarray] = {}

    def add(self, key: tuple, fold: int, lin: nn.Linear, test_f, test_y, pbc_f,
            pbc_y) -> None:
        with torch.no_grad():
            ok = (lin(test_f).argmax(1) == test_y).numpy()
            pbc = int((lin(pbc_f).argmax(1) == pbc_y).sum())
        per = np.bincount(test_y.numpy(), weights=ok, minlength=lin.out_features)
        row = np.concatenate([[ok.sum(), len(ok), pbc, len(pbc_y), fold == 0], per])
        self.rows[key] = self.rows.get(key, 0) + row


def score_start(start: str, d: dict, seeds: int, tally: Tally) -> None:
    y, fold = d["y"], d["fold"]
    for f in (0, 1):
        own = np.flatnonzero((fold == f) & (y >= 0))
        test = np.flatnonzero((fold != f) & (y >= 0))
        cells = torch.tensor(d[f"{f}_cells"])
        test_f, test_y = cells[0][test], torch.tensor(y[test])
        pbc = (torch.tensor(d[f"{f}_pbc"]), torch.tensor(d["pbc_y"]))
        mix = (torch.tensor(d[f"{f}_mix"]), torch.tensor(d["mix_y"]))
        w, b = d[f"{f}_W"], d[f"{f}_b"]
        tally.add((start, "as is", 0, ""), f, linear_of(w, b), test_f, test_y, *pbc)
        lin = linear_of(w, b)
        pseudo(lin, torch.cat(list(cells[:, fold == f])))
        tally.add((start, "pseudo", 0, ""), f, lin, test_f, test_y, *pbc)
        with torch.no_grad():
            probs = linear_of(w, b)(cells[0][own]).softmax(1).numpy()
        orders = {"ours": review_order(probs)}
        orders |= {f"random {s}": np.random.default_rng(s).permutation(len(own)).tolist()
                   for s in range(seeds)}
        for name, method in METHODS.items():
            for n in SIZES:
                for o, order in orders.items():
                    pick = own[np.asarray(order[:n])]
                    feats = torch.cat([cells[k][pick] for k in range(4)])
                    lin = linear_of(w, b)
                    method(lin, feats, torch.tensor(np.tile(y[pick], 4)), *mix)
                    key = (start, name, min(n, 99), o.split()[0])
                    tally.add(key, f, lin, test_f, test_y, *pbc)


def report(tally: Tally, classes: list[str]) -> dict:
    out = {}
    for key, r in tally.rows.items():
        right, n, pbc, pn, runs = (float(v) for v in r[:5])
        lo, hi = wilson(int(round(right / runs)), int(n / runs))
        name = " / ".join(str(k) for k in key if k != "")
        out[name] = {"right": right / runs, "scored": n / runs, "accuracy": right / n,
                     "ci95": [round(lo, 3), round(hi, 3)], "pbc": pbc / pn, "runs": runs,
                     "per_class_right": dict(zip(classes, (r[5:] / runs).round(1).tolist(),
                                                 strict=True))}
        print(f"{name}: {100 * right / n:.1f}% (95% CI {100 * lo:.0f}-{100 * hi:.0f}), "
              f"PBC {100 * pbc / pn:.0f}%", flush=True)
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name in ("model", "log", "fields", "wbc5", "split"):
        p.add_argument(name)
    p.add_argument("--cache", required=True, help="folder of cached features (made once)")
    p.add_argument("--starts", default="none,adabn0.3,tent10")
    p.add_argument("--seeds", type=int, default=3, help="random review orders (default 3)")
    p.add_argument("--json")
    a = p.parse_args(argv)
    a.t0 = time.time()
    starts = [s.strip() for s in a.starts.split(",")]
    if unknown := [s for s in starts if s not in STARTS]:
        p.error(f"unknown --starts {unknown}; choose from {list(STARTS)}")
    torch.manual_seed(0)
    torch.set_num_threads(1)
    extract(a, starts)
    tally = Tally()
    for start in starts:
        score_start(start, dict(np.load(Path(a.cache) / f"{start}.npz")), a.seeds, tally)
    classes = load_checkpoint(a.model).classes
    out = report(tally, classes)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
