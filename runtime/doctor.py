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
from lgld.runtime.core.classifier import ModelLoadError, OnnxClassifier, default_threads
from lgld.runtime.core.modelinfo import lgld_version
from lgld.runtime.core.precision import choose_precision, model_label
from lgld.runtime.core.zoo import resolve_model
from lgld.runtime.preview import preview_possible
from lgld.runtime.results import ResultLogError, check_writable
from lgld.runtime.sources import cameras_report, probe
from lgld.runtime.systemd import under_systemd, watchdog_interval
from lgld.runtime.web import port_free
from lgld.runtime.web.guard import is_loopback, load_token


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
        choice = choose_precision(resolve_model(cfg.model.path), cfg.model.precision)
        path = choice.path
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
    return Check("model", True, f"{model_label(path, choice.precision)} | {info.name} | "
                 f"{n} classes {info.classes} | input {size}px | {info.variant} | "
                 f"{choice.reason} | {path}")


def check_source(cfg: RunConfig) -> list[Check]:
    """The cameras this machine has, and whether the configured source can be used."""
    scene = "wbc" if cfg.inference.mode == "roi" else "all"
    ok, detail = probe(cfg.source.input, scene)
    return [Check("cameras", None, cameras_report()), Check("source", ok, detail)]


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
            crops = f"; crops in {cfg.cells.crops_dir}" if cfg.cells.crops_dir else ""
            checks.append(Check("log", True, f"{check_writable(cfg.log.path)} is writable"
                                + crops))
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


def doctor(cfg: RunConfig, out: TextIO | None = None) -> int:
    """Print the report (to sys.stdout as it is when called); 0 when nothing failed, else 1."""
    out = out or sys.stdout
    checks = run_checks(cfg)
    for c in checks:
        mark = "warn" if c.warn else " ok " if c.ok else "FAIL" if c.ok is False else "info"
        print(f"[{mark}] {c.name:<12} {c.detail}", file=out)
    failed = [c.name for c in checks if c.ok is False]
    print(f"lgld-run --check: {'problems with ' + ', '.join(failed) if failed else 'all good'}",
          file=out)
    return 1 if failed else 0
