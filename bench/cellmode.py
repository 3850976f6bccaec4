"""Measure cell mode on labelled data, torch-free: ``python -m lgld.bench.cellmode``.

* ``wbc5``: single-cell crops (PBC layout ``<class>/*.jpg``, optionally one part of an lgld
  split file). Per crop: is the central cell found, how many other cells are reported, and is
  the central cell's class right, against the same model on the whole crop and on the roi
  mode's default centred square.
* ``framing``: how wide the white cell is relative to its PBC crop, and the crop relative to
  a red cell (the constants of :mod:`.crops` and :mod:`.detect`).
* ``speed``: detection time per 640x480 frame, and the CPU time per frame of what the
  pipeline's two threads do in cell mode with 3 cells per frame (the results/s each allows).
* ``bccd``: whole fields with Pascal VOC boxes (only ``WBC`` objects): recall and precision
  of the detections at an IoU threshold, and detection time per frame.

``--pictures DIR`` saves a few annotated examples and every failure (small PNGs).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np

from lgld.runtime.cells.crops import cell_crops
from lgld.runtime.cells.detect import (
    CellDetector,
    Detection,
    DetectorSettings,
    background_reference,
    measure_rbc_diameter,
)
from lgld.runtime.core.cliutil import OneLineParser, run_cli
from lgld.runtime.core.files import list_images
from lgld.runtime.core.preprocess import read_image

#: PBC crops: the typical white cell is 0.362 of a 360 px crop wide (crops.CELL_FRACTION).
PBC_DIAMETER = (81.0, 208.0)


def parse_diameter(text: str) -> tuple[float, float] | None:
    """"auto" -> None, "LO,HI" -> (LO, HI)."""
    if text.strip().lower() == "auto":
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"diameter must be LO,HI or auto, got {text!r}") from None
    return lo, hi


def parse_gains(text: str) -> tuple[float, float, float]:
    try:
        b, g, r = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"gains must be B,G,R numbers, got {text!r}") from None
    return b, g, r


def iou(a: tuple[int, ...] | list[int], b: tuple[int, ...] | list[int]) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def voc_boxes(path: Path, name: str = "WBC") -> list[list[int]]:
    """The boxes of the objects called name in a Pascal VOC annotation file."""
    boxes = []
    for obj in ET.parse(path).getroot().iter("object"):
        if (obj.findtext("name") or "").strip() != name:
            continue
        bb = obj.find("bndbox")
        boxes.append([int(float(bb.findtext(k))) for k in ("xmin", "ymin", "xmax", "ymax")])
    return boxes


def match(cells: list[Detection], truth: list[list[int]], threshold: float) -> tuple[int, int, int]:
    """Greedy one-to-one matching by IoU: (true positives, false positives, false negatives)."""
    pairs = sorted(((iou(c.box, g), i, j) for i, c in enumerate(cells) for j, g in
                    enumerate(truth)), reverse=True)
    used_c: set[int] = set()
    used_g: set[int] = set()
    for value, i, j in pairs:
        if value < threshold or i in used_c or j in used_g:
            continue
        used_c.add(i)
        used_g.add(j)
    tp = len(used_c)
    return tp, len(cells) - tp, len(truth) - tp


def draw(image: np.ndarray, cells: list[Detection], truth: list[list[int]] = (),
         width: int = 320) -> np.ndarray:
    """Truth in green, detections in red (partial cells in blue), shrunk to width."""
    out = image.copy()
    for g in truth:
        cv2.rectangle(out, (g[0], g[1]), (g[2], g[3]), (0, 190, 0), 3)
    for c in cells:
        cv2.rectangle(out, c.box[:2], c.box[2:], (200, 80, 0) if c.partial else (0, 0, 230), 2)
    scale = width / out.shape[1]
    return cv2.resize(out, (width, round(out.shape[0] * scale)), interpolation=cv2.INTER_AREA)


def evaluate_bccd(args: argparse.Namespace) -> dict:
    root = Path(args.data)
    images = list_images(root / "images") if (root / "images").is_dir() else list_images(root)
    if not images:
        raise ValueError(f"no images under {root}")
    detector = CellDetector(DetectorSettings(diameter_px=args.diameter))
    pictures = Path(args.pictures) if args.pictures else None
    if pictures:
        pictures.mkdir(parents=True, exist_ok=True)
    tp = fp = fn = 0
    times = []
    failures = []
    for k, path in enumerate(images):
        xml = root / "annotations" / (path.stem + ".xml")
        if not xml.is_file():
            raise ValueError(f"annotation missing: {xml}")
        truth = voc_boxes(xml)
        image = read_image(path)
        if args.gains:  # exposure / white-balance shift: every channel times its gain
            image = np.clip(image * np.float32(args.gains), 0, 255).astype(np.uint8)
        detector.reset_scale()
        t0 = time.perf_counter()
        found = detector.detect(image)
        times.append(time.perf_counter() - t0)
        a, b, c = match(found.cells, truth, args.iou)
        tp, fp, fn = tp + a, fp + b, fn + c
        if b or c:
            failures.append({"file": path.name, "false_positives": b, "missed": c})
        if pictures and (b or c or k < 3):
            tag = "fail" if (b or c) else "ok"
            picture = draw(image, found.cells, truth)
            cv2.imwrite(str(pictures / f"bccd-{tag}-{path.stem}.png"), picture)
    # detection time: a second pass over the same frames, best of three per frame
    detector.reset_scale()
    best = []
    for path in images[: min(len(images), 30)]:
        image = read_image(path)
        runs = []
        for _ in range(3):
            t0 = time.perf_counter()
            detector.detect(image)
            runs.append(time.perf_counter() - t0)
        best.append(min(runs))
    return {
        "images": len(images), "truth_boxes": tp + fn, "detections": tp + fp,
        "recall": tp / max(1, tp + fn), "precision": tp / max(1, tp + fp),
        "iou_threshold": args.iou,
        "detect_ms_mean": 1000 * float(np.mean(times)),
        "detect_ms_median_best_of_3": 1000 * float(np.median(best)),
        "failures": failures,
    }


def load_items(data: Path, split_file: str | None, part: str) -> list[tuple[Path, str]]:
    if split_file:
        split = json.loads(Path(split_file).read_text())
        try:
            entries = split["splits"][part]
        except (KeyError, TypeError):
            raise ValueError(f"{split_file} has no part {part!r}") from None
        return [(data / e["path"], e["label"]) for e in entries]
    return [(p, p.parent.name) for p in list_images(data, recursive=True)]


def evaluate_wbc5(args: argparse.Namespace) -> dict:
    from lgld.runtime.core.classifier import OnnxClassifier
    from lgld.runtime.core.zoo import resolve_model

    data = Path(args.data)
    items = load_items(data, args.split_file, args.part)
    if args.limit:
        items = items[:: max(1, len(items) // args.limit)][: args.limit]
    classifier = OnnxClassifier(resolve_model(args.model), threads=args.threads)
    classes = classifier.classes
    detector = CellDetector(DetectorSettings(diameter_px=args.diameter))
    pictures = Path(args.pictures) if args.pictures else None
    if pictures:
        pictures.mkdir(parents=True, exist_ok=True)
    found = extra = extra_whole = 0
    right_cells = right_whole = right_roi = 0
    failures = []
    for path, label in items:
        image = read_image(path)
        if args.gains:  # exposure / white-balance shift: every channel times its gain
            image = np.clip(image * np.float32(args.gains), 0, 255).astype(np.uint8)
        h, w = image.shape[:2]
        detector.reset_scale()
        result = detector.detect(image)
        cells = result.cells
        central = None
        if cells:
            k = min(range(len(cells)), key=lambda i: math.hypot(
                cells[i].centre[0] - w / 2, cells[i].centre[1] - h / 2))
            c = cells[k]
            if math.hypot(c.centre[0] - w / 2, c.centre[1] - h / 2) <= 0.2 * min(w, h):
                central = k
        others = [c for i, c in enumerate(cells) if i != central]
        extra += len(others)
        extra_whole += sum(not c.partial for c in others)
        s = round(min(w, h) * 0.5)
        roi = image[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
        batch = [image, roi]
        if central is not None:
            batch += cell_crops(image, [cells[central]], result.crop_diameter,
                                classifier.info.input_size)
        probs = classifier.probabilities(batch)
        pred = [classes[int(np.argmax(p))] for p in probs]
        right_whole += pred[0] == label
        right_roi += pred[1] == label
        if central is not None:
            found += 1
            right_cells += pred[2] == label
        bad = central is None or len(others) > 0 or (central is not None and pred[2] != label)
        if bad:
            failures.append({"file": str(path.relative_to(data)), "found": central is not None,
                             "extra": len(others),
                             "predicted": pred[2] if central is not None else None})
            if pictures and len(failures) <= 24:
                cv2.imwrite(str(pictures / f"wbc5-fail-{path.stem}.png"), draw(image, cells))
    n = len(items)
    return {
        "crops": n, "central_found": found / n,
        "extra_cells_per_crop": extra / n, "extra_whole_cells_per_crop": extra_whole / n,
        "accuracy_cell_mode": right_cells / n,
        "accuracy_whole_crop": right_whole / n,
        "accuracy_roi_mode_default_square": right_roi / n,
        "failures": failures,
    }


def cell_width(image: np.ndarray, centre: tuple[float, float]) -> float | None:
    """Width of the cell around centre: where the stain density falls to the background along
    48 rays from the nucleus (lower quartile: rays into touching red cells run long)."""
    h, w = image.shape[:2]
    density = -np.log(np.clip(image.astype(np.float32) / background_reference(image), 1e-3, 1))
    total = cv2.GaussianBlur(density.sum(axis=2), (5, 5), 0)
    steps = np.arange(5, min(w, h) / 2 - 2)
    radii = []
    for a in np.linspace(0, 2 * math.pi, 48, endpoint=False):
        xs = (centre[0] + steps * math.cos(a)).astype(int)
        ys = (centre[1] + steps * math.sin(a)).astype(int)
        inside = (xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)
        out = np.flatnonzero(total[ys[inside], xs[inside]] < 0.15)
        if out.size:
            radii.append(steps[inside][out[0]])
    return 2 * float(np.percentile(radii, 25)) if len(radii) >= 12 else None


def evaluate_framing(args: argparse.Namespace) -> dict:
    data = Path(args.data)
    items = load_items(data, args.split_file, args.part)
    items = items[:: max(1, len(items) // args.limit)][: args.limit] if args.limit else items
    detector = CellDetector(DetectorSettings(diameter_px=args.diameter))
    fractions: dict[str, list[float]] = {}
    rbc = []
    for path, label in items:
        image = read_image(path)
        h, w = image.shape[:2]
        cells = detector.detect(image).cells
        if not cells:
            continue
        c = min(cells, key=lambda c: math.hypot(c.centre[0] - w / 2, c.centre[1] - h / 2))
        width = cell_width(image, c.centre)
        if width is not None:
            fractions.setdefault(label, []).append(width / w)
        measured = measure_rbc_diameter(image)
        if measured:
            rbc.append(w / measured)
    every = [f for v in fractions.values() for f in v]
    return {
        "crops": len(every),
        "cell_width_over_crop_median": float(np.median(every)),
        "cell_width_over_crop_iqr": [float(v) for v in np.percentile(every, [25, 75])],
        "per_class_median": {k: float(np.median(v)) for k, v in sorted(fractions.items())},
        "crop_over_red_cell_median": float(np.median(rbc)),
        "failures": [],
    }


def three_cell_frames(n: int = 30) -> list[np.ndarray]:
    """640x480 frames of the demo smear with exactly 3 whole white cells, moving 3 px a frame."""
    from lgld.runtime.cells.slide import LAMP_BGR, Slide, load_cells

    slide = Slide(480.0, seed=1)
    _, cut = load_cells()
    lamp = np.float32(LAMP_BGR)
    frames = []
    for i in range(n):
        image = slide.view(-1400 + 3 * i, 0, 640, (640, 480)).astype(np.float32)
        density = -np.log(np.clip(image / lamp, 1e-3, 1))
        for k, (x, y) in zip((0, 7, 13), ((130, 140), (330, 330), (520, 150)), strict=True):
            d, a = cut[k]
            h, w = a.shape
            x0 = max(0, min(640 - w, x + (3 * i) % 20 - w // 2))
            y0 = max(0, min(480 - h, y - h // 2))
            region = density[y0 : y0 + h, x0 : x0 + w]
            density[y0 : y0 + h, x0 : x0 + w] = region * (1 - a[..., None]) + d * a[..., None]
        frames.append(np.clip(lamp * np.exp(-density), 0, 255).astype(np.uint8))
    return frames


def evaluate_speed(args: argparse.Namespace) -> dict:
    from lgld.runtime.cells.stage import CellStage
    from lgld.runtime.core.classifier import OnnxClassifier
    from lgld.runtime.core.zoo import resolve_model

    frames = three_cell_frames()
    detector = CellDetector()
    whole = {sum(not c.partial for c in detector.detect(f).cells) for f in frames}
    if whole != {3}:
        raise ValueError(f"the speed frames should hold 3 whole cells each, found {whole}")
    fields = [read_image(p) for p in list_images(args.fields)] if args.fields else []

    def best(fn, repeat: int = 5) -> float:
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    detect_s = float(np.median([best(lambda f=f: detector.detect(f)) for f in fields + frames]))
    stage = CellStage(OnnxClassifier(resolve_model(args.model), threads=1))
    capture, inference = [], []
    for i, frame in enumerate(frames * 2):  # CPU time of this thread: robust to other jobs
        t0 = time.thread_time()
        prepared = stage.prepare(frame)
        t1 = time.thread_time()
        stage.classify(prepared, frame, i / 30)
        t2 = time.thread_time()
        capture.append(t1 - t0)
        inference.append(t2 - t1)
    cap, inf = float(np.median(capture)), float(np.median(inference))
    return {
        "model": args.model, "frames": len(frames), "fields": len(fields),
        "detect_ms_per_640x480_frame": 1000 * detect_s,
        "capture_thread_cpu_ms_per_frame": 1000 * cap,
        "inference_thread_cpu_ms_per_frame": 1000 * inf,
        "results_per_s_with_a_core_per_thread": 1 / inf,
        "failures": [],
    }


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m lgld.bench.cellmode",
                      description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    w = sub.add_parser("wbc5", help="single-cell crops: central cell found, extras, class accuracy")
    w.add_argument("--data", required=True, help="folder with <class>/*.jpg")
    w.add_argument("--split-file", help="lgld split.json; evaluate its --part only")
    w.add_argument("--part", default="val")
    w.add_argument("--model", default="wbc5")
    w.add_argument("--threads", type=int, default=1)
    w.add_argument("--limit", type=int, default=0, help="at most N crops, evenly spread")
    w.add_argument("--gains", type=parse_gains, default=None, metavar="B,G,R",
                   help="multiply the channels first (exposure and white-balance shift)")
    w.add_argument("--diameter", type=parse_diameter, default=PBC_DIAMETER,
                   help="white-cell diameter range LO,HI in pixels or auto "
                        f"(default {PBC_DIAMETER[0]:g},{PBC_DIAMETER[1]:g}: PBC crops)")
    f = sub.add_parser("framing", help="cell width / crop width on PBC crops, crop / red cell")
    f.add_argument("--data", required=True, help="folder with <class>/*.jpg")
    f.add_argument("--split-file", help="lgld split.json; measure its --part only")
    f.add_argument("--part", default="train")
    f.add_argument("--limit", type=int, default=300, help="at most N crops, evenly spread")
    f.add_argument("--diameter", type=parse_diameter, default=PBC_DIAMETER)
    s = sub.add_parser("speed", help="detection ms per frame; CPU per frame of both threads")
    s.add_argument("--model", default="wbc5")
    s.add_argument("--fields", help="also time detection on the images of this folder")
    b = sub.add_parser("bccd", help="whole fields with VOC WBC boxes: recall, precision, speed")
    b.add_argument("--data", required=True, help="folder with images/ and annotations/")
    b.add_argument("--iou", type=float, default=0.3)
    b.add_argument("--gains", type=parse_gains, default=None, metavar="B,G,R",
                   help="multiply the channels first (exposure and white-balance shift)")
    b.add_argument("--diameter", type=parse_diameter, default=DetectorSettings().diameter_px,
                   help="white-cell diameter range LO,HI in pixels or auto (default: the "
                        "detector's default for 640x480 at 100x)")
    for q in (w, b):
        q.add_argument("--pictures", help="save annotated examples and failures (PNG) here")
    for q in (w, f, s, b):
        q.add_argument("--json", action="store_true", help="print the full result as JSON")
    return p


def run(args: argparse.Namespace) -> int:
    result = {"bccd": evaluate_bccd, "wbc5": evaluate_wbc5,
              "framing": evaluate_framing, "speed": evaluate_speed}[args.what](args)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for k, v in result.items():
            if k != "failures":
                print(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")
        print(f"failures: {len(result['failures'])} (--json lists them)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    return run_cli(parser.prog, run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
