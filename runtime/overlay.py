"""Draw the latest result on a frame: legible from 640x480 to 1080p.

Top left: the verdict (class, or uncertain / out of focus / too dark / too bright) with its
smoothed confidence, the instant (this frame) verdict beside it, and the top-3 classes as bars
(smoothed) with a tick for the instant probability. Bottom: model, mode, camera and inference
FPS, latency and dropped frames; a camera outage is shown in red. The classified region is
outlined (always in roi mode; in field mode when it is not the whole frame).

Cell mode: a box per white cell coloured by its class, with the class and confidence on a label
of the class colour in black or white, whichever contrasts more (WCAG contrast >= 4.5:1 for every
class colour); dimmed grey when the cell is cut by the border and not counted, amber while
uncertain, amber with ``?`` after the class when the call is confident but not vouched for on
this microscope (``unfamiliar``: counted as its class, not sure). Instead of the verdict, the
count panel (counts and percentages per class, progress to the target, "COUNT COMPLETE" when
reached, and under it the microscope check when its calls are not sure) sits in a strip right
of the frame, so it hides no cell: the cell-mode overlay is wider than the frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from lgld.runtime.results import Result
from lgld.runtime.stats import Snapshot
from lgld.runtime.trust import OK, STATE_LABELS, UNCERTAIN

FONT = cv2.FONT_HERSHEY_SIMPLEX
GREEN = (80, 200, 60)
AMBER = (0, 190, 255)
RED = (60, 60, 235)
WHITE = (255, 255, 255)
GREY = (170, 170, 170)
#: Cell mode: one colour per white-cell class (BGR); other classes are drawn in white.
CLASS_COLOURS = {
    "Basophil": (180, 60, 150), "Eosinophil": (60, 120, 240), "Lymphocyte": (230, 170, 40),
    "Monocyte": (60, 200, 120), "Neutrophil": (200, 200, 60), "unclassified": AMBER,
}


@dataclass
class OverlayInfo:
    """Numbers drawn besides the result (see :meth:`from_snapshot`)."""

    model: str = ""
    mode: str = "field"
    camera_fps: float = 0.0
    inference_fps: float = 0.0
    latency_ms: float = 0.0
    e2e_ms: float = 0.0
    dropped: int = 0
    camera_message: str = ""
    cell_count: dict[str, Any] | None = None  # cell mode: the differential count

    @classmethod
    def from_snapshot(cls, snap: Snapshot) -> OverlayInfo:
        return cls(
            model=snap.model,
            mode=snap.mode,
            camera_fps=snap.camera_fps,
            inference_fps=snap.inference_fps,
            latency_ms=snap.latency_ms,
            e2e_ms=snap.e2e_ms,
            dropped=snap.dropped,
            camera_message="" if snap.camera_ok else snap.camera_message,
            cell_count=snap.cell_count,
        )


BLACK = (0, 0, 0)


def relative_luminance(bgr: tuple[int, int, int]) -> float:
    """WCAG 2 relative luminance of an 8-bit sRGB colour given as BGR."""
    def linear(c: int) -> float:
        v = c / 255
        return v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4

    b, g, r = (linear(c) for c in bgr)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast_ratio(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    """WCAG 2 contrast ratio of two BGR colours (1 to 21)."""
    la, lb = sorted((relative_luminance(a), relative_luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def text_colour_on(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on ``background`` (always >= 4.58:1)."""
    return max((BLACK, WHITE), key=lambda c: contrast_ratio(c, background))


def state_colour(state: str) -> tuple[int, int, int]:
    return GREEN if state == OK else AMBER if state == UNCERTAIN else RED


def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float, colour, thick: int):
    """Anti-aliased text (always drawn on a shaded panel, so it reads on any background)."""
    cv2.putText(img, text, org, FONT, scale, colour, thick, cv2.LINE_AA)


def _shade(img: np.ndarray, x0: int, y0: int, x1: int, y1: int, alpha: float = 0.55) -> None:
    """Darken a rectangle in place (a translucent panel)."""
    h, w = img.shape[:2]
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if x1 > x0 and y1 > y0:
        roi = img[y0:y1, x0:x1]
        cv2.addWeighted(roi, 1 - alpha, np.zeros_like(roi), alpha, 0, dst=roi)


def draw_overlay(
    image: np.ndarray,
    result: Result | None,
    info: OverlayInfo,
    region: tuple[int, int, int, int] | None = None,
) -> np.ndarray:
    """A copy of the BGR image with the result and the numbers drawn on it."""
    img = image.copy()
    h, w = img.shape[:2]
    s = max(0.6, min(w / 1280, h / 720))  # 1.0 at 720p, 1.5 at 1080p, 0.6 at 640x480
    thick = max(1, round(1.6 * s))
    state = result.state if result is not None else "waiting"
    colour = state_colour(state) if result is not None else GREY

    # the classified region
    if region is not None and (info.mode == "roi" or region != (0, 0, w, h)):
        x, y, rw, rh = region
        box_colour = colour if info.mode == "roi" else GREY
        cv2.rectangle(img, (x, y), (x + rw - 1, y + rh - 1), box_colour,
                      max(1, round((3 if info.mode == "roi" else 1) * s)), cv2.LINE_AA)

    if result is not None and result.cells is not None or info.cell_count is not None:
        _draw_cells(img, result, s, thick)
        _status_bar(img, info, s, thick)
        return _count_strip(img, info.cell_count, s, thick)

    # the verdict panel
    pad = round(12 * s)
    line = round(34 * s)
    panel_w = min(w - 2 * pad, round(470 * s))
    rows = 2 + (3 if result is not None and result.probabilities else 0)
    panel_h = pad * 2 + round(48 * s) + (rows - 1) * line
    _shade(img, pad, pad, pad + panel_w, pad + panel_h)
    x0, y = pad * 2, pad + round(44 * s)
    if result is None:
        headline, conf_text = "waiting for frames", ""
    elif result.label is not None:
        headline, conf_text = result.label, f"{100 * (result.confidence or 0):.0f}%"
    else:
        headline = STATE_LABELS.get(result.state, result.state).upper()
        conf_text = f"{100 * result.confidence:.0f}%" if result.confidence is not None else ""
    _text(img, headline, (x0, y), 1.25 * s, colour, thick + 1)
    if conf_text:
        (tw, _), _ = cv2.getTextSize(headline, FONT, 1.25 * s, thick + 1)
        _text(img, conf_text, (x0 + tw + round(14 * s), y), 0.9 * s, colour, thick)

    y += line
    if result is not None and result.probabilities:
        ilabel, iconf = result.instant_top()
        sub = f"smoothed over {result.window} | instant: {ilabel} {100 * (iconf or 0):.0f}%"
    elif result is not None:
        sub = f"focus {result.quality.focus:.1f} | not classified"
    else:
        sub = ""
    _text(img, sub, (x0, y), 0.6 * s, WHITE, max(1, thick - 1))

    if result is not None and result.probabilities:
        name_w = round(150 * s)
        bar_w = panel_w - name_w - round(90 * s)
        bar_h = round(16 * s)
        for cls, p, inst in result.top(3):
            y += line
            _text(img, cls[:14], (x0, y), 0.6 * s, WHITE, max(1, thick - 1))
            bx, by = x0 + name_w, y - bar_h
            cv2.rectangle(img, (bx, by), (bx + bar_w, by + bar_h), GREY, 1)
            fill = round(bar_w * min(1.0, max(0.0, p)))
            bar_colour = colour if cls == result.label else (200, 160, 90)
            if fill > 0:
                cv2.rectangle(img, (bx, by), (bx + fill, by + bar_h), bar_colour, -1)
            ix = bx + round(bar_w * min(1.0, max(0.0, inst)))
            cv2.line(img, (ix, by - round(3 * s)), (ix, by + bar_h + round(3 * s)), WHITE,
                     max(1, round(2 * s)))
            _text(img, f"{100 * p:.0f}%", (bx + bar_w + round(8 * s), y), 0.6 * s, WHITE,
                  max(1, thick - 1))

    _status_bar(img, info, s, thick)
    return img


def _status_bar(img: np.ndarray, info: OverlayInfo, s: float, thick: int) -> None:
    h, w = img.shape[:2]
    pad = round(12 * s)
    bar_h = round(34 * s)
    _shade(img, 0, h - bar_h, w, h, 0.6)
    status = (
        f"{info.model} | {info.mode} | cam {info.camera_fps:.1f} fps | "
        f"inf {info.inference_fps:.1f} fps | {info.latency_ms:.0f} ms (e2e {info.e2e_ms:.0f}) | "
        f"drop {info.dropped}"
    )
    _text(img, status, (pad, h - round(11 * s)), 0.6 * s, WHITE, max(1, thick - 1))
    if info.camera_message:
        _shade(img, 0, h - 2 * bar_h, w, h - bar_h, 0.75)
        _text(img, f"CAMERA: {info.camera_message}"[:90], (pad, h - bar_h - round(11 * s)),
              0.6 * s, RED, max(1, thick - 1))


def _draw_cells(img: np.ndarray, result: Result | None, s: float, thick: int) -> None:
    """Cell boxes with their labels."""
    for cell in (result.cells or []) if result is not None else []:
        x0, y0, x1, y1 = cell["box"]
        state, label = cell["state"], cell.get("class")
        colour = CLASS_COLOURS.get(label or "", WHITE)
        if state == "partial":
            colour = GREY
        elif state in ("uncertain", "unfamiliar"):
            colour = AMBER
        if state == "partial":  # dimmed: drawn thin and translucent
            layer = img.copy()
            cv2.rectangle(layer, (x0, y0), (x1 - 1, y1 - 1), colour, max(1, thick - 1),
                          cv2.LINE_AA)
            cv2.addWeighted(layer, 0.5, img, 0.5, 0, dst=img)
            continue
        cv2.rectangle(img, (x0, y0), (x1 - 1, y1 - 1), colour, thick + 1, cv2.LINE_AA)
        mark = "?" if state == "unfamiliar" else ""
        text = f"{label or '?'}{mark} {100 * cell.get('confidence', 0):.0f}%"
        if cell.get("counted"):
            text += " *"
        (tw, th), _ = cv2.getTextSize(text, FONT, 0.55 * s, max(1, thick - 1))
        ty = y0 - round(6 * s) if y0 > th + round(12 * s) else y0 + th + round(8 * s)
        cv2.rectangle(img, (x0, ty - th - round(5 * s)), (x0 + tw + round(8 * s),
                                                           ty + round(5 * s)), colour, -1)
        _text(img, text, (x0 + round(4 * s), ty), 0.55 * s, text_colour_on(colour),
              max(1, thick - 1))


#: Background of the count strip beside the frame (BGR, opaque).
STRIP = (32, 32, 32)


def _count_strip(img: np.ndarray, count: dict[str, Any] | None, s: float,
                 thick: int) -> np.ndarray:
    """The frame with the count panel in a strip on its right (the frame when no count)."""
    if count is None:
        return img
    pad = round(12 * s)
    panel_w = round(330 * s)
    strip = np.full((img.shape[0], panel_w + 2 * pad, 3), STRIP, np.uint8)
    _count_panel(strip, count, s, thick)
    return np.hstack([img, strip])


def _count_panel(img: np.ndarray, count: dict[str, Any], s: float, thick: int) -> None:
    """Counts and percentages per class and the progress to the target, on the strip."""
    pad = round(12 * s)
    line = round(26 * s)
    classes = [k for k in count["counts"] if k != "unclassified"] + ["unclassified"]
    panel_w = img.shape[1] - 2 * pad
    x0, y = pad, pad + round(34 * s)
    total, target = count["total"], count["target"]
    head = "COUNT COMPLETE" if count["complete"] else "Differential count"
    _text(img, f"{head}  {total}/{target}", (x0, y), 0.75 * s,
          GREEN if count["complete"] else WHITE, thick)
    y += round(12 * s)
    bar_w = panel_w - 2 * pad
    cv2.rectangle(img, (x0, y), (x0 + bar_w, y + round(10 * s)), GREY, 1)
    fill = round(bar_w * min(1.0, total / max(1, target)))
    if fill:
        cv2.rectangle(img, (x0, y), (x0 + fill, y + round(10 * s)),
                      GREEN if count["complete"] else (200, 160, 90), -1)
    y += round(12 * s)
    for cls in classes:
        y += line
        colour = CLASS_COLOURS.get(cls, WHITE)
        cv2.rectangle(img, (x0, y - round(12 * s)), (x0 + round(12 * s), y), colour, -1)
        _text(img, cls[:14], (x0 + round(20 * s), y), 0.55 * s, WHITE, max(1, thick - 1))
        _text(img, f"{count['counts'].get(cls, 0):>3}", (x0 + round(185 * s), y), 0.55 * s,
              WHITE, max(1, thick - 1))
        _text(img, f"{count['percent'].get(cls, 0.0):5.1f}%", (x0 + round(235 * s), y),
              0.55 * s, WHITE, max(1, thick - 1))
    _domain_lines(img, count.get("domain"), x0, y + line, s, thick)


def _domain_lines(img: np.ndarray, domain: dict[str, Any] | None, x: int, y: int, s: float,
                  thick: int) -> None:
    """Under the count: why its calls are not shown as sure (a new microscope, or checking)."""
    d = domain or {}
    state = d.get("state")
    if state == "new microscope":
        lines = ["NEW MICROSCOPE: types not", "validated, no call is sure"]
    elif state == "checking":
        lines = [f"checking microscope {d.get('cells', 0)}/{d.get('needed', '?')}",
                 "? = not sure on this microscope"]
    else:
        return
    for i, text in enumerate(lines):
        _text(img, text, (x, y + i * round(24 * s)), 0.55 * s,
              AMBER if state == "checking" else RED, max(1, thick - 1))
