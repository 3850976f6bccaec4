"""Data layouts, content-hashed duplicate-free stratified splits, and split files.

Layouts (class names always come from folder names, sorted):

* ``all``: the Kaggle ALL layout, ``Original/<class>/*`` or ``<class>/*`` directly.
* ``raabin``: the Raabin-WBC layout, ``Train/<class>/*`` plus a separate ``TestA/<class>/*``.
* ``imagefolder``: any ``<class>/*`` folder tree (one level).

Splits follow the paper: stratified and seeded, 80:10:10 from one folder, or 80:20 train/val
when a separate test folder exists. Byte-identical images are grouped by sha256 and a group
never spans two splits.
"""

from __future__ import annotations

import json
import os
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from lgld.runtime.core.files import IMAGE_SUFFIXES, file_sha256, write_atomic

LAYOUTS = ("auto", "imagefolder", "all", "raabin")
SPLIT_FORMAT = "lgld-split"


class DataError(ValueError):
    """The data folder, its layout or a split file is unusable."""


@dataclass(frozen=True)
class Item:
    """One labelled image: path relative to the data root, class name, content hash."""

    path: str
    label: str
    sha256: str


@dataclass
class Discovered:
    """What a data folder holds: classes, the pool to split, and a separate test set if any."""

    root: Path
    layout: str
    classes: list[str]
    pool: list[Item]
    test: list[Item] = field(default_factory=list)


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))
    )


def detect_layout(root: Path) -> str:
    """Guess the layout of a data folder (see module docstring)."""
    names = {p.name for p in _class_dirs(root)}
    if "Train" in names and ({"TestA", "Test"} & names):
        return "raabin"
    if "Original" in names:
        return "all"
    return "imagefolder"


def _scan_classes(folder: Path, root: Path, what: str) -> dict[str, list[Item]]:
    dirs = _class_dirs(folder)
    if not dirs:
        raise DataError(f"no class folders in {folder} ({what})")
    out: dict[str, list[Item]] = {}
    for d in dirs:
        files = _image_files(d)
        if not files:
            raise DataError(f"class folder {d} has no images")
        out[d.name] = [
            Item(str(p.relative_to(root)), d.name, file_sha256(p)) for p in files
        ]
    return out


def discover(root: str | os.PathLike, layout: str = "auto") -> Discovered:
    """Scan a data folder according to ``layout``; raise DataError with a one-line reason."""
    root = Path(root)
    if layout not in LAYOUTS:
        raise DataError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    if layout == "auto":
        layout = detect_layout(root)
    test: dict[str, list[Item]] = {}
    if layout == "raabin":
        if not (root / "Train").is_dir():
            raise DataError(f"raabin layout needs {root}/Train/<class>/")
        pool = _scan_classes(root / "Train", root, "Train")
        test_dir = next((root / n for n in ("TestA", "Test") if (root / n).is_dir()), None)
        if test_dir is None:
            raise DataError(f"raabin layout needs {root}/TestA/<class>/")
        test = _scan_classes(test_dir, root, test_dir.name)
        unknown = sorted(set(test) - set(pool))
        if unknown:
            raise DataError(f"test classes {unknown} do not exist in Train/")
    elif layout == "all":
        base = root / "Original" if (root / "Original").is_dir() else root
        pool = _scan_classes(base, root, "ALL layout")
    else:
        pool = _scan_classes(root, root, "imagefolder layout")
    classes = sorted(pool)
    if len(classes) < 2:
        raise DataError(f"need at least 2 classes, found {len(classes)} in {root}")
    return Discovered(
        root=root,
        layout=layout,
        classes=classes,
        pool=[it for c in classes for it in pool[c]],
        test=[it for c in sorted(test) for it in test[c]],
    )


def limit_per_class(items: list[Item], n: int | None) -> list[Item]:
    """The first ``n`` items of each class, in order (all of them when ``n`` is falsy)."""
    if not n:
        return items
    counts: dict[str, int] = defaultdict(int)
    kept = []
    for it in items:
        if counts[it.label] < n:
            kept.append(it)
            counts[it.label] += 1
    return kept


@dataclass
class Split:
    """A reproducible split of a data folder into named parts."""

    root: Path
    layout: str
    classes: list[str]
    seed: int
    parts: dict[str, list[Item]]
    duplicates: int = 0
    fractions: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "format": SPLIT_FORMAT,
            "root": str(self.root),
            "layout": self.layout,
            "classes": self.classes,
            "seed": self.seed,
            "fractions": self.fractions,
            "duplicates_found": self.duplicates,
            "counts": {k: len(v) for k, v in self.parts.items()},
            "splits": {
                k: [{"path": it.path, "label": it.label, "sha256": it.sha256} for it in v]
                for k, v in self.parts.items()
            },
        }

    def save(self, path: str | os.PathLike) -> None:
        write_atomic(path, json.dumps(self.to_json(), indent=1))


def _group_duplicates(items: list[Item]) -> tuple[list[list[Item]], int]:
    groups: dict[str, list[Item]] = defaultdict(list)
    for it in items:
        groups[it.sha256].append(it)
    dupes = sum(len(g) - 1 for g in groups.values())
    return list(groups.values()), dupes


def make_split(
    found: Discovered, val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 42
) -> Split:
    """Stratified, seeded split; duplicate groups stay together (assigned by their first label).

    With a separate test set (raabin layout) the pool is split train/val only, using
    ``val_fraction`` (the paper's 80:20), and ``test_fraction`` is ignored.
    """
    separate_test = bool(found.test)
    if separate_test:
        test_fraction = 0.0
    if not (0 < val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError(f"bad fractions: val {val_fraction}, test {test_fraction}")
    groups, dupes = _group_duplicates(found.pool + found.test)
    test_hashes = {it.sha256 for it in found.test}
    by_class: dict[str, list[list[Item]]] = defaultdict(list)
    for g in groups:
        if g[0].sha256 not in test_hashes:  # pool images identical to a test image stay out
            by_class[g[0].label].append(g)
    rng = random.Random(seed)
    parts: dict[str, list[Item]] = {"train": [], "val": [], "test": []}
    for cls in found.classes:
        cls_groups = sorted(by_class[cls], key=lambda g: g[0].path)
        rng.shuffle(cls_groups)
        n = len(cls_groups)
        n_val = max(1, round(n * val_fraction))
        n_test = round(n * test_fraction) if test_fraction else 0
        if test_fraction and n_test == 0:
            n_test = 1
        if n - n_val - n_test < 1:
            raise DataError(f"class {cls!r} has too few images ({n}) to split")
        for i, g in enumerate(cls_groups):
            part = "val" if i < n_val else "test" if i < n_val + n_test else "train"
            parts[part].extend(g)
    if separate_test:
        parts["test"] = list(found.test)
    if not parts["test"]:
        del parts["test"]
    for v in parts.values():
        v.sort(key=lambda it: (it.label, it.path))
    return Split(
        root=found.root,
        layout=found.layout,
        classes=found.classes,
        seed=seed,
        parts=parts,
        duplicates=dupes,
        fractions={"val": val_fraction, "test": test_fraction},
    )


def load_split(path: str | os.PathLike, root: str | os.PathLike | None = None) -> Split:
    """Read a split file written by lgld-train. ``root`` overrides the recorded data folder."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"split file not found: {path}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read split file {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != SPLIT_FORMAT:
        raise DataError(f"{path} is not an lgld split file")
    try:
        parts = {
            k: [Item(d["path"], d["label"], d["sha256"]) for d in v]
            for k, v in data["splits"].items()
        }
        return Split(
            root=Path(root) if root is not None else Path(data["root"]),
            layout=data["layout"],
            classes=list(data["classes"]),
            seed=int(data["seed"]),
            parts=parts,
            duplicates=int(data.get("duplicates_found", 0)),
            fractions=data.get("fractions", {}),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DataError(f"{path} is a damaged split file ({type(exc).__name__}: {exc})") from None


def verify_items(root: Path, items: list[Item]) -> None:
    """Check that every file of a split exists and still has its recorded content hash."""
    for it in items:
        p = root / it.path
        if not p.is_file():
            raise DataError(f"{p} listed in the split file is missing")
        if file_sha256(p) != it.sha256:
            raise DataError(f"{p} changed since the split was made (sha256 mismatch)")
