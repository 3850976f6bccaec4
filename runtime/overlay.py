"""Draw the latest result on a frame: legible from 640x480 to 1080p.

Top left: the verdict (class, or uncertain / out of focus / too dark / too bright) with its
smoothed confidence, the instant (this frame) verdict beside it, and the top-3 classes as bars
(smoothed) with a tick for the instant probability. Bottom: model, mode, camera and inference
FPS, latency and dropped frames; a camera outage is shown in red. The classified region is
outlined (always in roi mode; in field mode when it is not the whole frame).
"""

from __future__ import annotations

from dataclasses import dataclass

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
        )


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

    # the status bar
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
    return img
