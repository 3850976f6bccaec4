"""Record a model's domain reference in its ONNX metadata (``lgld.domain``).

    python -m lgld.export.domainstats MODEL.onnx [MORE.onnx] --data WBC5 --split-file SPLIT.json

The model scores its own validation images (the split's val part, or every image under
``--data``); :func:`lgld.runtime.cells.domain.fit_reference` summarises the logits, and the
summary is written into the model's metadata in place (atomically), next to the preprocessing.
Cell mode then checks every count session against it (docs/lab-loop.md). Run it again after a
re-export: the reference belongs to one model's weights.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

from lgld.export import ExportError
from lgld.export.onnx_export import save_atomically
from lgld.export.quantize import _spread, labelled_images, split_items
from lgld.runtime.core.classifier import ModelLoadError, OnnxClassifier
from lgld.runtime.core.cliutil import run_cli
from lgld.runtime.core.domain import METADATA_KEY, DomainError, fit_reference
from lgld.runtime.core.preprocess import preprocess_batch, read_image

PROG = "python -m lgld.export.domainstats"


def model_logits(clf: OnnxClassifier, paths: Sequence[Path], chunk: int = 32) -> np.ndarray:
    """The model's logits on image files, preprocessed with its own spec."""
    out = []
    for i in range(0, len(paths), chunk):
        images = [read_image(p) for p in paths[i : i + chunk]]
        out.append(clf.logits(preprocess_batch(images, clf.info.preprocess)))
    return np.concatenate(out) if out else np.zeros((0, len(clf.classes)), np.float32)


def stamp(model_path: Path, paths: Sequence[Path], source: str, threads: int = 1) -> dict:
    """Fit the reference on ``paths`` with the model itself and write it into its metadata."""
    try:
        clf = OnnxClassifier(model_path, threads=threads)
    except ModelLoadError as exc:
        raise ExportError(str(exc)) from None
    try:
        ref = fit_reference(model_logits(clf, paths), source)
    except DomainError as exc:
        raise ExportError(f"{model_path}: {exc}") from None
    model = onnx.load(str(model_path))
    props = {p.key: p.value for p in model.metadata_props}
    props[METADATA_KEY] = json.dumps(ref.to_dict())
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    save_atomically(model, model_path)
    return ref.to_dict()


def reference_images(models: Sequence[Path], data: str, split_file: str | None,
                     limit: int | None) -> list[Path]:
    """The validation images of the split (or all images under data), at most ``limit``."""
    clf = OnnxClassifier(models[0], threads=1)
    if split_file:
        _, val = split_items(split_file, clf.classes, root=data)
        items = val
    else:
        items = labelled_images(data, clf.classes)
    return [p for p, _ in _spread(items, limit)]


def stamp_models(models: Sequence[Path], data: str, split_file: str | None = None,
                 limit: int = 600, threads: int = 1) -> list[str]:
    """Stamp every model with a reference fitted on the same images; one line per model."""
    paths = reference_images(models, data, split_file, limit)
    source = f"{Path(data).name} " + ("val part of its split" if split_file else
                                      "images") + f", {len(paths)} images"
    lines = []
    for m in models:
        ref = stamp(m, paths, source, threads)
        lines.append(f"{m}: domain reference from {source}: score {ref['score_mean']:.3f} "
                     f"+- {ref['score_sd']:.3f}")
    return lines


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Write the domain reference of cell "
                                "mode's per-session microscope check into lgld ONNX models.")
    p.add_argument("models", nargs="+", help="lgld .onnx models (rewritten in place)")
    p.add_argument("--data", required=True, help="data folder, one sub-folder per class")
    p.add_argument("--split-file", help="the model's lgld-train split: its val part is used")
    p.add_argument("--limit", type=int, default=600, help="at most N images (default 600)")
    p.add_argument("--threads", type=int, default=1)
    return p


def run(args: argparse.Namespace) -> int:
    models = [Path(m) for m in args.models]
    for m in models:
        if not m.is_file():
            raise ExportError(f"model not found: {m}")
    if args.limit < 50:
        raise ExportError(f"--limit must be >= 50, got {args.limit}")
    print("\n".join(stamp_models(models, args.data, args.split_file, args.limit, args.threads)))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(PROG, run, build_parser().parse_args(argv), (ExportError, ValueError, OSError))


if __name__ == "__main__":
    sys.exit(main())
