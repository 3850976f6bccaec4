"""A count session as a lab report: one self-contained HTML file, a per-cell CSV, a JSON summary.

The HTML has no external assets and no scripts: charts are inline SVG, crops are inlined as small
base64 JPEG thumbnails, so the file can be mailed or archived as is. Galleries show the least
confident cells first (the ones worth a second look) and are capped per class so a huge session
still gives a small file; the report says when a gallery was capped.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lgld.runtime.config import SourceSection
from lgld.runtime.core.countlog import UNCLASSIFIED, Cell, Session, SessionLog
from lgld.runtime.core.files import file_sha256
from lgld.runtime.core.modelinfo import lgld_version
from lgld.runtime.core.precision import model_card, model_label
from lgld.runtime.core.untrusted import (
    UntrustedError,
    check_pixels,
    inside,
    read_bounded,
    shown,
    utf8_safe,
)
from lgld.runtime.core.zoo import zoo_dir

THUMB_PX = 96  # longest side of a gallery thumbnail
THUMB_QUALITY = 72  # JPEG quality: about 3-4 KB per PBC crop at 96 px
GALLERY_CAP = 150  # thumbnails per class at most (keeps a 10,000-cell report a few MB)
HIST_BINS = 20
PALETTE = ["#3b6ea8", "#c0504d", "#4f9a5b", "#8064a2", "#d08a2e", "#2c9fa8", "#a0527a", "#6b7b3a"]
GREY = "#8a8f98"
MAX_PIXELS = SourceSection.max_image_pixels  # a crop's pixel limit: the images: source's
MAX_CROP_BYTES = 64 << 20  # a crop file larger than this is not read (crops are ~30 KB)
MAX_CARD_BYTES = 1 << 20  # a model card larger than this is not embedded
MAX_MODEL_BYTES = 1 << 30  # a model file larger than this is not hashed to find its card
MAX_PROB_COLUMNS = 256  # the CSV's probability columns: the model's classes, at most this many
CSV_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet reads these as a formula


@dataclass
class CropStats:
    """How many counted cells have a crop file, lost one, or never had one saved."""

    found: int = 0
    missing: int = 0
    none: int = 0


def crop_file(root: str | os.PathLike, logged: str) -> Path | None:
    """The file a log's crop path names, looked up inside ``root`` only: the path itself, else
    the longest tail of it that exists there (a crop folder copied off the Pi without the
    folders above it). None when no such file is inside ``root``: an absolute path, ``..`` or a
    symbolic link never leads out of it."""
    direct = inside(root, logged)
    if direct is not None and direct.is_file():
        return direct
    parts = [p for p in Path(logged).parts if p not in (os.sep, "..", ".")]
    for k in range(len(parts)):
        candidate = inside(root, Path(*parts[k:]))
        if candidate is not None and candidate.is_file():
            return candidate
    return None


class CropFiles:
    """Where each cell's crop file is: inside the crop folder (the log's own folder unless
    ``root`` names another), never outside it (:func:`crop_file`); each looked up once."""

    def __init__(self, log: SessionLog, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else log.path.parent
        self._files: dict[str, Path | None] = {}

    def path(self, cell: Cell) -> Path | None:
        """The cell's crop file; None when none was saved or it is not inside the folder."""
        if not cell.crop:
            return None
        if cell.crop not in self._files:
            self._files[cell.crop] = crop_file(self.root, cell.crop)
        return self._files[cell.crop]

    def found(self, cell: Cell) -> bool | None:
        """True/False whether the crop file is there; None when no crop was saved."""
        return None if not cell.crop else self.path(cell) is not None

    def stats(self, session: Session) -> CropStats:
        stats = CropStats()
        for cell in session.cells:
            found = self.found(cell)
            if found is None:
                stats.none += 1
            elif found:
                stats.found += 1
            else:
                stats.missing += 1
        return stats


def percentages(counts: dict[str, int]) -> dict[str, float]:
    total = sum(counts.values())
    return {k: (100.0 * v / total if total else 0.0) for k, v in counts.items()}


def _iso(when: datetime | None) -> str | None:
    return when.isoformat() if when is not None else None


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def summary(log: SessionLog, session: Session, crops: CropFiles | None = None) -> dict[str, Any]:
    """The session's report as plain data (the --json output and the HTML's numbers)."""
    model_counts = session.model_counts()
    reviewed_counts = session.reviewed_counts()
    stats = (crops or CropFiles(log)).stats(session)
    return {
        "session": session.id,
        "sample": session.sample,
        "start": _iso(session.start),
        "end": _iso(session.finish),
        "ended": session.ended,
        "duration_s": _round(session.duration_s(), 1),
        "cells_per_min": _round(session.cells_per_minute(), 2),
        "target": session.target,
        "time_to_target_s": _round(session.time_to_target_s(), 1),
        "frames": session.frames,
        "model": {
            "label": model_label(session.model.path, session.model.precision)
            if session.model.path else None,
            "name": session.model.name,
            "path": session.model.path,
            "sha256": session.model.sha256,
            "precision": session.model.precision,
            "classes": session.model.classes,
        },
        "calibration": session.calibration,
        "classes": session.classes(),
        "cells": len(session.cells),
        "counted_at_end": session.counted_at_end,
        "model_counts": model_counts,
        "model_percent": {k: round(v, 2) for k, v in percentages(model_counts).items()},
        "reviewed_total": sum(reviewed_counts.values()),
        "reviewed_counts": reviewed_counts,
        "reviewed_percent": {k: round(v, 2) for k, v in percentages(reviewed_counts).items()},
        "review": {
            "events": session.reviews,
            "cells_reviewed": session.reviewed_cells,
            "corrections": session.corrections,
            "rejected": session.rejected,
            "orphan_events": session.orphan_reviews,
        },
        "calls_shown": session.sure_calls(),  # ok (sure) / uncertain / unfamiliar, when counted
        "confidence": {
            "bins": HIST_BINS,
            "histogram": session.confidence_histogram(HIST_BINS),
            "by_class": {
                k: {"mean": round(m, 4), "min": round(lo, 4)}
                for k, (m, lo) in session.confidence_by_class().items()
            },
        },
        "crops": {"found": stats.found, "missing": stats.missing, "none": stats.none},
        "log": {
            "path": str(log.path),
            "files": [str(f) for f in log.files],
            "lines": log.lines,
            "skipped_lines": log.skipped,
            "other_records": log.other_records,
            "sessions": log.ids(),
        },
        "lgld_version": lgld_version(),
    }


# --- CSV ---------------------------------------------------------------------------------
def csv_text(value: Any) -> Any:
    """A cell of the CSV: a text a spreadsheet would read as a formula (``= + - @``, tab, CR
    first) is quoted as text with a leading apostrophe; plain numbers stay numbers."""
    if not isinstance(value, str) or not value.startswith(CSV_FORMULA_START):
        return value
    try:
        float(value)
        return value
    except ValueError:
        return "'" + value


def probability_columns(session: Session) -> list[str]:
    """The CSV's probability columns: the model's classes (the classes seen when the log names
    none), at most MAX_PROB_COLUMNS, so the table never grows as classes x cells."""
    names = session.model.classes or session.classes()
    return [c for c in dict.fromkeys(names) if c != UNCLASSIFIED][:MAX_PROB_COLUMNS]


def cells_csv(log: SessionLog, session: Session, crops: CropFiles | None = None) -> str:
    """One row per counted cell: model and reviewed class, confidence, probabilities, crop."""
    classes = probability_columns(session)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        ["session", "track", "time", "frame", "frames_seen", "model_class", "confidence",
         "review", "reviewed_class", "x0", "y0", "x1", "y1", "crop", "crop_found"]
        + [csv_text(f"p_{c}") for c in classes]
    )
    crops = crops or CropFiles(log)
    for cell in session.cells:
        found = crops.found(cell)
        box = cell.box or ["", "", "", ""]
        row = [session.id, cell.track if cell.track is not None else "", _iso(cell.time) or "",
               cell.frame if cell.frame is not None else "",
               cell.frames_seen if cell.frames_seen is not None else "",
               cell.model_class, "" if cell.confidence is None else f"{cell.confidence:.4f}",
               cell.review or "", "rejected" if cell.rejected else cell.reviewed_class, *box,
               cell.crop or "", "" if found is None else int(found)]
        row += [f"{cell.probs[c]:.4f}" if c in cell.probs else "" for c in classes]
        writer.writerow([csv_text(v) for v in row])
    return utf8_safe(out.getvalue())


# --- HTML pieces ----------------------------------------------------------------------------
def thumbnail(path: str | os.PathLike | None, max_pixels: int = MAX_PIXELS) -> str | None:
    """A crop file as a data: URI of a small JPEG, or None when it cannot be read, is larger
    than MAX_CROP_BYTES or its header claims more than ``max_pixels`` (checked before
    decoding, as for the images: source)."""
    if path is None:
        return None
    try:
        data = read_bounded(path, MAX_CROP_BYTES)
        check_pixels(data, max_pixels, str(path))
        buffer = np.frombuffer(data, np.uint8)
        # JPEG decodes at half size for almost nothing; fall back to full size for small crops
        image = cv2.imdecode(buffer, cv2.IMREAD_REDUCED_COLOR_2)
        if image is not None and max(image.shape[:2]) < THUMB_PX:
            image = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    except (OSError, UntrustedError, cv2.error):
        return None
    if image is None:
        return None
    h, w = image.shape[:2]
    scale = THUMB_PX / max(h, w)
    if scale < 1:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, THUMB_QUALITY])
    if not ok:
        return None
    return "data:image/jpeg;base64," + base64.b64encode(jpeg.tobytes()).decode("ascii")


def class_colours(classes: list[str]) -> dict[str, str]:
    colours: dict[str, str] = {}
    for i, name in enumerate(c for c in classes if c != UNCLASSIFIED):
        colours[name] = PALETTE[i % len(PALETTE)]
    colours[UNCLASSIFIED] = GREY
    return colours


def _fmt_time(when: datetime | None) -> str:
    if when is None:
        return "unknown"
    zone = when.tzname()
    text = when.strftime("%Y-%m-%d %H:%M:%S")
    return f"{text} {zone}" if zone else text


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def bar_chart(classes: list[str], model: dict[str, int], reviewed: dict[str, int],
              colours: dict[str, str]) -> str:
    """Horizontal grouped bars (model vs reviewed %) as inline SVG."""
    model_pct, reviewed_pct = percentages(model), percentages(reviewed)
    scale = max([*model_pct.values(), *reviewed_pct.values(), 1.0])  # longest bar = full width
    label_w, bar_w, row_h, top = 96, 300, 40, 26
    width, height = label_w + bar_w + 70, top + row_h * len(classes) + 8
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        'role="img" aria-label="counts per class">',
        f'<rect x="{label_w}" y="6" width="12" height="10" fill="#9fb3c8"/>'
        f'<text x="{label_w + 16}" y="15" class="legend">model</text>'
        f'<rect x="{label_w + 70}" y="6" width="12" height="10" fill="#334"/>'
        f'<text x="{label_w + 86}" y="15" class="legend">reviewed</text>',
    ]
    for i, name in enumerate(classes):
        y = top + i * row_h
        colour = colours.get(name, GREY)
        parts.append(f'<text x="{label_w - 8}" y="{y + 19}" text-anchor="end" '
                     f'class="label">{escape(name)}</text>')
        for j, (pct, n, fill) in enumerate((
            (model_pct[name], model[name], colour + "66"),
            (reviewed_pct[name], reviewed[name], colour),
        )):
            by = y + 4 + j * 15
            w = bar_w * pct / scale
            parts.append(f'<rect x="{label_w}" y="{by}" width="{w:.1f}" height="13" '
                         f'fill="{fill}" rx="2"/>')
            parts.append(f'<text x="{label_w + w + 5:.1f}" y="{by + 11}" class="value">'
                         f'{pct:.1f}% ({n})</text>')
    parts.append(f'<line x1="{label_w}" y1="{top - 2}" x2="{label_w}" y2="{height - 6}" '
                 'stroke="#bbb"/>')
    parts.append("</svg>")
    return "".join(parts)


def histogram_chart(hist: list[int]) -> str:
    """Confidence histogram over [0, 1] as inline SVG."""
    left, bottom, plot_w, plot_h = 36, 24, 440, 120
    width, height = left + plot_w + 12, plot_h + bottom + 12
    peak = max(hist) if any(hist) else 1
    step = plot_w / len(hist)
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" '
             f'height="{height}" role="img" aria-label="confidence histogram">']
    for i, n in enumerate(hist):
        h = plot_h * n / peak
        x = left + i * step
        parts.append(f'<rect x="{x + 1:.1f}" y="{10 + plot_h - h:.1f}" width="{step - 2:.1f}" '
                     f'height="{h:.1f}" fill="#3b6ea8"><title>{i / len(hist):.2f}-'
                     f'{(i + 1) / len(hist):.2f}: {n}</title></rect>')
    base = 10 + plot_h
    parts.append(f'<line x1="{left}" y1="{base}" x2="{left + plot_w}" y2="{base}" '
                 'stroke="#999"/>')
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = left + plot_w * tick
        parts.append(f'<text x="{x:.1f}" y="{base + 16}" text-anchor="middle" '
                     f'class="value">{tick:.2f}</text>')
    parts.append(f'<text x="{left - 6}" y="18" text-anchor="end" class="value">{peak}</text>')
    parts.append(f'<text x="{left - 6}" y="{base}" text-anchor="end" class="value">0</text>')
    parts.append("</svg>")
    return "".join(parts)


def _is_model(path: Path, sha256: str) -> bool:
    """True when ``path`` is a regular .onnx file (of a sane size) whose sha256 is ``sha256``."""
    try:
        return (path.suffix == ".onnx" and path.is_file()
                and path.stat().st_size <= MAX_MODEL_BYTES and file_sha256(path) == sha256)
    except (OSError, ValueError):
        return False


def find_model_card(session: Session) -> tuple[Path, str] | None:
    """The model's card: the .md beside the model file the log names, or the installed zoo's
    card of the same file name (a log copied off the Pi), each only where the .onnx beside it
    is the session's model (its sha256 matches the log's): a crafted ``model.path`` never
    makes the report embed some other file."""
    sha256 = session.model.sha256
    if not session.model.path or not sha256:
        return None
    try:
        model = Path(session.model.path)
        models = [model] if model.name else []
    except (TypeError, ValueError):
        models = []
    zoo = zoo_dir()
    if zoo is not None and models and inside(zoo, models[0].name) is not None:
        models.append(zoo / models[0].name)
    for found in models:
        if not _is_model(found, sha256):
            continue
        card = model_card(found)  # NAME.md, shared by NAME.onnx and NAME.int8.onnx
        try:
            if card.is_file() and card.stat().st_size <= MAX_CARD_BYTES:
                return card, card.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError, ValueError):
            continue
    return None


def _h(text: str, limit: int = 200) -> str:
    """A text from the log, fit to show (:func:`shown`) and HTML-escaped."""
    return escape(shown(text, limit))


def _kv_table(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{escape(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="kv">{body}</table>'


def _gallery_cell(crops: CropFiles, cell: Cell, colours: dict[str, str]) -> str:
    uri = thumbnail(crops.path(cell)) if crops.found(cell) else None
    if uri is not None:
        img = f'<img src="{uri}" alt="track {escape(str(cell.track))}">'
    else:
        reason = "no crop saved" if not cell.crop else "crop missing"
        img = f'<div class="missing">{reason}</div>'
    conf = "" if cell.confidence is None else f"{cell.confidence:.2f}"
    note = ""
    if cell.rejected:
        note = f'<span class="tag rej">rejected · was {escape(cell.model_class)}</span>'
    elif cell.review == "reclassify" and cell.corrected:
        note = f'<span class="tag fix">was {escape(cell.model_class)}</span>'
    elif cell.review is not None:
        note = '<span class="tag ok">confirmed</span>'
    track = "" if cell.track is None else f"#{escape(str(cell.track))} "
    colour = colours.get(cell.reviewed_class or cell.model_class, GREY)
    return (f'<figure style="border-color:{colour}">{img}<figcaption>{track}'
            f'<b>{conf}</b>{note}</figcaption></figure>')


def galleries(crops: CropFiles, session: Session, colours: dict[str, str]) -> str:
    """Per reviewed class, then the rejected cells: thumbnails, least confident first."""
    groups: dict[str, list[Cell]] = {name: [] for name in session.classes()}
    rejected: list[Cell] = []
    for cell in session.cells:
        name = cell.reviewed_class
        (rejected if name is None else groups[name]).append(cell)
    sections = []
    titled = [(name, cells, name) for name, cells in groups.items()]
    titled.append(("Rejected (artefacts)", rejected, None))
    for title, cells, key in titled:
        if not cells:
            continue
        cells = sorted(cells, key=lambda c: (c.confidence if c.confidence is not None else 2.0))
        visible = cells[:GALLERY_CAP]
        capped = (f' <span class="cap">showing the {len(visible)} least confident of '
                  f'{len(cells)}</span>' if len(cells) > len(visible) else "")
        dot = colours.get(key, "#b33") if key else "#b33"
        figures = "".join(_gallery_cell(crops, c, colours) for c in visible)
        sections.append(
            f'<section class="gallery"><h3><span class="dot" style="background:{dot}"></span>'
            f'{escape(title)} <span class="n">{len(cells)}</span>{capped}</h3>'
            f'<div class="grid">{figures}</div></section>'
        )
    return "".join(sections) or '<p class="muted">No counted cells.</p>'


CSS = """
*{box-sizing:border-box}
body{font:14px/1.45 -apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
 color:#1d2330;background:#f3f4f6;margin:0}
main{max-width:1060px;margin:24px auto;background:#fff;padding:28px 36px 36px;
 border:1px solid #dde1e6;border-radius:6px}
header{border-bottom:2px solid #1d2330;padding-bottom:12px;margin-bottom:18px}
h1{font-size:22px;margin:0 0 4px}
h2{font-size:16px;margin:26px 0 10px;padding-bottom:4px;border-bottom:1px solid #e3e6ea}
h3{font-size:14px;margin:16px 0 8px;display:flex;align-items:center;gap:8px}
.sub{color:#555;margin:0}
.warn{color:#7a5b00;font-size:12px;margin-top:6px}
.cards{display:grid;grid-template-columns:repeat(7,1fr);gap:10px;margin:8px 0 4px}
.card{border:1px solid #e3e6ea;border-radius:5px;padding:8px 10px;background:#fafbfc}
.card .v{font-size:20px;font-weight:600}
.card .k{font-size:11px;color:#667;text-transform:uppercase;letter-spacing:.03em}
table{border-collapse:collapse}
table.counts{width:100%;margin:6px 0}
.counts th,.counts td{white-space:nowrap;padding:5px 10px;border-bottom:1px solid #eceef1;
 text-align:right}
.counts th:first-child,.counts td:first-child{text-align:left}
.counts thead th{font-size:12px;color:#556;border-bottom:2px solid #d5d9de}
.counts tfoot td{font-weight:600;border-top:2px solid #d5d9de}
.delta{color:#a33}
.kv th{text-align:left;font-weight:500;color:#556;padding:3px 16px 3px 0;vertical-align:top;
 white-space:nowrap}
.kv td{padding:3px 0}
code{font:12px ui-monospace,Menlo,Consolas,monospace;word-break:break-all}
.two{display:grid;grid-template-columns:1fr 1fr;gap:28px}
.wide{grid-template-columns:1.15fr 1fr}
.chart text{font-size:12px;fill:#333}
.chart .legend,.chart .value{font-size:11px;fill:#555}
.dot{display:inline-block;width:11px;height:11px;border-radius:50%}
.n{color:#667;font-weight:400}
.cap{color:#7a5b00;font-weight:400;font-size:12px}
.grid{display:flex;flex-wrap:wrap;gap:6px}
figure{margin:0;width:100px;border:2px solid #ccc;border-radius:4px;background:#fafafa;
 overflow:hidden}
figure img{display:block;width:96px;height:96px;object-fit:cover}
figure .missing{width:96px;height:96px;display:flex;align-items:center;justify-content:center;
 font-size:11px;color:#a33;background:repeating-linear-gradient(45deg,#fff,#fff 6px,#f4e4e4 6px,
 #f4e4e4 12px)}
figcaption{font-size:11px;padding:2px 4px;color:#444;line-height:1.3}
.tag{display:block;font-size:10px}
.tag.fix{color:#9a5b00}.tag.rej{color:#b33}.tag.ok{color:#2c7a3d}
details{margin-top:8px}summary{cursor:pointer;color:#3b6ea8}
pre{white-space:pre-wrap;font:12px/1.4 ui-monospace,Menlo,Consolas,monospace;background:#f7f8fa;
 padding:10px;border:1px solid #e3e6ea;border-radius:4px;max-height:480px;overflow:auto}
.muted{color:#778}
footer{margin-top:28px;font-size:12px;color:#778;border-top:1px solid #e3e6ea;padding-top:8px}
@media print{body{background:#fff}main{border:0;margin:0;max-width:none}}
"""


def _counts_table(data: dict[str, Any], colours: dict[str, str]) -> str:
    model_pct = percentages(data["model_counts"])  # unrounded: one rounding, here
    reviewed_pct = percentages(data["reviewed_counts"])
    rows = []
    for name in data["classes"]:
        m, r = data["model_counts"][name], data["reviewed_counts"][name]
        delta = r - m
        delta_txt = f'<span class="delta">{delta:+d}</span>' if delta else ""
        rows.append(
            f'<tr><td><span class="dot" style="background:{colours.get(name, GREY)}"></span> '
            f'{escape(name)}</td><td>{m}</td><td>{model_pct[name]:.1f}%</td>'
            f'<td>{r}</td><td>{reviewed_pct[name]:.1f}%</td><td>{delta_txt}</td></tr>'
        )
    rejected = data["review"]["rejected"]
    rows.append(f'<tr><td class="muted">rejected (artefacts)</td><td></td><td></td>'
                f'<td class="muted">{rejected}</td><td></td>'
                f'<td>{f"<span class=delta>-{rejected}</span>" if rejected else ""}</td></tr>')
    return (
        '<table class="counts"><thead><tr><th>class</th><th>model</th><th>model %</th>'
        '<th>reviewed</th><th>reviewed %</th><th>change</th></tr></thead><tbody>'
        + "".join(rows)
        + f'</tbody><tfoot><tr><td>total</td><td>{data["cells"]}</td>'
        f'<td>{"100%" if data["cells"] else "-"}</td><td>{data["reviewed_total"]}</td>'
        f'<td>{"100%" if data["reviewed_total"] else "-"}</td><td></td></tr></tfoot></table>'
    )


def _microscope_html(micro: dict[str, Any] | None) -> str:
    """The session's microscope check and this model's stored validation, as one paragraph."""
    if not micro:
        return ""
    text = f"Microscope: {micro.get('state', '?')}. {micro.get('message', '')}"
    for rec in micro.get("validations", [])[-1:]:
        v = rec.get("validation", {})
        text += (f" Validation stored for this model (session {rec.get('session')}): "
                 f"{v.get('right')}/{v.get('reviewed')} reviewed cells right, 95% CI "
                 f"{100 * v.get('ci95', [0, 0])[0]:.0f}-{100 * v.get('ci95', [0, 0])[1]:.0f}%.")
    return f'<p class="sub">{_h(text, 600)}</p>'


def _cards_html(session: Session, data: dict[str, Any]) -> str:
    target = session.target
    reached = target is not None and len(session.cells) >= target
    cards = [
        ("cells counted", str(data["cells"])),
        ("after review", str(data["reviewed_total"])),
        ("target", f"{target} {'✓' if reached else ''}" if target else "none"),
        ("duration", _fmt_duration(data["duration_s"])),
        ("cells / min", f'{data["cells_per_min"]:.1f}' if data["cells_per_min"] else "n/a"),
        ("corrections", f'{data["review"]["corrections"]}'),
        ("shown as sure", f'{data["calls_shown"]["ok"]} of {data["cells"]}'),
    ]
    return "".join(f'<div class="card"><div class="v">{escape(v)}</div>'
                   f'<div class="k">{escape(k)}</div></div>' for k, v in cards)


def _session_rows(session: Session, data: dict[str, Any]) -> list[tuple[str, str]]:
    state = "ended" if session.ended else "no session_end (ends at its last event)"
    rows = [
        ("session", f"<code>{_h(session.id)}</code>"),
        ("sample", _h(session.sample) or '<span class="muted">(no label)</span>'),
        ("start", escape(_fmt_time(session.start))),
        ("end", f"{escape(_fmt_time(session.finish))} <span class='muted'>({state})</span>"),
        ("frames classified", str(session.frames)),
    ]
    ttt = data["time_to_target_s"]
    if ttt is not None:
        rows.append(("time to target", _fmt_duration(ttt)))
    if data["counted_at_end"] is not None and data["counted_at_end"] != data["cells"]:
        rows.append(("live count at end", f'{data["counted_at_end"]} '
                     '<span class="muted">(differs from the cell events read)</span>'))
    return rows


def _review_rows(data: dict[str, Any]) -> list[tuple[str, str]]:
    review = data["review"]
    rows = [
        ("review events", str(review["events"])),
        ("cells reviewed", str(review["cells_reviewed"])),
        ("reclassified", str(review["corrections"] - review["rejected"])),
        ("rejected", str(review["rejected"])),
    ]
    if review["orphan_events"]:
        rows.append(("reviews of unknown tracks", str(review["orphan_events"])))
    return rows


def _model_html(session: Session) -> str:
    """The model's table and its card (when found beside the model file)."""
    model = session.model
    rows = [
        ("model", _h(model_label(model.path, model.precision)) if model.path else "unknown"),
        ("name", _h(model.name) or '<span class="muted">unknown</span>'),
        ("precision", _h(model.precision) or "unknown"),
        ("sha256", f"<code>{_h(model.sha256) or 'unknown'}</code>"),
        ("file", f"<code>{_h(model.path, 400)}</code>" if model.path else "unknown"),
        ("classes", escape(", ".join(model.classes)) or "unknown"),
    ]
    card = find_model_card(session)
    if card is None:
        return _kv_table(rows) + '<p class="muted">Model card not found beside the model file.</p>'
    path, text = card
    heading = next((ln.lstrip("# ").strip() for ln in text.splitlines()
                    if ln.startswith("# ")), path.name)
    return (f"{_kv_table(rows)}<p>{escape(heading)}</p><details><summary>model card "
            f"<code>{escape(path.name)}</code></summary><pre>{escape(text)}</pre></details>")


def _calibration_html(session: Session) -> str:
    if not session.calibration:
        return ('<p class="muted">No calibration recorded: the session ran with the '
                "configured defaults.</p>")
    return _kv_table([(str(k), escape(v if isinstance(v, str) else json.dumps(v)))
                      for k, v in session.calibration.items()])


def _confidence_table(data: dict[str, Any]) -> str:
    by_class = data["confidence"]["by_class"]
    rows = "".join(
        f'<tr><td>{escape(name)}</td><td>{by_class[name]["mean"]:.3f}</td>'
        f'<td>{by_class[name]["min"]:.3f}</td></tr>'
        for name in data["classes"] if name in by_class
    )
    return ('<table class="counts"><thead><tr><th>model class</th><th>mean</th>'
            f'<th>lowest</th></tr></thead><tbody>{rows}</tbody></table>')


def _log_rows(data: dict[str, Any]) -> list[tuple[str, str]]:
    crop_counts = data["crops"]
    crop_note = f'{crop_counts["found"]} crops found'
    if crop_counts["missing"]:
        crop_note += f', <b>{crop_counts["missing"]} crop files missing</b>'
    if crop_counts["none"]:
        crop_note += f', {crop_counts["none"]} cells without a saved crop'
    logd = data["log"]
    files = ", ".join(Path(f).name for f in logd["files"])
    return [
        ("log", f"<code>{escape(logd['path'])}</code>"),
        ("files read", escape(files)),
        ("lines", str(logd["lines"])),
        ("skipped lines", f"{logd['skipped_lines']} (torn or not lgld records)"),
        ("other records", f"{logd['other_records']} (outside count sessions)"),
        ("sessions in log", str(len(logd["sessions"]))),
        ("crops", crop_note),
    ]


def render_html(log: SessionLog, session: Session, crops: CropFiles | None = None,
                data: dict[str, Any] | None = None) -> str:
    """The whole report as one self-contained HTML document (``data``: its summary, when the
    caller already has it)."""
    crops = crops or CropFiles(log)
    data = data or summary(log, session, crops)
    classes = data["classes"]
    colours = class_colours(classes)
    title = f"Differential count · {shown(session.sample or session.id)}"
    model = session.model
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return utf8_safe(f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title><style>{CSS}</style></head>
<body><main>
<header><h1>{escape(title)}</h1>
<p class="sub">Session <code>{_h(session.id)}</code> · {escape(_fmt_time(session.start))}
 · model {_h(model.name or 'unknown')} ({_h(model.precision or '?')})</p>
<p class="warn">Research and education software, not a diagnostic device.</p></header>
{_microscope_html(data.get("microscope"))}
<div class="cards">{_cards_html(session, data)}</div>
<h2>Differential count</h2>
<div class="two wide"><div>{_counts_table(data, colours)}</div>
<div>{bar_chart(classes, data["model_counts"], data["reviewed_counts"], colours)}</div></div>
<p class="muted">Model: every counted cell as classified live. Reviewed: after the operator's
corrections (the last review of a cell wins; rejected artefacts leave the count).
Percentages are of each column's total.</p>
<div class="two"><div><h2>Session</h2>{_kv_table(_session_rows(session, data))}</div>
<div><h2>Review</h2>{_kv_table(_review_rows(data))}</div></div>
<h2>Confidence</h2>
<div class="two"><div>{histogram_chart(data["confidence"]["histogram"])}
<p class="muted">Counted cells per confidence bin (mean class probability of the track).</p>
</div><div>{_confidence_table(data)}</div></div>
<div class="two"><div><h2>Model</h2>{_model_html(session)}</div>
<div><h2>Calibration</h2>{_calibration_html(session)}</div></div>
<h2>Cells</h2>
<p class="muted">Grouped by reviewed class, least confident first; frame colour = class,
caption = track and confidence.</p>
{galleries(crops, session, colours)}
<h2>Source</h2>{_kv_table(_log_rows(data))}
<footer>Generated {generated} by lgld-report {escape(data["lgld_version"])} from the JSONL log
alone.</footer>
</main></body></html>
""")
