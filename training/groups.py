"""Group-aware splits for a lab data set: every crop of one counted cell in one part.

A cell seen in 40 frames may give several crops (and several sessions may count the same
slide); crops of one cell in both train and test would make the held-out numbers a memory
test. ``lgld-dataset`` writes each image's group (session and track) into the data set's
manifest; :func:`group_split` keeps each group (and each set of byte-identical images) whole,
stratified by class and seeded like :func:`lgld.training.data.make_split`.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Collection, Sequence

from lgld.lab.manifest import (
    ManifestError,
    image_groups,
    model_labelled,
    read_manifest,
)
from lgld.training.data import DataError, Discovered, Item, Split


def manifest_groups(found: Discovered) -> tuple[dict[str, str], set[str]] | None:
    """From the folder's lgld-dataset manifest (None without one): image path -> group id, and
    the paths labelled by the model rather than a reviewer (kept to the train part)."""
    try:
        manifest = read_manifest(found.root)
    except ManifestError as exc:
        raise DataError(str(exc)) from None
    return None if manifest is None else (image_groups(manifest), model_labelled(manifest))


def _whole_groups(items: Sequence[Item], groups: dict[str, str]) -> list[list[Item]]:
    """Items joined when they share a group id or a sha256 (union-find), in first-seen order."""
    parent = list(range(len(items)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[tuple[str, str], int] = {}
    for i, it in enumerate(items):
        for key in (("group", groups.get(it.path, f"file:{it.path}")), ("sha", it.sha256)):
            if key in first:
                parent[root(i)] = root(first[key])
            else:
                first[key] = i
    joined: dict[int, list[Item]] = defaultdict(list)
    for i, it in enumerate(items):
        joined[root(i)].append(it)
    return list(joined.values())


def group_split(
    found: Discovered, groups: dict[str, str], val_fraction: float = 0.1,
    test_fraction: float = 0.1, seed: int = 42, classes: Sequence[str] | None = None,
    train_only: Collection[str] = (),
) -> Split:
    """Stratified, seeded split of whole groups; ``classes`` (e.g. the --init model's) may name
    classes the data lacks, and then the split is made over the classes present. Groups with
    an image in ``train_only`` (model-labelled) go to train: val and test judge on reviews."""
    if not (0 < val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError(f"bad fractions: val {val_fraction}, test {test_fraction}")
    classes = list(classes) if classes is not None else list(found.classes)
    unknown = sorted(set(found.classes) - set(classes))
    if unknown:
        raise DataError(f"data classes {unknown} are not among the model's classes {classes}")
    items = found.pool + found.test
    whole = _whole_groups(items, groups)
    by_class: dict[str, list[list[Item]]] = defaultdict(list)
    parts: dict[str, list[Item]] = {"train": [], "val": [], "test": []}
    train_only = set(train_only)
    for g in whole:
        if any(it.path in train_only for it in g):
            parts["train"].extend(g)
        else:
            by_class[g[0].label].append(g)
    rng = random.Random(seed)
    for cls in sorted(by_class):
        cls_groups = sorted(by_class[cls], key=lambda g: g[0].path)
        rng.shuffle(cls_groups)
        n = len(cls_groups)
        n_val = max(1, round(n * val_fraction))
        n_test = max(1, round(n * test_fraction)) if test_fraction else 0
        if n - n_val - n_test < 1:
            raise DataError(f"class {cls!r} has too few reviewed cells ({n}) to split into "
                            "train, val" + (" and test" if test_fraction else ""))
        for i, g in enumerate(cls_groups):
            part = "val" if i < n_val else "test" if i < n_val + n_test else "train"
            parts[part].extend(g)
    if not parts["test"]:
        del parts["test"]
    for v in parts.values():
        v.sort(key=lambda it: (it.label, it.path))
    return Split(
        root=found.root, layout=found.layout, classes=classes, seed=seed, parts=parts,
        duplicates=len(items) - len({it.sha256 for it in items}),
        fractions={"val": val_fraction, "test": test_fraction},
    )
