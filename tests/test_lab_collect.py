"""The lab loop on the Pi side, torch-free: cell mode keeps each counted cell's crop and a
context thumbnail within a disk budget, the page's review events label them, and
lgld-dataset turns them into a data set."""

from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
from conftest import read_jsonl

from lgld.lab.cli import main as dataset_main
from lgld.runtime import cli
from lgld.runtime.core.countlog import check_review, read_log

BCCD = Path(__file__).resolve().parent / "data" / "bccd" / "images"
COMMON = ["--model", "wbc5-128", "--mode", "cells", "--preview", "off", "--threads", "1",
          "--source", f"images:{BCCD}"]


def count(tmp_path: Path, budget_mb: float) -> Path:
    config = tmp_path / "lab.toml"
    config.write_text(f'[http]\nsnapshot_dir = "{tmp_path / "snap"}"\n'
                      f"[cells]\ncrop_budget_mb = {budget_mb}\n")
    log = tmp_path / "results.jsonl"
    assert cli.main([*COMMON, "--config", str(config), "--log", str(log)]) == 0
    return log


def test_counted_cells_keep_crop_and_context_and_become_a_data_set_after_review(tmp_path):
    log = count(tmp_path, budget_mb=100)
    cells = [r for r in read_jsonl(log) if r.get("event") == "cell"]
    assert len(cells) >= 3
    tracks = [c["track"] for c in cells]
    assert all(isinstance(t, int) for t in tracks) and len(set(tracks)) == len(tracks)
    for c in cells:
        crop = cv2.imread(str(tmp_path / c["crop"]))
        context = cv2.imread(str(tmp_path / c["context"]))
        assert crop.shape[0] == crop.shape[1] > 128  # full resolution, not the model input
        assert context.shape[1] == 320 and context.shape[0] == 240  # a 640x480 field, halved
        assert set(c["probs"]) == {"Basophil", "Eosinophil", "Lymphocyte", "Monocyte",
                                   "Neutrophil"}
    session = read_log(log).get()
    with open(log, "a") as fh:  # what the page's review buttons append
        for i, cell in enumerate(session.cells):
            body = ({"track": cell.track, "action": "reject"} if i == 0 else
                    {"track": cell.track, "action": "reclassify", "class": "Neutrophil"})
            fh.write(json.dumps(check_review(session, {"session": session.id, **body})) + "\n")
        extra = {"session": session.id, "track": session.cells[1].track,
                 "action": "reclassify", "class": "Lymphocyte"}
        fh.write(json.dumps(check_review(session, extra)) + "\n")  # the last review wins
    out = tmp_path / "lab-data"
    assert dataset_main([str(log), "-o", str(out), "--min-per-class", "1"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classes"] == {"Lymphocyte": 1, "Neutrophil": len(cells) - 2}
    assert manifest["left_out"] == {"rejected": 1}
    assert manifest["model"]["name"] and manifest["model"]["sha256"]


def test_the_crop_budget_keeps_the_snapshot_folder_small(tmp_path):
    log = count(tmp_path, budget_mb=0.05)  # about one cell's crop and thumbnail
    cells = [r for r in read_jsonl(log) if r.get("event") == "cell"]
    deadline = time.monotonic() + 10
    while True:  # pruning runs on its own thread
        size = sum(p.stat().st_size for p in (tmp_path / "snap").rglob("*.jpg"))
        if size <= 0.05 * 2**20 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert size <= 0.05 * 2**20
    kept = [c for c in cells if (tmp_path / c["crop"]).exists()]
    assert 0 < len(kept) < len(cells) and kept == cells[-len(kept):]  # the newest survive


def test_a_saved_crop_read_back_gets_the_probabilities_the_count_logged(tmp_path):
    """The data set is made of saved crops: they must be what the model saw (framing and
    colour balance), or a fine-tune learns one input and runs on another."""
    from lgld.runtime.core.classifier import OnnxClassifier
    from lgld.runtime.core.preprocess import read_image
    from lgld.runtime.core.zoo import resolve_model

    log = count(tmp_path, budget_mb=100)
    cells = [r for r in read_jsonl(log) if r.get("event") == "cell"]
    classifier = OnnxClassifier(resolve_model("wbc5-128"), threads=1)
    probs = classifier.probabilities([read_image(tmp_path / c["crop"]) for c in cells])
    for p, cell in zip(probs, cells, strict=True):
        logged = [cell["probs"][name] for name in classifier.classes]
        assert abs(p - logged).max() < 0.05  # JPEG (quality 90) is the only difference
