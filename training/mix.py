"""Mix another data set (e.g. the shipped model's training data) into a split's train part.

Fine-tuning on a few dozen of the lab's cells alone would let the model forget what it knew;
mixing in some of its original training images keeps every class present. Only the train
part grows: val and test stay the lab's own cells, so model selection and the comparison are
about the lab's microscope. The mixed images are recorded with absolute paths (the split file
stays a complete list of what was trained on).
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

from lgld.training.data import DataError, Item, Split, discover, load_split


def mix_pool(source: str | Path) -> list[Item]:
    """The images to draw from: a data folder (all of it; a raabin folder's Train/) or a
    split file (its train part, so the source's own val/test images stay out)."""
    source = Path(source)
    if source.suffix == ".json":
        split = load_split(source)
        if "train" not in split.parts:
            raise DataError(f"{source} has no train part")
        root, items = split.root, split.parts["train"]
    else:
        found = discover(source)
        root, items = found.root, found.pool
    return [Item(str((root / it.path).resolve()), it.label, it.sha256) for it in items]


def mixed_count(lab_train: int, ratio: float) -> int:
    """Images to mix in so that they make up ``ratio`` of the train part."""
    if not 0 <= ratio < 1:
        raise DataError(f"--mix-ratio must be within [0, 1), got {ratio}")
    return round(lab_train * ratio / (1 - ratio))


def mix_into(split: Split, pool: list[Item], ratio: float, seed: int) -> tuple[Split, dict]:
    """The split with mixed-in images added to its train part (equal numbers per class, as far
    as the pool has them), and a summary of what was mixed in."""
    unknown = sorted({it.label for it in pool} - set(split.classes))
    if unknown:
        raise DataError(f"--mix-data classes {unknown} are not among the model's classes "
                        f"{split.classes}")
    held_out = {it.sha256 for part, items in split.parts.items() if part != "train"
                for it in items}
    by_class: dict[str, list[Item]] = defaultdict(list)
    for it in sorted(pool, key=lambda it: it.path):
        if it.sha256 not in held_out:
            by_class[it.label].append(it)
    want = mixed_count(len(split.parts["train"]), ratio)
    rng = random.Random(seed)
    for items in by_class.values():
        rng.shuffle(items)
    chosen: list[Item] = []
    classes = sorted(by_class)
    while len(chosen) < want and any(by_class.values()):  # round robin over classes
        for cls in classes:
            if by_class[cls] and len(chosen) < want:
                chosen.append(by_class[cls].pop())
    parts = dict(split.parts)
    parts["train"] = sorted(parts["train"] + chosen, key=lambda it: (it.label, it.path))
    counts: dict[str, int] = defaultdict(int)
    for it in chosen:
        counts[it.label] += 1
    summary = {"ratio": ratio, "requested": want, "images": len(chosen),
               "per_class": dict(sorted(counts.items()))}
    mixed = Split(root=split.root, layout=split.layout, classes=split.classes, seed=split.seed,
                  parts=parts, duplicates=split.duplicates, fractions=split.fractions)
    return mixed, summary
