"""Which part of a frame is classified, and cutting it out."""

from __future__ import annotations

from typing import Protocol

import numpy as np

Region = tuple[int, int, int, int]  # x, y, w, h in display pixels


class RegionError(ValueError):
    """The configured region does not fit the frame (one-line reason)."""


class HasImages(Protocol):
    image: np.ndarray
    lores: np.ndarray | None


def model_region(
    shape: tuple[int, ...],
    mode: str,
    field_crop: str = "square",
    roi: list[int] | tuple[int, ...] = (),
    roi_size: float = 0.5,
) -> Region:
    """The classified region (x, y, w, h) of a frame of the given shape."""
    h, w = shape[:2]
    if mode == "field":
        if field_crop == "full":
            return 0, 0, w, h
        s = min(w, h)
        return (w - s) // 2, (h - s) // 2, s, s
    if roi:
        x, y, rw, rh = (int(v) for v in roi)
        x2, y2 = min(x + rw, w), min(y + rh, h)
        if x2 - x < 8 or y2 - y < 8:
            raise RegionError(f"ROI {x},{y},{rw},{rh} lies outside the {w}x{h} frame")
        return x, y, x2 - x, y2 - y
    s = max(8, round(min(w, h) * roi_size))
    return (w - s) // 2, (h - s) // 2, s, s


def crop_region(frame: HasImages, region: Region, use_lores: bool) -> np.ndarray:
    """The region of the frame; from the low-resolution copy when allowed and present."""
    x, y, w, h = region
    if use_lores and frame.lores is not None:
        fh, fw = frame.image.shape[:2]
        lh, lw = frame.lores.shape[:2]
        sx, sy = lw / fw, lh / fh
        x0, y0 = round(x * sx), round(y * sy)
        x1, y1 = max(x0 + 1, round((x + w) * sx)), max(y0 + 1, round((y + h) * sy))
        return frame.lores[y0:y1, x0:x1]
    return frame.image[y : y + h, x : x + w]
