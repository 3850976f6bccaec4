"""The source spec grammar, in one place: parse it, make a source from it, probe it.

Specs: ``auto``, ``picamera2[:N]``, ``camera:N``, ``video:PATH``, ``images:DIR_OR_GLOB``,
``demo[:all|:wbc|:cells]`` or a stream URL (anything with ``://``). ``auto`` = the Raspberry Pi
camera, else camera 0, else :class:`CameraNotFound` (never the demo). A new backend gets a
module in this package and one entry in :func:`parse_spec`, :func:`make_source` and
:func:`probe`.
"""

from __future__ import annotations

from dataclasses import dataclass

from lgld.runtime.config import InferenceSection, SourceSection
from lgld.runtime.sources import demo, demo_cells, images, opencv, picamera
from lgld.runtime.sources.base import NO_CAMERA, CameraNotFound, Source, SourceError

KINDS = ("auto", "stream", "picamera2", "camera", "video", "images", "demo")
USAGE = ("use auto, picamera2[:N], camera:N, video:PATH, images:DIR_OR_GLOB, demo or a "
         "stream URL")


@dataclass(frozen=True)
class SourceSpec:
    """A parsed spec: the backend kind and its argument."""

    kind: str  # one of KINDS
    arg: str = ""  # URL, path, glob or demo scene ("" = none given)
    index: int = 0  # camera number (picamera2, camera)


def _index(text: str, spec: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise SourceError(f"bad camera number in source {spec!r}")
    return value


def parse_spec(spec: str) -> SourceSpec:
    """Parse a source spec; SourceError (one line) when it is not one."""
    if "://" in spec:
        return SourceSpec("stream", spec)
    if spec == "auto":
        return SourceSpec("auto")
    kind, _, arg = spec.partition(":")
    if kind in ("picamera2", "camera"):
        return SourceSpec(kind, arg, _index(arg or "0", spec))
    if kind in ("video", "images") and arg:
        return SourceSpec(kind, arg)
    if kind == "demo":
        return SourceSpec(kind, arg)
    raise SourceError(f"unknown source {spec!r}: {USAGE}")


def make_source(
    spec: str,
    cfg: SourceSection,
    scene_hint: str = "all",
    roi_size: float = InferenceSection.roi_size,
) -> Source:
    """An unopened source for spec (not ``auto``); cfg is the [source] config section.

    scene_hint and roi_size only shape the demo (``wbc`` cells sized to fill the ROI square).
    """
    s = parse_spec(spec)
    size = (cfg.width, cfg.height)
    if s.kind == "stream":
        return opencv.OpenCVSource(spec, "stream", size, cfg.fps, timeout_s=cfg.timeout_s)
    if s.kind == "picamera2":
        return picamera.PiCamera2Source(
            s.index, size, (cfg.lores_width, cfg.lores_height), cfg.fps, cfg.timeout_s
        )
    if s.kind == "camera":
        return opencv.OpenCVSource(s.index, "camera", size, cfg.fps, timeout_s=cfg.timeout_s)
    if s.kind == "video":
        return opencv.OpenCVSource(s.arg, "video", size, cfg.fps, loop=cfg.loop,
                                   timeout_s=cfg.timeout_s)
    if s.kind == "images":
        return images.ImageFolderSource(s.arg, cfg.max_image_pixels)
    if s.kind == "demo" and (s.arg or scene_hint) == "cells":
        return demo_cells.DemoCellsSource(size=size, fps=cfg.fps)
    if s.kind == "demo":
        return demo.DemoSource(scene=s.arg or scene_hint, size=size, fps=cfg.fps,
                               roi_size=roi_size)
    raise SourceError(f"source {spec!r} is chosen when opened, not made")  # auto


def open_source(
    spec: str,
    cfg: SourceSection,
    scene_hint: str = "all",
    roi_size: float = InferenceSection.roi_size,
) -> Source:
    """Make and open the source; ``auto`` = the Pi camera, else camera 0, else CameraNotFound."""
    if parse_spec(spec).kind != "auto":
        source = make_source(spec, cfg, scene_hint, roi_size)
        source.open()
        return source
    if picamera.picamera2_cameras():
        source = make_source("picamera2", cfg)
        source.open()
        return source
    if opencv.camera_device_exists(0):
        source = make_source("camera:0", cfg)
        try:
            source.open()
            return source
        except CameraNotFound:
            pass
    raise CameraNotFound(NO_CAMERA)


def cameras_report() -> str:
    """The cameras this machine has, in one line (for the doctor)."""
    pi_cams = picamera.picamera2_cameras()
    models = ", ".join(str(c.get("Model", "?")) for c in pi_cams) or "none"
    installed = "installed" if picamera.import_picamera2() else "not installed"
    devices = ", ".join(opencv.video_devices()) or "none"
    return f"picamera2 {installed}; Raspberry Pi cameras: {models}; V4L2 devices: {devices}"


def probe(spec: str, scene_hint: str = "all") -> tuple[bool | None, str]:
    """Could the source be used, without opening a camera? (ok or None = unknown, detail)"""
    try:
        s = parse_spec(spec)
    except SourceError as exc:
        return False, str(exc)
    if s.kind == "stream":
        return None, f"{spec}: a network stream (checked when it runs)"
    if s.kind == "auto":
        pi_cams = picamera.picamera2_cameras()
        ok = bool(pi_cams) or opencv.camera_device_exists(0)
        which = "Raspberry Pi camera" if pi_cams else "camera 0" if ok else "no camera found"
        return ok, f"auto -> {which}"
    if s.kind == "picamera2":
        ok, detail = picamera.probe(s.index)
        return ok, f"{spec}: {detail}"
    if s.kind == "camera":
        return opencv.camera_device_exists(s.index), spec
    if s.kind == "video":
        return opencv.probe_video(s.arg)
    if s.kind == "images":
        return images.probe(s.arg)
    if (s.arg or scene_hint) == "cells":
        return demo_cells.probe()
    return demo.probe(s.arg or scene_hint)
