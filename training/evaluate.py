"""``lgld-eval``: measure a .pt checkpoint or an .onnx model on a folder of labelled images.

An ``.onnx`` model runs through exactly the runtime's code (``OnnxClassifier`` and the shared
preprocessing), so the numbers are what the Pi will do; torch is not needed for it. A ``.pt``
checkpoint runs in torch, batched, fed by the same image loading and preprocessing, so a
checkpoint and its export give the same metrics on the same folder.

Classes are matched by name: every class folder must be one of the model's classes, in any
order. Unreadable images are skipped, counted and listed (the run fails if none is readable).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lgld.runtime.core.classifier import OnnxClassifier, softmax
from lgld.runtime.core.cliutil import OneLineParser, quiet_broken_pipe, require_extra, run_cli
from lgld.runtime.core.files import file_sha256, write_atomic
from lgld.runtime.core.preprocess import ImageError, PreprocessSpec, preprocess_batch, read_image
from lgld.training.allocator import OPT_OUT_FLAG
from lgld.training.data import (
    LAYOUTS,
    DataError,
    Item,
    discover,
    limit_per_class,
    load_split,
    verify_items,
)
from lgld.training.metrics import confusion_matrix, format_report, metrics_from_confusion
from lgld.training.perturb import conditions, image_seed, perturb

PROG = "lgld-eval"
METRIC_KEYS = ("accuracy", "macro_precision", "macro_recall", "macro_f1")


class EvalError(ValueError):
    """A bad model, data folder or option for lgld-eval."""


@dataclass
class Model:
    """A loaded model: its classes, its preprocessing and a batched BGR -> probabilities call."""

    path: Path
    kind: str  # "pt" | "onnx"
    classes: list[str]
    spec: PreprocessSpec
    probabilities: Callable[[Sequence[np.ndarray]], np.ndarray]
    details: dict[str, Any]


def load_model(path: str | Path, threads: int | None = None) -> Model:
    """Load an .onnx model (runtime session) or a .pt checkpoint (torch)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        clf = OnnxClassifier(path, threads=threads)
        return Model(path, "onnx", clf.classes, clf.info.preprocess, clf.probabilities, {
            "variant": clf.info.variant, "name": clf.info.name,
            "quantization": clf.info.quantization, "training": clf.info.training,
        })
    if suffix == ".pt":
        return _load_torch(path, threads)
    raise EvalError(f"--model must be a .pt checkpoint or an .onnx model, got {path}")


def _load_torch(path: Path, threads: int | None) -> Model:
    require_extra("torch")  # an .onnx model needs only the runtime
    import torch

    from lgld.models.checkpoint import load_checkpoint
    if threads:
        torch.set_num_threads(threads)
    ckpt = load_checkpoint(path)
    model = ckpt.build_model()
    spec = ckpt.preprocess

    @torch.inference_mode()
    def probabilities(images: Sequence[np.ndarray]) -> np.ndarray:
        return softmax(model(torch.from_numpy(preprocess_batch(images, spec))).numpy())

    return Model(path, "pt", ckpt.classes, spec, probabilities, {
        "variant": ckpt.config.variant, "training": ckpt.training,
    })


def collect(args: argparse.Namespace) -> tuple[Path, list[Item], dict]:
    """The images to evaluate: a split of a split file, or everything in the data folder."""
    if args.split_file:
        split = load_split(args.split_file, root=args.data)
        if args.split not in split.parts:
            raise EvalError(f"{args.split_file} has no {args.split!r} part "
                            f"(it has: {', '.join(split.parts)})")
        root, items, layout = split.root, split.parts[args.split], split.layout
        if not root.is_dir():
            raise DataError(f"data folder not found: {root}")
    elif args.data is None:
        raise EvalError("--data is required (or give --split-file)")
    else:
        found = discover(args.data, args.layout)
        root, layout = found.root, found.layout
        items = found.test if found.test else found.pool  # raabin layout: the TestA set
    items = limit_per_class(list(items), args.limit_per_class)
    if args.split_file:
        verify_items(root, items)
    if not items:
        raise EvalError(f"no images to evaluate in {root}")
    info = {"path": str(root), "layout": layout, "split_file": args.split_file,
            "split": args.split if args.split_file else None,
            "limit_per_class": args.limit_per_class}
    return root, items, info


def label_indices(items: Sequence[Item], model_classes: Sequence[str]) -> np.ndarray:
    """Each item's class index in the model; a class the model does not know is an error."""
    index = {c: i for i, c in enumerate(model_classes)}
    for label in sorted({it.label for it in items}):
        if label not in index:
            raise EvalError(f"data class {label!r} is not known to the model "
                            f"(model classes: {', '.join(model_classes)})")
    return np.array([index[it.label] for it in items], dtype=np.int64)


def load_images(
    root: Path, items: Sequence[Item], batch_size: int
) -> Iterator[tuple[list[int], list[np.ndarray], list[dict]]]:
    """Read items in batches: (indices of readable items, BGR images, skipped entries)."""
    for start in range(0, len(items), batch_size):
        idx, images, skipped = [], [], []
        for i in range(start, min(start + batch_size, len(items))):
            try:
                images.append(read_image(root / items[i].path))
                idx.append(i)
            except ImageError as exc:
                skipped.append({"path": items[i].path, "error": str(exc)})
        yield idx, images, skipped


def summarise(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]) -> dict:
    """Paper metrics over the model's classes; macro averages over classes present in the data."""
    m = metrics_from_confusion(confusion_matrix(y_true, y_pred, len(classes)), classes)
    present = [c for c in classes if m["per_class"][c]["support"] > 0]
    if len(present) < len(classes):
        for key, field in (("macro_precision", "precision"), ("macro_recall", "recall"),
                           ("macro_f1", "f1")):
            m[key] = float(np.mean([m["per_class"][c][field] for c in present]))
    m["macro_over"] = present
    return m


def _progress(total: int) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:  # the Pi runtime install has no tqdm
        return None
    return tqdm(total=total, desc=PROG, unit="img", disable=None, leave=False, file=sys.stderr)


def evaluate(
    model: Model, root: Path, items: Sequence[Item], batch_size: int = 32,
    with_perturbations: bool = False,
) -> dict:
    """Run the model over the items; metrics (and per-perturbation metrics) as a dict."""
    labels = label_indices(items, model.classes)
    conds = conditions() if with_perturbations else []
    preds: dict[tuple[str, str] | None, list[np.ndarray]] = {c: [] for c in [None, *conds]}
    kept: list[int] = []
    skipped: list[dict] = []
    bar = _progress(len(items))
    for idx, images, bad in load_images(root, items, batch_size):
        skipped += bad
        if images:
            kept += idx
            preds[None].append(model.probabilities(images).argmax(1))
            for kind, sev in conds:
                shifted = [perturb(im, kind, sev, image_seed(items[i].sha256 or items[i].path,
                                                             kind, sev))
                           for i, im in zip(idx, images, strict=True)]
                preds[(kind, sev)].append(model.probabilities(shifted).argmax(1))
        if bar is not None:
            bar.update(len(idx) + len(bad))
    if bar is not None:
        bar.close()
    if not kept:
        raise EvalError(f"none of the {len(items)} images could be read "
                        f"(first: {skipped[0]['error']})")
    y = labels[kept]
    result = summarise(y, np.concatenate(preds[None]), model.classes)
    result["skipped"] = skipped
    if conds:
        result["perturbations"] = {}
        for kind, sev in conds:
            m = summarise(y, np.concatenate(preds[(kind, sev)]), model.classes)
            result["perturbations"].setdefault(kind, {})[sev] = {
                "accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}
    return result


def format_perturbations(result: dict) -> str:
    """Accuracy / macro F1 per perturbation and severity, next to the clean numbers."""
    def cell(m: dict) -> str:
        return f"{100 * m['accuracy']:6.2f}% / {100 * m['macro_f1']:6.2f}%"

    lines = ["robustness to acquisition shifts (accuracy / macro F1)",
             f"{'condition':<16}{'mild':>20}{'strong':>20}",
             f"{'clean':<16}{cell(result):>20}"]
    for kind, sevs in result["perturbations"].items():
        lines.append(f"{kind:<16}{cell(sevs['mild']):>20}{cell(sevs['strong']):>20}")
    return "\n".join(lines)


def format_result(result: dict) -> str:
    """The full text report: header, paper-style table, skips and robustness table."""
    mod, data = result["model"], result["data"]
    where = data["path"] + (f" ({data['split']} split of {data['split_file']})"
                            if data["split_file"] else f" ({data['layout']} layout)")
    lines = [f"model: {mod['path']} ({mod['format']}, {len(mod['classes'])} classes, "
             f"input {mod['input_size']})", f"data: {where}"]
    if result["macro_over"] != result["classes"]:
        lines.append(f"note: macro averages over the {len(result['macro_over'])} classes "
                     f"present in the data: {', '.join(result['macro_over'])}")
    lines.append(format_report(result))
    if result["skipped"]:
        lines += ["", f"skipped {len(result['skipped'])} unreadable image(s):"]
        lines += [f"  {s['path']}: {s['error']}" for s in result["skipped"]]
    if "perturbations" in result:
        lines += ["", format_perturbations(result)]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """lgld-eval's flags (compare adds ``--compare`` to them)."""
    p = OneLineParser(prog=PROG, description=__doc__.splitlines()[0].replace("``", ""))
    p.add_argument("--model", required=True, help="a .pt checkpoint or an .onnx model")
    p.add_argument("--data", help="data folder (class folders; ALL, Raabin-WBC or ImageFolder)")
    p.add_argument("--layout", choices=LAYOUTS, default="auto",
                   help="data layout (raabin: evaluates TestA/)")
    p.add_argument("--split-file", help="split.json of a run: evaluate one of its parts")
    p.add_argument("--split", default="test", choices=("test", "val", "train"),
                   help="which part of --split-file (default: test)")
    p.add_argument("-o", "--output", "--json", dest="json_out", metavar="OUT.json",
                   help="also write the results as JSON here")
    p.add_argument("--perturb", action="store_true",
                   help="also measure accuracy under stain, blur, noise, JPEG, exposure and "
                        "white-balance shifts")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, help="inference threads (default: all cores but one)")
    p.add_argument("--limit-per-class", type=int, help="evaluate at most N images per class")
    p.add_argument(OPT_OUT_FLAG, action="store_true",
                   help="keep the default memory allocator (no restart; .pt models only)")
    return p


def check_options(args: argparse.Namespace) -> None:
    """The option checks of every lgld-eval run, of one model or two."""
    if args.batch_size < 1:
        raise EvalError("--batch-size must be >= 1")
    if args.threads is not None and args.threads < 1:
        raise EvalError("--threads must be >= 1")
    if args.limit_per_class is not None and args.limit_per_class < 1:
        raise EvalError("--limit-per-class must be >= 1")


def save_json(result: dict, path: str | os.PathLike | None) -> None:
    """Write ``--json``'s file (its folder made if needed); nothing when no path is given."""
    if path:
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, json.dumps(result, indent=1) + "\n")


def run(args: argparse.Namespace) -> dict:
    """Evaluate as the command line says; print the report; return the result dict."""
    check_options(args)
    model = load_model(args.model, args.threads)
    root, items, data_info = collect(args)
    result = evaluate(model, root, items, args.batch_size, args.perturb)
    result["model"] = {
        "path": str(model.path), "format": model.kind, "classes": model.classes,
        "input_size": model.spec.input_size, "sha256": file_sha256(model.path), **model.details,
    }
    result["data"] = {**data_info, "images_listed": len(items), "skipped": len(result["skipped"])}
    save_json(result, args.json_out)
    print(format_result(result), flush=True)
    return result


def run_command(job: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> int:
    """Run ``job(args)`` as lgld-eval does: the CLI contract of every lgld command
    (core.cliutil.run_cli), and a reader that went away (``| head``) ends it quietly."""
    return run_cli(PROG, quiet_broken_pipe(job), args)


def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``lgld-eval`` for one model."""
    return run_command(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
