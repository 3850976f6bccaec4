"""The latest frame as a viewer sees it: overlaid and JPEG-encoded, shared by every viewer.

One encode per frame however many viewers watch (MJPEG clients, snapshots, the preview
window), and nothing at all when nobody watches.
"""

from __future__ import annotations

import threading

import cv2
import numpy as np

from lgld.runtime.config import HttpSection
from lgld.runtime.overlay import OverlayInfo, draw_overlay
from lgld.runtime.pipeline import Pipeline
from lgld.runtime.results import Result
from lgld.runtime.sources import Frame


class Renderer:
    """Overlay drawing and JPEG encoding of a pipeline's frames, cached per frame and result."""

    def __init__(self, pipeline: Pipeline, jpeg_quality: int = HttpSection.jpeg_quality) -> None:
        self.pipeline = pipeline
        self.jpeg_quality = jpeg_quality
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[tuple, bytes]] = {}

    def info(self) -> OverlayInfo:
        return OverlayInfo.from_snapshot(self.pipeline.snapshot())

    def overlay(self, frame: Frame, result: Result | None) -> np.ndarray:
        try:
            region = self.pipeline.region_for(frame.image.shape)
        except Exception:
            region = None
        return draw_overlay(frame.image, result, self.info(), region)

    def jpeg(self, frame: Frame, result: Result | None, raw: bool = False) -> bytes:
        key = "raw" if raw else "overlay"
        stamp = (id(frame), frame.index, None if raw or result is None else result.seq)
        with self._lock:
            cached = self._cache.get(key)
            if cached and cached[0] == stamp:
                return cached[1]
            image = frame.image if raw else self.overlay(frame, result)
            ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
            if not ok:  # pragma: no cover - imencode does not fail on a valid BGR image
                raise RuntimeError("JPEG encoding failed")
            self._cache[key] = (stamp, data.tobytes())
            return self._cache[key][1]
