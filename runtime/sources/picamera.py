"""``picamera2[:N]``: a Raspberry Pi camera through picamera2 (libcamera)."""

from __future__ import annotations

import contextlib
import importlib
from typing import Any

import cv2
import numpy as np

from lgld.runtime.config import SourceSection
from lgld.runtime.core.cliutil import first_line
from lgld.runtime.sources.base import (
    NO_CAMERA,
    CameraBusy,
    CameraLost,
    CameraNotFound,
    Frame,
    Source,
    SourceError,
)

#: What picamera2 says for every failure inside Picamera2() (the real cause, if any, is chained).
GENERIC_INIT_FAILURE = "did not complete"
BUSY_WORDS = ("busy", "in use", "failed to acquire")
LIKELY_CAUSES = (
    "likely causes: another program holds it (rpicam-*, another lgld-run or the lgld service); "
    "no permission on /dev/dma_heap, /dev/media* or /dev/video* (a hardened service needs the "
    "video group and DeviceAllow for them); a libcamera problem (see its log)"
)


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


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and the ones it was raised from or during, outermost first."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def open_failure(label: str, verb: str, exc: BaseException) -> SourceError:
    """What went wrong opening the camera, as precisely as the exception chain tells.

    picamera2 raises "Camera __init__ sequence did not complete." for any failure (a camera
    held by another program, a permission error on /dev/dma_heap under a hardened service...),
    so only a chained cause that says so is reported as busy; a specific cause is quoted; a
    bare generic failure lists the likely causes.
    """
    chain = _chain(exc)
    text = " ".join(str(e) for e in chain).lower()
    if any(word in text for word in BUSY_WORDS):
        return CameraBusy(f"{label} is busy: another program (rpicam-*, another lgld-run or the "
                          "lgld service) is using it")
    specific = [e for e in chain if str(e) and GENERIC_INIT_FAILURE not in str(e).lower()]
    if specific:
        return SourceError(f"cannot {verb} {label}: {first_line(specific[-1], 200)}")
    return SourceError(f"cannot {verb} {label}: {first_line(exc, 120)} ({LIKELY_CAUSES})")


def probe(index: int) -> tuple[bool, str]:
    """Is Raspberry Pi camera ``index`` connected? (for the doctor; does not open it)"""
    cameras = picamera2_cameras()
    return index < len(cameras), f"{len(cameras)} Raspberry Pi camera(s) connected"


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
        size: tuple[int, int] = (SourceSection.width, SourceSection.height),
        lores_size: tuple[int, int] | None = (SourceSection.lores_width,
                                              SourceSection.lores_height),
        fps: float = SourceSection.fps,
        timeout_s: float = SourceSection.timeout_s,
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
        self.controls: dict[str, Any] = {}  # applied after every start (see lock)

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
            raise open_failure(label, "open", exc) from None
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
            if self.controls:
                cam.set_controls(self.controls)
        except Exception as exc:
            _quietly(cam.close)
            raise open_failure(label, "start", exc) from None
        self._cam = cam
        self._job = None

    def lock(self, controls: dict[str, Any]) -> None:
        """Apply picamera2 controls now and after every reopen: e.g. the exposure and white
        balance a flat-field calibration locked (AeEnable/AwbEnable off, fixed gains)."""
        self.controls = dict(controls)
        if self._cam is not None:
            self._cam.set_controls(self.controls)

    def camera_settings(self) -> dict[str, Any]:
        """The exposure time, analogue gain and colour gains in use (frame metadata)."""
        if self._cam is None:
            raise CameraLost(f"{self.name} is not open")
        metadata = self._cam.capture_metadata()
        return {k: metadata[k] for k in ("ExposureTime", "AnalogueGain", "ColourGains")
                if k in metadata}

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


def _quietly(fn: Any) -> None:
    with contextlib.suppress(Exception):
        fn()
