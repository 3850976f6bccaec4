"""MJPEG streaming of a pipeline's overlaid frames: what one ``/stream.mjpg`` viewer gets.

:func:`stream_mjpeg` writes multipart JPEG parts to any ``write`` callable, so the HTTP
handler and ``lgld-bench`` (which measures what a viewer costs) run the same code.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from lgld.runtime.config import HttpSection
from lgld.runtime.pipeline import Pipeline
from lgld.runtime.render import Renderer

BOUNDARY = "lgldframe"
CONTENT_TYPE = f"multipart/x-mixed-replace; boundary={BOUNDARY}"


def part(data: bytes, frame_index: int) -> bytes:
    """One multipart part: headers, the JPEG, the trailing CRLF."""
    return (
        f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n"
        f"X-Lgld-Frame: {frame_index}\r\n\r\n".encode() + data + b"\r\n"
    )


def stream_mjpeg(
    write: Callable[[bytes], object],
    pipeline: Pipeline,
    renderer: Renderer,
    stop: threading.Event,
    max_fps: float = HttpSection.stream_max_fps,
) -> int:
    """Write every new frame (at most max_fps) until stop is set or the pipeline finished.

    Returns the number of frames written. A finished batch shows its last frame once.
    """
    min_gap = 1.0 / max_fps
    seq, last_sent, sent = 0, 0.0, 0
    while not stop.is_set():
        seq, frame, result = pipeline.hub.wait_frame(seq, timeout=0.5)
        if frame is None:
            if pipeline.finished.is_set():
                break
            continue
        wait = last_sent + min_gap - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        write(part(renderer.jpeg(frame, result), frame.index))
        sent += 1
        last_sent = time.monotonic()
        if pipeline.finished.is_set():
            break
    return sent
