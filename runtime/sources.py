"""Frame sources: one small interface, several backends.

``open_source(spec, cfg)`` returns an opened :class:`Source` for ``auto``, ``picamera2[:N]``,
``camera:N``, ``video:PATH``, ``images:DIR_OR_GLOB``, ``demo[:all|:wbc]`` or a stream URL.
``read()`` returns the next :class:`Frame` (BGR uint8), ``None`` at the end of a finite source,
raises :class:`CameraLost` when a live source stops delivering (the pipeline closes, waits and
reopens it) and :class:`SourceError` for anything that retrying will not fix.
"""

from __future__ import annotations

import contextlib
import glob
import importlib
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lgld.runtime.core.cliutil import first_line
from lgld.runtime.core.files import is_image_file, list_images
from lgld.runtime.core.preprocess import ImageError, read_image

log = logging.getLogger("lgld.runtime")

NO_CAMERA = "no camera found (use --source demo to try without one)"


class SourceError(RuntimeError):
    """A source cannot be opened or used (one-line reason)."""


class CameraNotFound(SourceError):
    """No such camera is connected."""


class CameraBusy(SourceError):
    """The camera exists but another program holds it."""


class CameraLost(SourceError):
    """A live source stopped delivering frames; closing and reopening it may help."""


@dataclass
class Frame:
    """One captured frame: the display image, plus a low-resolution copy if the camera has one."""

    image: np.ndarray  # BGR uint8 HxWx3, display resolution
    index: int  # 0, 1, 2, ... in capture order
    time: float  # wall clock (seconds since the epoch)
    mono: float  # time.monotonic() at capture
    lores: np.ndarray | None = None  # BGR uint8, same field of view, smaller
    name: str | None = None  # file name for image sources


class Source:
    """Base class: open(), read() -> Frame | None, close(); usable as a context manager."""

    name = "source"
    #: Every frame must be classified exactly once (no dropping), e.g. a folder of images.
    batch = False
    #: A camera or stream: CameraLost is retried with backoff.
    live = True

    def __init__(self) -> None:
        self._index = 0

    def _frame(self, image: np.ndarray, lores: np.ndarray | None = None, name: str | None = None):
        frame = Frame(image, self._index, time.time(), time.monotonic(), lores, name)
        self._index += 1
        return frame

    def open(self) -> None:  # pragma: no cover - trivial
        pass

    def read(self) -> Frame | None:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - trivial
        pass

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# Raspberry Pi camera (picamera2)


def import_picamera2() -> Any | None:
    """The picamera2 module, or None when it is not installed (any platform but a Pi)."""
    try:
        return importlib.import_module("picamera2")
    except Exception:  # ImportError, or libcamera bindings that fail to load
        return None


def picamera2_cameras() -> list[dict]:
    """Cameras libcamera sees (empty without picamera2 or without a camera)."""
    module = import_picamera2()
    if module is None:
        return []
    try:
        return list(module.Picamera2.global_camera_info())
    except Exception:
        return []


def i420_to_bgr(array: np.ndarray, width: int, height: int) -> np.ndarray:
    """picamera2's YUV420 array ((H*3/2) x stride, planar I420) -> BGR HxWx3."""
    if array.shape == (height * 3 // 2, width):
        return cv2.cvtColor(array, cv2.COLOR_YUV2BGR_I420)
    stride = array.shape[1]
    flat = np.ascontiguousarray(array).reshape(-1)
    y = flat[: height * stride].reshape(height, stride)[:, :width]
    chroma = (height // 2) * (stride // 2)
    u = flat[height * stride : height * stride + chroma].reshape(height // 2, stride // 2)
    v = flat[height * stride + chroma : height * stride + 2 * chroma].reshape(height // 2, -1)
    planar = np.concatenate([y.ravel(), u[:, : width // 2].ravel(), v[:, : width // 2].ravel()])
    return cv2.cvtColor(planar.reshape(height * 3 // 2, width), cv2.COLOR_YUV2BGR_I420)


def _busy(exc: BaseException) -> bool:
    text = " ".join(str(e) for e in (exc, exc.__cause__, exc.__context__) if e is not None).lower()
    return any(s in text for s in ("busy", "in use", "did not complete", "failed to acquire"))


class PiCamera2Source(Source):
    """A Raspberry Pi camera through picamera2: a display-sized main stream plus a lores stream.

    Formats: main is "RGB888", which picamera2 documents as 24-bit pixels ordered [B, G, R] in
    memory, i.e. exactly OpenCV's BGR, so no conversion is needed. lores is "YUV420" because the
    Pi 4 and older ISPs only produce YUV on that stream (the Pi 5 accepts it too); it is
    converted to BGR and used for the model in field mode (same field of view, fewer pixels).

    Capturing never leaks a request and never hangs: each frame is asked for as a job
    (``capture_request(wait=False)``) and waited on with a timeout. After a timeout the same job
    is waited on again next time instead of queueing another, and every request obtained is
    released in a ``finally`` (or on close), so the camera's buffers always return.
    """

    live = True

    def __init__(
        self,
        camera_num: int = 0,
        size: tuple[int, int] = (1280, 720),
        lores_size: tuple[int, int] | None = (640, 360),
        fps: float = 30.0,
        timeout_s: float = 2.0,
    ) -> None:
        super().__init__()
        self.camera_num = camera_num
        self.size = (int(size[0]), int(size[1]))
        self.lores_size = lores_size
        self.fps = fps
        self.timeout_s = timeout_s
        self.name = "picamera2" if camera_num == 0 else f"picamera2:{camera_num}"
        self._cam: Any = None
        self._job: Any = None
        self._lores_dims: tuple[int, int] | None = None

    def open(self) -> None:
        module = import_picamera2()
        if module is None:
            raise SourceError(
                "picamera2 is not installed (Raspberry Pi OS: sudo apt install python3-picamera2, "
                "and a venv made with --system-site-packages)"
            )
        label = f"Raspberry Pi camera {self.camera_num}"
        cameras = module.Picamera2.global_camera_info()
        if not cameras:
            raise CameraNotFound(f"no Raspberry Pi camera found (check the cable; {NO_CAMERA})")
        if self.camera_num >= len(cameras):
            raise CameraNotFound(f"{label} not found ({len(cameras)} camera(s) connected)")
        try:
            cam = module.Picamera2(self.camera_num)
        except Exception as exc:
            if _busy(exc):
                raise CameraBusy(
                    f"{label} is busy: another program (rpicam-*, another lgld-run or the "
                    "lgld service) is using it"
                ) from None
            raise SourceError(f"cannot open {label}: {first_line(exc, 200)}") from None
        try:
            streams: dict[str, Any] = {"main": {"size": self.size, "format": "RGB888"}}
            if self.lores_size:  # never larger than main (picamera2 refuses that); even sizes
                lw = min(int(self.lores_size[0]), self.size[0]) // 2 * 2
                lh = min(int(self.lores_size[1]), self.size[1]) // 2 * 2
                streams["lores"] = {"size": (lw, lh), "format": "YUV420"}
            config = cam.create_video_configuration(
                **streams, controls={"FrameRate": float(self.fps)}, buffer_count=4
            )
            cam.configure(config)
            self._lores_dims = tuple(config["lores"]["size"]) if self.lores_size else None
            cam.start()
        except Exception as exc:
            _quietly(cam.close)
            if _busy(exc):
                raise CameraBusy(f"{label} is busy: another program is using it") from None
            raise SourceError(f"cannot start {label}: {first_line(exc, 200)}") from None
        self._cam = cam
        self._job = None

    def read(self) -> Frame:
        if self._cam is None:
            raise CameraLost(f"{self.name} is not open")
        try:
            if self._job is None:
                self._job = self._cam.capture_request(wait=False)
            request = self._cam.wait(self._job, timeout=self.timeout_s)
        except TimeoutError:
            raise CameraLost(f"{self.name}: no frame within {self.timeout_s:g} s") from None
        except Exception as exc:
            self._job = None
            raise CameraLost(f"{self.name}: capture failed: {first_line(exc, 200)}") from None
        self._job = None
        try:
            main = request.make_array("main")
            lores = None
            if self._lores_dims:
                lores = i420_to_bgr(request.make_array("lores"), *self._lores_dims)
        finally:
            request.release()
        if not main.flags.c_contiguous:
            main = np.ascontiguousarray(main)
        return self._frame(main[:, :, :3], lores)

    def close(self) -> None:
        cam, job, self._cam, self._job = self._cam, self._job, None, None
        if cam is None:
            return
        if job is not None:  # a request that arrived after its wait timed out
            with contextlib.suppress(Exception):
                job.get_result(timeout=0).release()
        _quietly(cam.stop)
        _quietly(cam.close)


# ---------------------------------------------------------------------------------------------
# OpenCV: USB cameras, video files, network streams


def camera_device_exists(index: int) -> bool:
    """On Linux a V4L2 camera N is /dev/videoN; elsewhere assume it may exist."""
    if sys.platform.startswith("linux"):
        return Path(f"/dev/video{index}").exists()
    return True


def video_devices() -> list[str]:
    """V4L2 device nodes (Linux), for the doctor."""
    return sorted(glob.glob("/dev/video*"))


class OpenCVSource(Source):
    """cv2.VideoCapture: ``camera:N``, ``video:PATH`` (paced at the file's frame rate) or a URL."""

    def __init__(
        self,
        target: int | str,
        kind: str,
        size: tuple[int, int] = (1280, 720),
        fps: float = 30.0,
        loop: bool = False,
        timeout_s: float = 2.0,
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


# ---------------------------------------------------------------------------------------------
# A folder or glob of images (batch mode)


def find_images(spec: str) -> list[Path]:
    """A folder (its image files), a glob pattern (``**`` recurses) or one image file, sorted."""
    path = Path(spec).expanduser()
    if path.is_dir():
        files = list_images(path)
    elif path.is_file():
        files = [path]
    else:
        files = [Path(p) for p in glob.glob(str(path), recursive=True)]
        files = [p for p in files if is_image_file(p)]
    return sorted(files)


class ImageFolderSource(Source):
    """Every image of a folder or glob once, in name order; then the end (batch mode)."""

    batch = True
    live = False

    def __init__(self, spec: str) -> None:
        super().__init__()
        self.spec = spec
        self.name = f"images:{spec}"
        self.files: list[Path] = []
        self.skipped = 0
        self._next = 0

    def open(self) -> None:
        self.files = find_images(self.spec)
        if not self.files:
            raise SourceError(f"no images found at {self.spec}")
        self._next = 0

    def read(self) -> Frame | None:
        while self._next < len(self.files):
            path = self.files[self._next]
            self._next += 1
            try:
                return self._frame(read_image(path), name=str(path))
            except ImageError as exc:
                self.skipped += 1
                log.warning("skipped: %s", exc)
        return None


# ---------------------------------------------------------------------------------------------
# Choosing a source




def _quietly(fn: Any) -> None:
    with contextlib.suppress(Exception):
        fn()


def _index(text: str, spec: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise SourceError(f"bad camera number in source {spec!r}")
    return value


def make_source(spec: str, cfg: Any, scene_hint: str = "all", roi_size: float = 0.5) -> Source:
    """An unopened source for spec (not ``auto``); cfg is the [source] config section.

    scene_hint and roi_size only shape the demo (``wbc`` cells sized to fill the ROI square).
    """
    size = (cfg.width, cfg.height)
    kind, _, arg = spec.partition(":")
    if "://" in spec:
        return OpenCVSource(spec, "stream", size, cfg.fps, timeout_s=cfg.timeout_s)
    if kind == "picamera2":
        return PiCamera2Source(
            _index(arg or "0", spec), size, (cfg.lores_width, cfg.lores_height), cfg.fps,
            cfg.timeout_s,
        )
    if kind == "camera":
        return OpenCVSource(_index(arg or "0", spec), "camera", size, cfg.fps,
                            timeout_s=cfg.timeout_s)
    if kind == "video" and arg:
        return OpenCVSource(arg, "video", size, cfg.fps, loop=cfg.loop, timeout_s=cfg.timeout_s)
    if kind == "images" and arg:
        return ImageFolderSource(arg)
    if kind == "demo":
        from lgld.runtime.demo import DemoSource

        return DemoSource(scene=arg or scene_hint, size=size, fps=cfg.fps, roi_size=roi_size)
    raise SourceError(
        f"unknown source {spec!r}: use auto, picamera2[:N], camera:N, video:PATH, "
        "images:DIR_OR_GLOB, demo or a stream URL"
    )


def open_source(spec: str, cfg: Any, scene_hint: str = "all", roi_size: float = 0.5) -> Source:
    """Make and open the source; ``auto`` = the Pi camera, else camera 0, else CameraNotFound."""
    if spec != "auto":
        source = make_source(spec, cfg, scene_hint, roi_size)
        source.open()
        return source
    if picamera2_cameras():
        source = make_source("picamera2", cfg)
        source.open()
        return source
    if camera_device_exists(0):
        source = make_source("camera:0", cfg)
        try:
            source.open()
            return source
        except CameraNotFound:
            pass
    raise CameraNotFound(NO_CAMERA)
