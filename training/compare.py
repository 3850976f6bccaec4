"""``lgld-eval --model NEW --compare CURRENT``: two models side by side on the same images.

Made for the lab loop (docs/lab-loop.md): before switching the Pi to a fine-tuned model, run
both on the lab's held-out reviewed cells. Both see exactly the same images; the report gives
accuracy, macro F1, per-class F1 and both confusion matrices, the cells one model gets right
and the other wrong (with an exact McNemar test on them), and a one-line recommendation that
says when there are too few held-out cells to decide.
"""

from __future__ import annotations

import argparse
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lgld.runtime.core.files import file_sha256
from lgld.training import evaluate
from lgld.training.data import Item
from lgld.training.evaluate import (
    EvalError,
    Model,
    build_parser,
    check_options,
    collect,
    label_indices,
    load_images,
    load_model,
    run_command,
    save_json,
    summarise,
)

#: Fewer held-out cells than this: the recommendation says the numbers cannot decide.
MIN_CELLS = 30
#: Significance level of the McNemar test behind "switch" / "keep".
ALPHA = 0.05


def mcnemar_p(fixed: int, broken: int) -> float:
    """Exact two-sided McNemar p-value: the discordant pairs against a fair coin."""
    n = fixed + broken
    if n == 0:
        return 1.0
    k = min(fixed, broken)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def predict_both(new: Model, current: Model, root: Path, items: Sequence[Item],
                 batch_size: int) -> tuple[list[int], list[str], list[str], list[dict]]:
    """Indices of the readable items and each model's predicted class names for them."""
    kept: list[int] = []
    new_pred: list[str] = []
    cur_pred: list[str] = []
    skipped: list[dict] = []
    for idx, images, bad in load_images(root, items, batch_size):
        skipped += bad
        if images:
            kept += idx
            new_pred += [new.classes[k] for k in new.probabilities(images).argmax(1)]
            cur_pred += [current.classes[k] for k in current.probabilities(images).argmax(1)]
    if not kept:
        raise EvalError(f"none of the {len(items)} images could be read "
                        f"(first: {skipped[0]['error']})")
    return kept, new_pred, cur_pred, skipped


def recommend(n: int, new: dict, current: dict, fixed: int, broken: int, p: float,
              new_name: str, current_name: str) -> str:
    """One line: switch, keep, or not enough evidence (and why), with the caveats that apply."""
    d_acc = 100 * (new["accuracy"] - current["accuracy"])
    d_f1 = 100 * (new["macro_f1"] - current["macro_f1"])
    delta = (f"accuracy {d_acc:+.1f} points, macro F1 {d_f1:+.1f} points; {fixed} cells fixed, "
             f"{broken} broken, McNemar p = {p:.3g}, n = {n}")
    untested = [c for c in current["classes"] if c not in current["macro_over"]]
    caveats = []
    if n < MIN_CELLS:
        caveats.append(f"only {n} held-out cells")
    if untested:
        caveats.append(f"not tested on {', '.join(untested)} (no held-out cells)")
    caveat = f"; but {' and '.join(caveats)}: check before relying on it" if caveats else ""
    if fixed > broken and p < ALPHA and d_f1 >= 0:
        return f"switch to {new_name} ({delta}){caveat}"
    if broken > fixed and p < ALPHA:
        return f"keep {current_name} ({delta})"
    if n < MIN_CELLS:
        lean = ("leans to the new model" if fixed > broken and d_f1 >= 0 else
                "leans to the current model" if broken > fixed and d_f1 <= 0 else "is even")
        return (f"too few held-out cells to decide ({n} < {MIN_CELLS}): the comparison {lean} "
                f"({delta}); review more cells and compare again before switching")
    return f"no significant difference: keep {current_name} ({delta})"


def compare(new: Model, current: Model, root: Path, items: Sequence[Item],
            batch_size: int = 32) -> dict:
    """Both models on the same items: metrics of each, paired counts, recommendation."""
    if sorted(new.classes) != sorted(current.classes):
        raise EvalError(f"the models have different classes ({', '.join(new.classes)} vs "
                        f"{', '.join(current.classes)}): compare models of one task")
    label_indices(items, new.classes)  # every data class must be a model class
    kept, new_pred, cur_pred, skipped = predict_both(new, current, root, items, batch_size)
    truth = [items[i].label for i in kept]
    classes = list(current.classes)
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[t] for t in truth])
    results = {}
    for key, pred in (("new", new_pred), ("current", cur_pred)):
        results[key] = summarise(y, np.array([index[c] for c in pred]), classes)
    new_ok = np.array(new_pred) == np.array(truth)
    cur_ok = np.array(cur_pred) == np.array(truth)
    fixed, broken = int((new_ok & ~cur_ok).sum()), int((cur_ok & ~new_ok).sum())
    p = mcnemar_p(fixed, broken)
    return {
        "classes": classes, "num_images": len(kept), "skipped": skipped,
        "majority": _majority(truth),
        "new": results["new"], "current": results["current"],
        "paired": {"both_right": int((new_ok & cur_ok).sum()),
                   "both_wrong": int((~new_ok & ~cur_ok).sum()),
                   "fixed": fixed, "broken": broken, "mcnemar_p": p},
        "recommendation": recommend(len(kept), results["new"], results["current"], fixed,
                                    broken, p, new.path.name, current.path.name),
    }


def _majority(truth: Sequence[str]) -> dict:
    """The score of always answering the most frequent held-out class (the floor to beat)."""
    counts = Counter(truth)
    name, count = counts.most_common(1)[0]
    tied = sum(1 for n in counts.values() if n == count)
    return {"class": name, "accuracy": count / len(truth), "tied": tied}


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _matrix(m: dict, width: int) -> list[str]:
    classes = m["classes"]
    rows = [" " * width + "".join(f"{c[:4]:>5}" for c in classes)]
    for c, row in zip(classes, m["confusion_matrix"], strict=True):
        rows.append(f"{c:<{width}}" + "".join(f"{v:>5d}" for v in row))
    return rows


def format_comparison(result: dict) -> str:
    """The side-by-side text report."""
    new, cur = result["new"], result["current"]
    names = (f"current: {Path(result['models']['current']['path']).name}",
             f"new: {Path(result['models']['new']['path']).name}")
    col = max(24, *(len(n) + 2 for n in names))
    n = result["num_images"]
    acc = {k: f"{_pct(m['accuracy'])} ({round(m['accuracy'] * n)}/{n})"
           for k, m in (("new", new), ("current", cur))}
    lines = [f"held-out images: {n} ({result['data']['where']})",
             f"{'':<22}{names[0]:>{col}}{names[1]:>{col}}",
             f"{'accuracy':<22}{acc['current']:>{col}}{acc['new']:>{col}}",
             f"{'macro F1':<22}{_pct(cur['macro_f1']):>{col}}{_pct(new['macro_f1']):>{col}}"]
    major = result["majority"]
    if major.get("tied", 1) > 1:  # no class is the most frequent one
        lines.append(f"(always answering any one of the {major['tied']} equally frequent "
                     f"held-out classes scores {_pct(major['accuracy'])} accuracy)")
    else:
        lines.append(f"(always answering {major['class']}, the most frequent held-out class, "
                     f"scores {_pct(major['accuracy'])} accuracy)")
    if cur["macro_over"] != result["classes"]:
        lines.append(f"(macro averages over the {len(cur['macro_over'])} classes present: "
                     f"{', '.join(cur['macro_over'])})")
    lines.append("per class: F1 (recall)")
    for c in result["classes"]:
        a, b = cur["per_class"][c], new["per_class"][c]
        cells = [f"{_pct(m['f1'])} ({_pct(m['recall'])})" if a["support"] else "-"
                 for m in (a, b)]
        lines.append(f"{'  ' + c + ' (' + str(a['support']) + ')':<22}"
                     f"{cells[0]:>{col}}{cells[1]:>{col}}")
    width = max(12, *(len(c) + 2 for c in result["classes"]))
    left, rightm = _matrix(cur, width), _matrix(new, width)
    pad = max(len(x) for x in left) + 4
    lines += ["", "confusion matrices (rows: true, columns: predicted)",
              f"{names[0]:<{pad}}{names[1]}"]
    lines += [f"{a:<{pad}}{b}" for a, b in zip(left, rightm, strict=True)]
    pr = result["paired"]
    lines += ["", f"same cells: both right {pr['both_right']}, both wrong {pr['both_wrong']}, "
              f"fixed by the new model {pr['fixed']}, broken by it {pr['broken']} "
              f"(exact McNemar p = {pr['mcnemar_p']:.3g})"]
    if result["skipped"]:
        lines.append(f"skipped {len(result['skipped'])} unreadable image(s)")
    lines.append(f"recommendation: {result['recommendation']}")
    return "\n".join(lines)


def _compare_parser() -> argparse.ArgumentParser:
    p = build_parser()
    p.add_argument("--compare", metavar="CURRENT",
                   help="a second model (e.g. the one in use) run on the same images; prints "
                        "both side by side with a recommendation (--model is the new one)")
    return p


def run(args: argparse.Namespace) -> dict:
    if args.perturb:
        raise EvalError("--perturb and --compare do not go together; run them separately")
    check_options(args)
    new = load_model(args.model, args.threads)
    current = load_model(args.compare, args.threads)
    root, items, data_info = collect(args)
    result = compare(new, current, root, items, args.batch_size)
    where = (f"{data_info['split']} split of {data_info['split_file']}"
             if data_info["split_file"] else data_info["path"])
    result["data"] = {**data_info, "where": where}
    result["models"] = {
        key: {"path": str(m.path), "format": m.kind, "sha256": file_sha256(m.path),
              "input_size": m.spec.input_size}
        for key, m in (("new", new), ("current", current))}
    save_json(result, args.json_out)
    print(format_comparison(result), flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    """``lgld-eval``: one model (evaluate.run) or, with --compare, two side by side."""
    args = _compare_parser().parse_args(argv)
    return run_command(run if args.compare else evaluate.run, args)
