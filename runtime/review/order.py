"""Which counted cells to review first when the reviews will teach the model a new microscope.

Least confident first (the smallest margin between the model's two most likely classes: the
cells a label changes most), balanced over the classes the model called: the classes take
turns, so the first ten reviews are not ten neutrophils. Measured against a random order on
BCCD-dev in docs/lab-loop.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def margins(probs: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 probability of each row (0 = a coin toss between two classes)."""
    top = np.sort(np.asarray(probs, np.float64), axis=1)
    return top[:, -1] - top[:, -2]


def review_order(probs: Sequence[Sequence[float]] | np.ndarray) -> list[int]:
    """Indices of the cells in review order: classes (as called, most frequent first) take
    turns, each giving its least confident cell not yet taken."""
    p = np.asarray(probs, np.float64)
    if p.ndim != 2 or len(p) == 0:
        return []
    called = p.argmax(axis=1)
    m = margins(p) if p.shape[1] > 1 else np.zeros(len(p))
    queues = {k: sorted(np.flatnonzero(called == k).tolist(), key=lambda i: (m[i], i))
              for k in np.unique(called)}
    classes = sorted(queues, key=lambda k: (-len(queues[k]), k))
    order: list[int] = []
    while len(order) < len(p):
        for k in classes:
            if queues[k]:
                order.append(queues[k].pop(0))
    return order
