"""``camera:N``, ``video:PATH`` and stream URLs through OpenCV's VideoCapture."""

from __future__ import annotations

import glob
import sys
import time
from pathlib import Path
from typing import Any

import cv2

from lgld.runtime.config import SourceSection
from lgld.runtime.sources.base import (
    NO_CAMERA,
    CameraBusy,
    CameraLost,
    CameraNotFound,
    Frame,
    Source,
    SourceError,
)


def camera_device_exists(index: int) -> bool:
    """On Linux a V4L2 camera N is /dev/videoN; elsewhere assume it may exist."""
    if sys.platform.startswith("linux"):
        return Path(f"/dev/video{index}").exists()
    return True


def video_devices() -> list[str]:
    """V4L2 device nodes (Linux), for the doctor."""
    return sorted(glob.glob("/dev/video*"))


def probe_video(path: str) -> tuple[bool, str]:
    """Can the video file be decoded? (for the doctor)"""
    cap = cv2.VideoCapture(path)
    ok = bool(cap.isOpened() and cap.read()[0])
    cap.release()
    return ok, f"{path}: {'readable' if ok else 'cannot read'}"


class OpenCVSource(Source):
    """cv2.VideoCapture: ``camera:N``, ``video:PATH`` (paced at the file's frame rate) or a URL."""

    def __init__(
        self,
        target: int | str,
        kind: str,
        size: tuple[int, int] = (SourceSection.width, SourceSection.height),
        fps: float = SourceSection.fps,
        loop: bool = SourceSection.loop,
        timeout_s: float = SourceSection.timeout_s,
    ) -> None:
        super().__init__()
        if kind not in ("camera", "video", "stream"):
            raise ValueError(f"unknown OpenCV source kind {kind!r}")
        self.target, self.kind, self.size, self.fps = target, kind, size, fps
        self.loop, self.timeout_s = loop, timeout_s
        self.live = kind != "video"
        names = {"camera": f"camera:{target}", "video": f"video:{target}"}
        self.name = names.get(kind, str(target))
        self._cap: Any = None
        self._t0 = 0.0
        self._played = 0

    def open(self) -> None:
        if self.kind == "camera":
            index = int(self.target)
            if not camera_device_exists(index):
                raise CameraNotFound(
                    f"camera {index} not found (no /dev/video{index}); {NO_CAMERA}"
                )
            cap = cv2.VideoCapture(index)
            if not cap.isOpened():
                cap.release()
                raise CameraBusy(f"camera {index} cannot be opened (busy, or not a capture device)")
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.size[0])
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.size[1])
            cap.set(cv2.CAP_PROP_FPS, self.fps)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
            if not cap.grab():  # e.g. a Pi's ISP/codec node: it opens but is no camera
                cap.release()
                raise CameraNotFound(f"camera {index} opens but delivers no frames; {NO_CAMERA}")
        elif self.kind == "video":
            path = Path(str(self.target))
            if not path.is_file():
                raise SourceError(f"video file not found: {path}")
            cap = cv2.VideoCapture(str(path))
            if not cap.isOpened():
                cap.release()
                raise SourceError(f"cannot decode video file: {path}")
            file_fps = cap.get(cv2.CAP_PROP_FPS)
            if file_fps and 0 < file_fps < 1000:
                self.fps = file_fps
        else:
            ms = int(self.timeout_s * 1000)
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
            cap = cv2.VideoCapture(str(self.target), cv2.CAP_FFMPEG, params)
            if not cap.isOpened():
                cap.release()
                raise CameraLost(f"cannot open stream {self.target}")
        self._cap = cap
        self._t0 = time.monotonic()
        self._played = 0

    def read(self) -> Frame | None:
        if self._cap is None:
            raise CameraLost(f"{self.name} is not open")
        ok, image = self._cap.read()
        if (not ok or image is None) and self.kind == "video" and self.loop and self._index > 0:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, image = self._cap.read()
        if not ok or image is None:
            if self.kind == "video":
                if self._index == 0:
                    raise SourceError(f"cannot decode video file: {self.target}")
                return None
            raise CameraLost(f"{self.name} stopped delivering frames")
        if self.kind == "video":  # behave like a camera: one frame per 1/fps
            self._played += 1
            due = self._t0 + self._played / self.fps
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -1.0:  # far behind (slow machine): stop trying to catch up
                self._t0, self._played = time.monotonic(), 0
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        return self._frame(image)

    def close(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()

