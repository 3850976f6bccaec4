"""End-of-run report: metrics.json (val and test with best.pt), report.txt and plots."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from lgld.models.checkpoint import load_checkpoint
from lgld.runtime.core.files import write_atomic
from lgld.training.loop import predict
from lgld.training.metrics import compute_metrics, format_report
from lgld.training.plots import plot_confusion, plot_curves

if TYPE_CHECKING:
    from lgld.training.loop import Trainer


def final_report(trainer: Trainer) -> dict:
    """Evaluate best.pt on val (and test when the split has one) and write the report files."""
    out = trainer.out
    best = out / "best.pt" if (out / "best.pt").is_file() else out / "last.pt"
    ckpt = load_checkpoint(best)
    model = ckpt.build_model().to(trainer.device)
    results = {}
    for part in ("val", "test"):
        if part not in trainer.caches:
            continue
        loader = trainer._loader(part, ckpt.config.input_size, train=False)
        y, p, _ = predict(model, loader, trainer.device)
        results[part] = compute_metrics(y, p, trainer.classes)
    write_atomic(out / "metrics.json", json.dumps(
        {"checkpoint": best.name, "input_size": ckpt.config.input_size, **results}, indent=1))
    text = []
    for part, m in results.items():
        text += [f"== {part} ({best.name}) ==", format_report(m), ""]
        name = "confusion_matrix.png" if part == "val" else f"confusion_matrix_{part}.png"
        plot_confusion(m["confusion_matrix"], m["classes"], out / name,
                       f"{part}: accuracy {100 * m['accuracy']:.2f}%")
    write_atomic(out / "report.txt", "\n".join(text))
    plot_curves(trainer.history, out / "curves.png")
    print("\n".join(text))
    return results
