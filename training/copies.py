"""Group the shifted, flipped and re-framed copies of one cell, and split by cell.

Some public data sets (LISC) hold a few hundred distinct cells as many crops each: shifted,
re-framed, flipped or rotated copies. A split by file would put copies of one cell in train
and val, and validation would measure memory. :func:`copy_groups` joins images whose central
stained region looks alike under any of the 8 flips/rotations (normalised cross-correlation
of a small grey patch around the most saturated pixels, the nucleus), transitively. Distinct
cells that look much alike may be joined too: the safe direction (a smaller validation set,
never a leak);
:func:`split_by_copies` then splits whole groups with :func:`lgld.training.groups.group_split`.

``python -m lgld.training.copies DATA -o split.json`` writes such a split file for
``lgld-train --split-file`` or ``--mix-data``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from lgld.runtime.core.cliutil import OneLineParser, run_cli
from lgld.runtime.core.preprocess import read_image
from lgld.training.data import DataError, Discovered, Split, discover
from lgld.training.groups import group_split

#: Copies of one LISC cell correlate above this; 0.85 gives about 250 cells of 1,287 crops,
#: the number the data set's authors give.
SAME_CELL = 0.85
PATCH = 24  # descriptor side, pixels
WINDOW = 128  # the window around the nucleus that is described, pixels of the image


def descriptor(image: np.ndarray) -> np.ndarray:
    """(8, PATCH*PATCH) unit vectors: the grey window around the nucleus in each orientation."""
    sat = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)[:, :, 1]
    ys, xs = np.nonzero(sat >= np.percentile(sat, 90))
    cy, cx = int(np.median(ys)), int(np.median(xs))
    half = WINDOW // 2
    padded = cv2.copyMakeBorder(image, half, half, half, half, cv2.BORDER_REFLECT)
    window = cv2.cvtColor(padded[cy : cy + WINDOW, cx : cx + WINDOW], cv2.COLOR_BGR2GRAY)
    patch = cv2.resize(window, (PATCH, PATCH), interpolation=cv2.INTER_AREA).astype(np.float32)
    views = []
    for k in range(4):
        for v in (patch, patch[:, ::-1]):
            x = np.rot90(v, k).ravel()
            x = x - x.mean()
            views.append(x / (np.linalg.norm(x) + 1e-6))
    return np.stack(views)


def _components(n: int, pairs) -> list[int]:
    """Union-find: each of n nodes' component root, given the joined (i, j) pairs."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        parent[root(int(i))] = root(int(j))
    return [root(i) for i in range(n)]


def copy_groups(found: Discovered, threshold: float = SAME_CELL) -> dict[str, str]:
    """Image path (relative to the data root) -> group id; copies share a group (per class)."""
    groups: dict[str, str] = {}
    for cls in found.classes:
        items = [it for it in found.pool + found.test if it.label == cls]
        if not items:
            continue
        d = np.stack([descriptor(read_image(found.root / it.path)) for it in items])
        sim = np.einsum("nd,mkd->nmk", d[:, 0], d).max(axis=-1)
        roots = _components(len(items), zip(*np.nonzero(np.triu(sim, 1) > threshold),
                                             strict=True))
        for i, it in enumerate(items):
            groups[it.path] = f"{cls}/{items[roots[i]].path}"
    return groups


def split_by_copies(data: str | Path, val_fraction: float = 0.1, test_fraction: float = 0.1,
                    seed: int = 42, threshold: float = SAME_CELL) -> tuple[Split, int]:
    """A seeded, stratified split of whole copy groups, and the number of groups."""
    found = discover(data)
    groups = copy_groups(found, threshold)
    return (group_split(found, groups, val_fraction, test_fraction, seed),
            len(set(groups.values())))


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="python -m lgld.training.copies", description=__doc__.split("\n\n")[0])
    p.add_argument("data", help="a <class>/*.jpg folder")
    p.add_argument("-o", "--output", required=True, help="split file to write")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--test-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threshold", type=float, default=SAME_CELL)
    args = p.parse_args(argv)

    def run(a: argparse.Namespace) -> int:
        split, n = split_by_copies(a.data, a.val_fraction, a.test_fraction, a.seed, a.threshold)
        split.save(a.output)
        counts = ", ".join(f"{k} {len(v)}" for k, v in split.parts.items())
        print(f"{n} cells in {sum(len(v) for v in split.parts.values())} images; {counts}; "
              f"written to {a.output}")
        return 0

    return run_cli(p.prog, run, args, expected=(DataError, ValueError, OSError))


if __name__ == "__main__":
    sys.exit(main())
