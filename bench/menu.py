"""The speed/accuracy menu of ``lgld-bench --menu``: models at several input sizes, timed
interleaved through the runtime session, each with the validation accuracy it was shipped with.

``--menu`` takes comma-separated items:

* a model (a zoo name such as ``all-224``, or an ``.onnx`` path): timed as it is; its accuracy
  is the validation accuracy recorded in its metadata when it was exported (``lgld.training``:
  the checkpoint's validation split, which ``lgld-eval --split val`` reproduces on the ONNX);
* a number N: the benchmarked model's own weights re-exported at N px (needs torch). That shows
  the speed of a size only: those weights were not trained at N, so no accuracy is claimed.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lgld.bench.inputs import sample_images
from lgld.bench.onnx_macs import onnx_macs
from lgld.bench.timing import in_fresh_process, percentile, time_interleaved
from lgld.runtime.core.classifier import OnnxClassifier
from lgld.runtime.core.preprocess import preprocess


class MenuError(ValueError):
    """A --menu item that is neither a valid size nor a model."""


@dataclass(frozen=True)
class MenuItem:
    """One --menu item: a size to re-export at, or a model file."""

    label: str
    size: int | None = None
    path: Path | None = None


def parse_menu(text: str | None, resolve: Callable[[str], Path]) -> list[MenuItem]:
    """``224,all-160,model.onnx`` -> items; sizes must be even and >= 16."""
    items = []
    for raw in (text or "").split(","):
        token = raw.strip()
        if not token:
            continue
        if token.isdigit():
            size = int(token)
            if size < 16 or size % 2:
                raise MenuError(f"--menu sizes must be even numbers >= 16, got {token}")
            items.append(MenuItem(label=f"{size} px (re-exported)", size=size))
        else:
            items.append(MenuItem(label=token, path=resolve(token)))
    if text and not items:
        raise MenuError(f"--menu wants comma-separated sizes or models, got {text!r}")
    return items


def _shipped_accuracy(clf: OnnxClassifier) -> dict[str, Any]:
    """Validation metrics recorded in the model's metadata, or {} when there are none."""
    val = clf.info.training.get("val") if isinstance(clf.info.training, dict) else None
    if not isinstance(val, dict) or "accuracy" not in val:
        return {}
    counts = clf.info.training.get("split_counts") or {}
    return {"val_accuracy": val.get("accuracy"), "val_macro_f1": val.get("macro_f1"),
            "val_images": counts.get("val"), "dataset": clf.info.training.get("dataset")}


def run_menu(
    items: list[MenuItem],
    threads: int,
    warmup: int,
    repeats: int,
    export_at: Callable[[int], tuple[Path, int]] | None = None,
) -> dict[str, Any]:
    """Time every item's ONNX model interleaved; ``export_at(size)`` -> (path, MACs) for sizes."""
    entries, fns = [], {}
    for i, item in enumerate(items):
        if item.size is not None:
            if export_at is None:
                raise MenuError(f"--menu {item.size}: re-exporting needs torch and lgld.export; "
                                "pass model files instead")
            path, macs = export_at(item.size)
        else:
            path, macs = item.path, None
        clf = OnnxClassifier(path, threads=threads)
        entry: dict[str, Any] = {"item": item.label, "model": str(path),
                                 "input_size": clf.info.input_size}
        if item.size is None:
            macs = onnx_macs(clf)[0]
            entry.update(_shipped_accuracy(clf))
        entry["macs"] = macs
        x = preprocess(sample_images(clf.info.input_size)[0], clf.info.preprocess)
        fns[str(i)] = lambda c=clf, v=x: c.logits(v)
        entries.append(entry)
    samples = time_interleaved(fns, warmup, repeats)
    for i, entry in enumerate(entries):
        v = samples[str(i)]
        entry.update(median_ms=statistics.median(v), p90_ms=percentile(v, 90),
                     fps=1000.0 / statistics.median(v))
    return {"threads": threads, "sizes": entries}


def format_menu(menu: dict[str, Any]) -> str:
    """The menu as a text table (accuracy '-' where none is claimed)."""
    lines = [f"size menu: lgld ONNX fp32 through the runtime session, {menu['threads']} "
             "thread(s), timed interleaved; accuracy = validation split recorded in the model",
             f"  {'model':<28}{'size':>5}{'GMACs':>8}{'median ms':>11}{'p90 ms':>9}{'FPS':>8}"
             f"{'val acc':>9}{'val F1':>9}"]
    for e in menu["sizes"]:
        macs = f"{e['macs'] / 1e9:.3f}" if e.get("macs") else "-"
        acc = f"{e['val_accuracy']:.2%}" if e.get("val_accuracy") is not None else "-"
        f1 = f"{e['val_macro_f1']:.2%}" if e.get("val_macro_f1") is not None else "-"
        lines.append(f"  {e['item'][:27]:<28}{e['input_size']:>5}{macs:>8}"
                     f"{e['median_ms']:>11.2f}{e['p90_ms']:>9.2f}{e['fps']:>8.1f}{acc:>9}{f1:>9}")
    return "\n".join(lines)


def run_menu_isolated(items: list[MenuItem], threads: int, warmup: int, repeats: int
                      ) -> dict[str, Any]:
    """:func:`run_menu` for model files in a fresh process (no thread pool of other work)."""
    return in_fresh_process(run_menu, items, threads, warmup, repeats)
