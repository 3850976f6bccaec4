"""Classification metrics from a confusion matrix (the paper's accuracy / macro P, R, F1)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return cm


def metrics_from_confusion(cm: np.ndarray, classes: Sequence[str]) -> dict:
    """Accuracy, macro precision/recall/F1 (fractions in [0, 1]) and a per-class report.

    A class with no predictions has precision 0; with no support, recall 0 (and it still
    counts in the macro average, as in scikit-learn with zero_division=0).
    """
    cm = np.asarray(cm, dtype=np.int64)
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    total = cm.sum()
    return {
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(classes)
        },
        "confusion_matrix": cm.tolist(),
        "classes": list(classes),
        "num_images": int(total),
    }


def compute_metrics(y_true: Sequence[int], y_pred: Sequence[int], classes: Sequence[str]) -> dict:
    """Metrics for integer labels/predictions over ``classes``."""
    return metrics_from_confusion(confusion_matrix(y_true, y_pred, len(classes)), classes)


def format_report(m: dict) -> str:
    """A table like the paper's, with per-class rows and the confusion matrix."""
    classes = m["classes"]
    width = max(12, *(len(c) + 2 for c in classes))
    lines = [
        f"images: {m['num_images']}",
        f"accuracy {100 * m['accuracy']:.2f}%  macro precision {100 * m['macro_precision']:.2f}%  "
        f"macro recall {100 * m['macro_recall']:.2f}%  macro F1 {100 * m['macro_f1']:.2f}%",
        "",
        f"{'class':<{width}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}",
    ]
    for c in classes:
        r = m["per_class"][c]
        lines.append(
            f"{c:<{width}}{100 * r['precision']:>9.2f}%{100 * r['recall']:>9.2f}%"
            f"{100 * r['f1']:>9.2f}%{r['support']:>9d}"
        )
    lines += ["", "confusion matrix (rows: true, columns: predicted)"]
    lines.append(" " * width + "".join(f"{c[:9]:>10}" for c in classes))
    for c, row in zip(classes, m["confusion_matrix"], strict=True):
        lines.append(f"{c:<{width}}" + "".join(f"{v:>10d}" for v in row))
    return "\n".join(lines)
