"""Alarm rates of cell mode's per-session domain check (docs/lab-loop.md), for any model.

    python docs/lab-loop/measure_domain.py MODEL.onnx --wbc5 WBC5 --split-file SPLIT.json \
        --lisc LISC --bccd BCCD-dev [--sessions 200] [--cells 50] [--json out.json]

The model must carry a domain reference (``python -m lgld.export.domainstats``). Every image
goes through cell mode's own detection, framing and white balance: WBC5 val crops and LISC
crops (the central cell; crop layouts framed like PBC), BCCD fields (every whole cell), and
the WBC5 val crops recoloured (hue turned 30 degrees, saturation x1.3: another stain). From
each set's cells, ``--sessions`` random sessions of ``--cells`` cells go through
``DomainCheck``; printed: the share of sessions in each state, and the check's time per cell.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from lgld.runtime.cells.crops import cell_crops
from lgld.runtime.cells.detect import CellDetector, DetectorSettings
from lgld.runtime.cells.stage import CellStage
from lgld.runtime.core.classifier import OnnxClassifier
from lgld.runtime.core.domain import DomainCheck, DomainReference
from lgld.runtime.core.files import list_images
from lgld.runtime.core.preprocess import read_image

PBC_DIAMETER = (81.0, 208.0)  # a 360 px PBC crop (runtime.cells.evaluate)


def recolour(image: np.ndarray) -> np.ndarray:
    """Another stain: hue turned by 30 degrees, saturation x1.3."""
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV).astype(np.int16)
    hsv[..., 0] = (hsv[..., 0] + 15) % 180
    hsv[..., 1] = np.clip(hsv[..., 1] * 1.3, 0, 255)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)


def crop_logits(clf: OnnxClassifier, paths: list[Path], change=None) -> np.ndarray:
    """Logits of the central cell of each single-cell crop, framed as cell mode frames it."""
    rows = []
    for path in paths:
        image = read_image(path)
        if change is not None:
            image = change(image)
        h, w = image.shape[:2]
        scale = max(h, w) / 360.0
        det = CellDetector(DetectorSettings(diameter_px=(PBC_DIAMETER[0] * scale,
                                                         PBC_DIAMETER[1] * scale)))
        found = det.detect(image)
        if not found.cells:
            continue
        k = min(range(len(found.cells)), key=lambda i: math.hypot(
            found.cells[i].centre[0] - w / 2, found.cells[i].centre[1] - h / 2))
        crop = cell_crops(image, [found.cells[k]], found.typical_diameter, clf.info.input_size)
        rows.append(clf.logits(clf.prepare(crop))[0])
    return np.asarray(rows)


def field_logits(clf: OnnxClassifier, paths: list[Path]) -> np.ndarray:
    """Logits of every whole cell of whole fields, through cell mode's own stage."""
    stage = CellStage(clf, tracking=False)
    rows = []
    for path in paths:
        prepared = stage.prepare(read_image(path))
        if prepared.batch is None:
            continue
        whole = [j for j, i in enumerate(prepared.classified)
                 if not prepared.found.cells[i].partial]
        if whole:
            rows.extend(clf.logits(prepared.batch[whole]))
    return np.asarray(rows)


def alarm_rates(ref: DomainReference, logits: np.ndarray, sessions: int, cells: int,
                seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    states: dict[str, int] = {}
    zs = []
    t0 = time.perf_counter()
    for _ in range(sessions):
        check = DomainCheck(ref, first_n=cells)
        pick = rng.choice(len(logits), cells, replace=len(logits) < cells)
        for row in logits[pick]:  # one counted cell at a time, as the session sees them
            check.add([row])
        st = check.state()
        states[st["state"]] = states.get(st["state"], 0) + 1
        zs.append(st["z"])
    ms = 1000 * (time.perf_counter() - t0) / (sessions * cells)
    return {"cells_available": len(logits), "sessions": sessions,
            "share": {k: v / sessions for k, v in sorted(states.items())},
            "z_p5_p50_p95": [round(float(np.percentile(zs, q)), 1) for q in (5, 50, 95)],
            "check_ms_per_cell": round(ms, 4)}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("--wbc5", required=True)
    p.add_argument("--split-file", required=True, help="the model's split (val part used)")
    p.add_argument("--lisc")
    p.add_argument("--bccd")
    p.add_argument("--sessions", type=int, default=200)
    p.add_argument("--cells", type=int, default=50)
    p.add_argument("--json")
    a = p.parse_args(argv)
    clf = OnnxClassifier(a.model, threads=1)
    if not clf.info.domain:
        p.error(f"{a.model} carries no domain reference (python -m lgld.export.domainstats)")
    ref = DomainReference.from_dict(clf.info.domain)
    split = json.loads(Path(a.split_file).read_text())
    val = [Path(a.wbc5) / e["path"] for e in split["splits"]["val"]]
    sets = {"PBC val": lambda: crop_logits(clf, val),
            "PBC val recoloured": lambda: crop_logits(clf, val, recolour)}
    if a.lisc:
        sets["LISC"] = lambda: crop_logits(clf, list_images(Path(a.lisc), recursive=True))
    if a.bccd:
        sets["BCCD-dev fields"] = lambda: field_logits(clf, list_images(Path(a.bccd) / "images"))
    out = {"model": str(a.model), "model_name": clf.info.name, "reference": ref.source,
           "cells_per_session": a.cells, "sets": {}}
    for name, make in sets.items():
        out["sets"][name] = r = alarm_rates(ref, make(), a.sessions, a.cells)
        print(f"{name}: {r['cells_available']} cells, states {r['share']}, "
              f"z p5/p50/p95 {r['z_p5_p50_p95']}, {r['check_ms_per_cell']} ms/cell", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
