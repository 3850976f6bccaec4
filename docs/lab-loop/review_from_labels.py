"""Review a cell-mode session from a label file, as a person at the page would (docs/lab-loop.md).

    python docs/lab-loop/review_from_labels.py results.jsonl docs/lab-loop/bccd-labels.csv
    python docs/lab-loop/review_from_labels.py results.jsonl FIELDS_DIR

FIELDS_DIR is laid out like BCCD-dev: ``labels.csv`` (``file,types``: one white-cell type per
image, or several separated by ``;``) and optionally ``annotations/<image>.xml`` (Pascal VOC
``WBC`` boxes). There a cell gets its image's type when the image has one type (several
different types: unreviewed, their order does not follow the boxes); with annotations, a cell
that overlaps no WBC box (IoU >= 0.3) is rejected.

For each counted cell of the log's last session: find its image (the frame record's ``file``)
and the label-file row whose box overlaps the cell's box best (IoU >= 0.3). A sure or probable
label confirms the model's class or reclassifies the cell; an unsure row leaves the cell
unreviewed; a cell that matches no labelled white cell is rejected (an artefact or a red-cell
clump). The review events go through the page's own check (``check_review``) and are appended
to the log, exactly the lines the page's review buttons write. Prints what it did.
"""

from __future__ import annotations

import csv
import json
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

from lgld.runtime.core.countlog import check_review, read_log

MIN_IOU = 0.3


def iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def frame_files(log_path: Path) -> dict[tuple[str, int], str]:
    """(session, frame index) -> image file name, from the log's frame records."""
    files = {}
    with open(log_path, encoding="utf-8") as fh:
        for line in fh:
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if r.get("event") == "frame" and r.get("file") and isinstance(r.get("frame"), int):
                files[(r.get("session"), r["frame"])] = Path(r["file"]).name
    return files


def voc_wbc_boxes(path: Path) -> list[list[float]]:
    """The WBC boxes of a Pascal VOC annotation file."""
    boxes = []
    for obj in ET.parse(path).getroot().iter("object"):
        if (obj.findtext("name") or "").strip() == "WBC":
            bb = obj.find("bndbox")
            boxes.append([float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")])
    return boxes


def field_truth(log_path: Path, fields: Path) -> dict[object, str | None]:
    """Per counted cell (by track) of the log's last session: its type from the folder's
    labels.csv, "" when unknown (several types on its image), None when it is not a labelled
    white cell (no WBC box overlaps it)."""
    with open(fields / "labels.csv", newline="", encoding="utf-8") as fh:
        types = {r["file"]: sorted({t.strip() for t in r["types"].split(";") if t.strip()})
                 for r in csv.DictReader(fh)}
    session = read_log(log_path).get()
    files = frame_files(log_path)
    truth: dict[object, str | None] = {}
    for cell in session.cells:
        name = files.get((session.id, cell.frame))
        xml = fields / "annotations" / (Path(str(name)).stem + ".xml")
        if xml.is_file() and cell.box and max(
                (iou(cell.box, b) for b in voc_wbc_boxes(xml)), default=0.0) < MIN_IOU:
            truth[cell.track] = None
            continue
        known = types.get(name, [])
        truth[cell.track] = known[0] if len(known) == 1 else ""
    return truth


def write_reviews(log_path: Path, session, label_of, unreviewed: str) -> int:
    """Append a review for every counted cell: ``label_of(cell)`` None rejects it, a class
    confirms or reclassifies it, "" leaves it unreviewed (counted as ``unreviewed``)."""
    done: Counter = Counter()
    events = []
    for cell in session.cells:
        label = label_of(cell)
        if label == "":
            done[unreviewed] += 1
            continue
        if label is None:
            body = {"track": cell.track, "action": "reject"}
        elif label == cell.model_class:
            body = {"track": cell.track, "action": "confirm"}
        else:
            body = {"track": cell.track, "action": "reclassify", "class": label}
        events.append(check_review(session, {"session": session.id, **body}))
        done[body["action"]] += 1
    with open(log_path, "a", encoding="utf-8") as fh:
        fh.writelines(json.dumps(e, separators=(",", ":")) + "\n" for e in events)
    print(f"session {session.id}: {len(session.cells)} counted cells; "
          + ", ".join(f"{n} {what}" for what, n in sorted(done.items())))
    return 0


def review_from_fields(log_path: Path, fields: Path) -> int:
    truth = field_truth(log_path, fields)
    return write_reviews(log_path, read_log(log_path).get(),
                         lambda cell: truth.get(cell.track, ""),
                         "left unreviewed (no single type)")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    log_path, labels_path = Path(argv[0]), Path(argv[1])
    if labels_path.is_dir():
        if not (labels_path / "labels.csv").is_file():
            print(f"{labels_path}: no labels.csv", file=sys.stderr)
            return 2
        return review_from_fields(log_path, labels_path)
    rows: dict[str, list[dict]] = {}
    with open(labels_path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            row["box"] = [float(row[k]) for k in ("xmin", "ymin", "xmax", "ymax")]
            rows.setdefault(row["image"], []).append(row)
    session = read_log(log_path).get()
    files = frame_files(log_path)

    def label_of(cell) -> str | None:
        name = files.get((session.id, cell.frame))
        candidates = [(iou(cell.box, r["box"]), r) for r in rows.get(name, [])] if cell.box else []
        best_iou, best = max(candidates, key=lambda c: c[0], default=(0.0, None))
        if best is None or best_iou < MIN_IOU:
            return None
        return "" if best["certainty"] == "unsure" else best["label"]

    return write_reviews(log_path, session, label_of, "left unreviewed (label unsure)")

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
