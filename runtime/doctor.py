"""``lgld-run --check``: is everything in place to run? Exit status 0 when it is, 1 when not.

Reports the software versions, ONNX Runtime providers and threads, whether the model loads and
answers consistently, the cameras that are connected (and whether the configured source can be
used), whether the log folder is writable and the HTTP port free, and the preview and systemd
situation.
"""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass
from typing import TextIO

import cv2
import numpy as np
import onnxruntime as ort

from lgld.runtime.config import ConfigError, RunConfig, parse_listen
from lgld.runtime.core.modelinfo import lgld_version
from lgld.runtime.core.session import ModelLoadError, OnnxClassifier, default_threads
from lgld.runtime.core.zoo import resolve_model
from lgld.runtime.demo import load_tiles
from lgld.runtime.preview import preview_possible
from lgld.runtime.resultlog import ResultLogError, check_writable
from lgld.runtime.sdnotify import under_systemd, watchdog_interval
from lgld.runtime.server import port_free
from lgld.runtime.sources import (
    SourceError,
    camera_device_exists,
    find_images,
    import_picamera2,
    picamera2_cameras,
    video_devices,
)
from lgld.runtime.web_guard import is_loopback, load_token


@dataclass
class Check:
    """One line of the report; ok None = information only."""

    name: str
    ok: bool | None
    detail: str
    warn: bool = False  # ok, but worth a second look (printed as [warn])


def check_model(cfg: RunConfig) -> Check:
    threads = cfg.model.threads or default_threads()
    try:
        path = resolve_model(cfg.model.path)
        clf = OnnxClassifier(path, threads=threads)
        size = clf.info.input_size
        probs = clf.probabilities([np.full((size, size, 3), 200, np.uint8)])
    except ModelLoadError as exc:
        return Check("model", False, str(exc))
    except Exception as exc:  # a model that loads but cannot run
        return Check("model", False, f"model does not run: {str(exc).splitlines()[0][:160]}")
    n = len(clf.classes)
    if probs.shape != (1, n) or not np.all(np.isfinite(probs)) or abs(probs.sum() - 1) > 1e-3:
        return Check("model", False, f"{path}: output {probs.shape} is not {n} probabilities")
    info = clf.info
    return Check("model", True, f"{path} | {info.name} | {n} classes {info.classes} | "
                 f"input {size}px | {info.variant} | {info.quantization}")


def check_source(cfg: RunConfig) -> list[Check]:
    checks = []
    pi_module = import_picamera2()
    pi_cams = picamera2_cameras()
    devices = video_devices()
    models = ", ".join(str(c.get("Model", "?")) for c in pi_cams) or "none"
    checks.append(Check("cameras", None,
                        f"picamera2 {'installed' if pi_module else 'not installed'}; "
                        f"Raspberry Pi cameras: {models}; V4L2 devices: "
                        f"{', '.join(devices) or 'none'}"))
    spec = cfg.source.input
    kind, _, arg = spec.partition(":")
    if "://" in spec:
        checks.append(Check("source", None, f"{spec}: a network stream (checked when it runs)"))
    elif spec == "auto":
        ok = bool(pi_cams) or camera_device_exists(0)
        which = "Raspberry Pi camera" if pi_cams else "camera 0" if ok else "no camera found"
        checks.append(Check("source", ok, f"auto -> {which}"))
    elif kind == "picamera2":
        n = int(arg or 0) if (arg or "0").isdigit() else -1
        checks.append(Check("source", 0 <= n < len(pi_cams),
                            f"{spec}: {len(pi_cams)} Raspberry Pi camera(s) connected"))
    elif kind == "camera":
        n = int(arg or 0) if (arg or "0").isdigit() else -1
        checks.append(Check("source", n >= 0 and camera_device_exists(n), f"{spec}"))
    elif kind == "video":
        cap = cv2.VideoCapture(arg)
        ok = cap.isOpened() and cap.read()[0]
        cap.release()
        checks.append(Check("source", bool(ok), f"{arg}: {'readable' if ok else 'cannot read'}"))
    elif kind == "images":
        n = len(find_images(arg))
        checks.append(Check("source", n > 0, f"{arg}: {n} image(s)"))
    elif kind == "demo":
        try:
            tiles = load_tiles(arg or ("wbc" if cfg.inference.mode == "roi" else "all"))
            checks.append(Check("source", True, f"demo: {len(tiles)} bundled sample images"))
        except SourceError as exc:
            checks.append(Check("source", False, str(exc)))
    else:
        checks.append(Check("source", False, f"unknown source {spec!r}"))
    return checks


def check_http(cfg: RunConfig) -> Check:
    host, port = parse_listen(cfg.http.listen)
    ok, detail = port_free(host, port)
    try:
        token = load_token(cfg.http)
    except ConfigError as exc:
        return Check("http", False, str(exc))
    if not ok or is_loopback(host):
        return Check("http", ok, detail + ("; access token set" if token else ""))
    exposure = "reachable from the network" + ("" if token else ", NO access token")
    return Check("http", True, f"{detail}; {exposure} (docs/deploy.md)", warn=True)


def run_checks(cfg: RunConfig) -> list[Check]:
    checks = [
        Check("lgld", None, f"lgld {lgld_version()} | Python {platform.python_version()} | "
              f"numpy {np.__version__} | OpenCV {cv2.__version__} | {platform.machine()}"),
        Check("onnxruntime", None, f"{ort.__version__} | providers "
              f"{', '.join(ort.get_available_providers())} | threads "
              f"{cfg.model.threads or default_threads()} (of {default_threads() + 1} cores)"),
        check_model(cfg),
        *check_source(cfg),
    ]
    if cfg.log.path:
        try:
            checks.append(Check("log", True, f"{check_writable(cfg.log.path)} is writable"))
        except ResultLogError as exc:
            checks.append(Check("log", False, str(exc)))
    else:
        checks.append(Check("log", None, "result log off"))
    if cfg.http.listen:
        checks.append(check_http(cfg))
    else:
        checks.append(Check("http", None, "HTTP server off"))
    checks.append(Check("preview", None, preview_possible(cfg.display.preview)[1]))
    wd = watchdog_interval()
    checks.append(Check("systemd", None, ("under systemd" if under_systemd() else "not under "
                                          "systemd") + (f", watchdog {wd:g} s" if wd else "")))
    return checks


def doctor(cfg: RunConfig, out: TextIO = sys.stdout) -> int:
    """Print the report; 0 when nothing failed, 1 otherwise."""
    checks = run_checks(cfg)
    for c in checks:
        mark = "warn" if c.warn else " ok " if c.ok else "FAIL" if c.ok is False else "info"
        print(f"[{mark}] {c.name:<12} {c.detail}", file=out)
    failed = [c.name for c in checks if c.ok is False]
    print(f"lgld-run --check: {'problems with ' + ', '.join(failed) if failed else 'all good'}",
          file=out)
    return 1 if failed else 0
