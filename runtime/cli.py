"""``lgld-run``: live blood-cell classification from a microscope camera, headless first.

Exit status: 0 done (stopped, --frames reached, or every readable image classified; the
others are skipped with a log line each), 1 failure while running, 2 bad arguments or
configuration, 3 model missing or not an lgld model, 4 camera or source absent, busy or
unreadable (also: no image of a batch could be read), 5 output problem (log not writable or
the disk full, HTTP port in use).
Every error is one line on stderr: ``lgld-run: error: ...``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2

from lgld.runtime import calibration
from lgld.runtime.cells.crops import check_white_cell_model
from lgld.runtime.cells.cropstore import CropBudget, reviewed_crops
from lgld.runtime.cells.detect import DetectorSettings
from lgld.runtime.cells.session import CountSession
from lgld.runtime.cells.stage import CellStage
from lgld.runtime.cells.track import TrackerSettings
from lgld.runtime.config import (
    ConfigError,
    RunConfig,
    allowed_hosts,
    load_config,
    output_paths,
    parse_listen,
    parse_roi,
    to_toml,
)
from lgld.runtime.core.classifier import ModelLoadError, OnnxClassifier, default_threads
from lgld.runtime.core.cliutil import OneLineParser, plural
from lgld.runtime.core.domain import DomainCheck, DomainError, DomainReference
from lgld.runtime.core.files import file_sha256
from lgld.runtime.core.modelinfo import lgld_version
from lgld.runtime.core.precision import choose_precision, model_label
from lgld.runtime.core.zoo import ZOO, resolve_model
from lgld.runtime.geometry import RegionError
from lgld.runtime.pipeline import Pipeline, PipelineSettings
from lgld.runtime.render import Renderer
from lgld.runtime.results import Result, ResultLog, ResultLogError
from lgld.runtime.review import validation
from lgld.runtime.review.live import ReviewDesk
from lgld.runtime.sources import SourceError, open_source
from lgld.runtime.sources.images import ImageFolderSource
from lgld.runtime.systemd import Notifier
from lgld.runtime.web import STALE_AFTER_S, App, HttpServer, ServerError
from lgld.runtime.web.guard import AccessGuard, is_loopback, load_token

PROG = "lgld-run"
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_MODEL, EXIT_SOURCE, EXIT_OUTPUT = 0, 1, 2, 3, 4, 5

log = logging.getLogger("lgld.runtime")

EPILOG = """\
examples:
  lgld-run --source demo --http 8080          live demo, open http://127.0.0.1:8080/
  lgld-run --model wbc5 --mode roi --http 8080 --log /var/lib/lgld/results.jsonl
  lgld-run --source images:slides/ --log out.jsonl     classify every image once
  lgld-run --model wbc5 --mode cells --source demo:cells --http 8080   differential count
  lgld-run --print-config > lgld.toml                  then: lgld-run --config lgld.toml
  lgld-run --check                                     doctor: camera, model, log, port
  lgld-run --source picamera2 --calibrate              flat field of an empty slide area

exit status: 0 ok, 1 failure while running, 2 bad arguments or configuration,
3 model missing or not an lgld model, 4 camera/source absent, busy or unreadable
(or no image of a batch readable), 5 output problem (log not writable or disk full,
HTTP port in use)
"""


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog=PROG,
        description="Classify blood cells live from a microscope camera with an LGLD-Net ONNX "
        "model (no torch needed). Flags override the --config file.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", metavar="NAME|PATH",
                   help=f"a shipped model ({', '.join(ZOO)}; default all; README, Shipped "
                   "models) or an .onnx path")
    p.add_argument(
        "--source",
        metavar="SPEC",
        help="auto | picamera2[:N] | camera:N | video:PATH | images:DIR_OR_GLOB "
        "| demo[:all|:wbc|:cells] | stream URL (default: auto = Pi camera, else camera 0, "
        "else an error)",
    )
    p.add_argument("--mode", choices=("field", "roi", "cells"),
                   help="classify the field of view, a ROI, or find, classify and count every "
                   "white cell (cells: a WBC5 model, see docs/cells.md)")
    p.add_argument("--new-session", dest="resume_count", action="store_const", const=False,
                   help="cells mode: start a new differential count instead of continuing the "
                   "last one found in the log")
    p.add_argument("--sample", metavar="LABEL",
                   help="cells mode: the sample's free-text label, written with the count session")
    p.add_argument("--roi", metavar="x,y,w,h", help="ROI in display pixels (implies --mode roi)")
    p.add_argument("--frames", type=int, metavar="N", help="stop after N results")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--log", metavar="FILE.jsonl", help="append results to this JSONL log "
                     "(cells mode default: counts.jsonl in the state directory)")
    out.add_argument("--no-log", dest="log", action="store_const", const="",
                     help="keep no log (a throwaway run: the count is not kept)")
    p.add_argument("--crops", metavar="DIR", help="cells mode: save the counted cells' crops "
                   "here (default: crops/ beside the log)")
    p.add_argument("--http", metavar="[HOST:]PORT",
                   help="serve the live page (host 127.0.0.1; any other address opens it to the "
                   "network: see docs/deploy.md)")
    p.add_argument("--threads", type=int, metavar="N", help="ONNX Runtime threads (0 = auto)")
    p.add_argument("--precision", choices=("auto", "fp32", "int8"),
                   help="the model's fp32 or INT8 file (auto: INT8 where the CPU has fast int8)")
    p.add_argument("--preview", choices=("auto", "on", "off"), help="local preview window")
    p.add_argument("--config", metavar="FILE.toml", help="configuration file")
    p.add_argument("--print-config", action="store_true", help="print the effective config")
    p.add_argument("--check", action="store_true", help="check the setup and exit")
    p.add_argument("--calibrate", action="store_true",
                   help="capture an empty area of the slide as the flat-field calibration "
                   "(calibration.frames frames; picamera2: locks exposure and white balance), "
                   "store it in the state directory and exit")
    p.add_argument("--version", action="version", version=f"%(prog)s {lgld_version()}")
    return p


# command-line flag -> (config section, field); None leaves the config's value
_FLAG_FIELDS = {
    "model": ("model", "path"),
    "source": ("source", "input"),
    "mode": ("inference", "mode"),
    "frames": ("inference", "frames"),
    "log": ("log", "path"),
    "http": ("http", "listen"),
    "threads": ("model", "threads"),
    "precision": ("model", "precision"),
    "preview": ("display", "preview"),
    "resume_count": ("cells", "resume"),
    "sample": ("cells", "sample"),
    "crops": ("cells", "crops_dir"),
}


def effective_config(args: argparse.Namespace) -> RunConfig:
    """Defaults < --config file < command-line flags; validated."""
    cfg = load_config(args.config)
    if args.roi is not None:  # --roi implies roi mode; an explicit --mode still wins
        cfg.inference.roi = parse_roi(args.roi)
        cfg.inference.mode = "roi"
    for flag, (section, name) in _FLAG_FIELDS.items():
        value = getattr(args, flag)
        if value is not None:
            setattr(getattr(cfg, section), name, value)
    return cfg.validate()


def _error(code: int, message: object) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


def _exit_code(exc: BaseException) -> int:
    if isinstance(exc, ResultLogError | ServerError):
        return EXIT_OUTPUT
    if isinstance(exc, SourceError):
        return EXIT_SOURCE
    if isinstance(exc, ModelLoadError):
        return EXIT_MODEL
    if isinstance(exc, RegionError | ConfigError):
        return EXIT_USAGE
    return EXIT_FAILURE


class _StopSignals:
    """SIGTERM/SIGINT set an event instead of killing the process (restored on exit)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        log.info("%s received, stopping", signal.Signals(signum).name)
        self.event.set()

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def calibrate(cfg: RunConfig) -> int:
    """``--calibrate``: capture, check and store a flat-field calibration; the exit status."""
    folder = calibration.state_dir(cfg.calibration)
    scene = "wbc" if cfg.inference.mode == "roi" else "all"
    try:
        source = open_source(cfg.source.input, cfg.source, scene, cfg.inference.roi_size)
    except SourceError as exc:
        return _error(EXIT_SOURCE, exc)
    if not calibration.needs_calibration(source.name):
        source.close()
        print(f"{PROG}: {source.name}: {calibration.DEMO.message}; nothing to do",
              file=sys.stderr)
        return EXIT_OK
    try:
        cal = calibration.capture(source, cfg.calibration.frames)
        if hasattr(source, "camera_settings"):  # picamera2: freeze what auto-exposure chose
            cal.camera = calibration.lock_controls(source.camera_settings())
        path = calibration.save(cal, folder)
    except calibration.CalibrationError as exc:
        return _error(EXIT_FAILURE, exc)
    except SourceError as exc:
        return _error(EXIT_SOURCE, exc)
    finally:
        source.close()
    rec = cal.record()
    locked = f"; locked {_controls_text(cal.camera)}" if cal.camera else ""
    print(f"{PROG}: calibrated {cal.source} at {cal.frame_size[0]}x{cal.frame_size[1]} from "
          f"{cal.frames} frames: corners {100 * rec['vignetting']:.0f}% of the centre's light, "
          f"background RGB {tuple(round(v) for v in cal.background)}{locked}; saved {path}",
          file=sys.stderr)
    return EXIT_OK


def _controls_text(controls: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in controls.items())


def _calibration_state(cfg: RunConfig, source: Any) -> calibration.CalibrationState | None:
    """The stored calibration's state for this source (None when turned off); locks a Pi
    camera to the calibrated exposure and white balance when the calibration applies."""
    if not cfg.calibration.apply:
        return None
    if not calibration.needs_calibration(source.name):
        return calibration.DEMO
    folder = calibration.state_dir(cfg.calibration)
    try:
        cal = calibration.load(folder)
    except calibration.CalibrationError as exc:
        return calibration.CalibrationState("stale", str(exc))
    state = calibration.assess(cal, source.name, None, cfg.calibration.max_age_h)
    if state.state == "ok" and cal is not None and cal.camera and hasattr(source, "lock"):
        source.lock(cal.camera)
    return state


def _print_batch_line(result: Result) -> None:
    if result.cells is not None:
        found = ", ".join(f"{c['class']} {c['confidence']:.2f}" + (
            "" if c["state"] == "ok" else f" ({c['state']})") for c in result.cells)
        print(f"{result.name}\t{plural(len(result.cells), 'cell')}\t{found}", flush=True)
        return
    label = result.label or "-"
    conf = f"{result.confidence:.3f}" if result.confidence is not None else "-"
    print(f"{result.name}\t{label}\t{conf}\t{result.state}", flush=True)


def _print_skip_line(path: Path, reason: str) -> None:
    print(f"{path}\t-\t-\tskipped: {reason}", flush=True)


def _skip_logger(result_log: ResultLog, source: str) -> Callable[[Path, str], None]:
    """A skip listener that writes one log line per skipped file (readers tell it by event)."""

    def write(path: Path, reason: str) -> None:
        result_log.write({"event": "skip", "ts": datetime.now(UTC).isoformat(
            timespec="milliseconds"), "source": source, "file": str(path), "reason": reason})

    return write


def run(cfg: RunConfig) -> int:
    """Run the live pipeline until stopped; returns the exit status."""
    threads = cfg.model.threads or default_threads()
    token = load_token(cfg.http) if cfg.http.listen else ""
    try:
        choice = choose_precision(resolve_model(cfg.model.path), cfg.model.precision)
        classifier = OnnxClassifier(choice.path, threads=threads)
    except ModelLoadError as exc:
        return _error(EXIT_MODEL, exc)
    if cfg.inference.mode == "cells":
        try:
            check_white_cell_model(classifier.classes)
        except ValueError as exc:
            return _error(EXIT_USAGE, exc)
    result_log = server = source = preview = None
    cells: CountSession | None = None
    resumed = False
    stop = threading.Event()
    notifier = Notifier()
    pipeline: Pipeline | None = None
    try:
        with _StopSignals(stop):
            try:
                if cfg.log.path:
                    result_log = ResultLog(cfg.log.path, cfg.log.max_bytes, cfg.log.backups,
                                           cfg.log.fsync_interval_s)
                if cfg.http.listen:
                    server = HttpServer(*parse_listen(cfg.http.listen))
                    _warn_if_exposed(server.host, server.port, token)
                scene = {"roi": "wbc", "cells": "cells"}.get(cfg.inference.mode, "all")
                source = open_source(cfg.source.input, cfg.source, scene, cfg.inference.roi_size)
            except (ResultLogError, ServerError, SourceError) as exc:
                return _error(_exit_code(exc), exc)
            listeners = _listeners(source, result_log)
            if cfg.inference.mode == "cells":
                cells, resumed = _count_session(cfg, classifier, result_log,
                                                tracking=not source.batch)
            cal_state = _calibration_state(cfg, source)
            pipeline = Pipeline(source, classifier, PipelineSettings.from_config(cfg),
                                classifier.info.name, listeners, cells, cal_state)
            renderer = Renderer(pipeline, cfg.http.jpeg_quality)
            if server is not None:
                _serve(server, cfg, token, pipeline, renderer, cells, result_log)
            preview = _open_preview(cfg)
            log.info(
                "model %s: %s (%d classes, %d px, %s, %s, illumination %s) | source %s | "
                "mode %s%s%s%s",
                model_label(choice.path, choice.precision), classifier.info.name,
                len(classifier.classes), classifier.info.input_size,
                choice.reason, plural(threads, "thread"), classifier.info.preprocess.illumination,
                source.name,
                cfg.inference.mode, _calibration_text(cal_state),
                f" | live view {server.url}" if server else "",
                f" | log {result_log.path}" if result_log else "",
            )
            if cells is not None:
                log.info("%s", _session_line(cells, resumed, cfg))
            pipeline.start()
            _main_loop(pipeline, renderer, stop, notifier, preview)
    finally:
        notifier.stopping()
        if pipeline is not None:
            pipeline.stop()
            pipeline.join(cfg.source.timeout_s + 3.0)
        elif source is not None:
            source.close()
        if cells is not None:
            with suppress(Exception):
                _stop_count(cells, closes=source is not None and source.batch)
        for resource in (server, preview, result_log):
            if resource is not None:
                with suppress(Exception):
                    resource.close()
    assert pipeline is not None
    return _finish(pipeline, source, result_log)


def _listeners(source: Any, result_log: ResultLog | None) -> list[Callable[[Result], None]]:
    """Who hears each result (the log, a batch's printed lines) and each skipped image."""
    listeners: list[Callable[[Result], None]] = [result_log] if result_log else []
    if source.batch:
        listeners.append(_print_batch_line)
    if isinstance(source, ImageFolderSource):
        source.skip_listeners.append(_print_skip_line)
        if result_log is not None:
            source.skip_listeners.append(_skip_logger(result_log, source.name))
    return listeners


def _serve(server: HttpServer, cfg: RunConfig, token: str, pipeline: Pipeline,
           renderer: Renderer, cells: CountSession | None, result_log: ResultLog | None) -> None:
    """Start the live page's server (with the review desk when cell mode keeps a log)."""
    review = (ReviewDesk(cells)
              if cells is not None and result_log is not None else None)
    server.start(App(
        pipeline, renderer, cfg.http.stream_max_fps, cfg.http.snapshot_dir,
        max(STALE_AFTER_S, 2 * cfg.source.timeout_s),
        guard=AccessGuard(allowed_hosts(cfg.http.allowed_hosts), token),
        max_streams=cfg.http.max_streams,
        snapshot_min_interval_s=cfg.http.snapshot_min_interval_s,
        snapshot_max_bytes=cfg.http.snapshot_max_mb * 1_000_000,
        review=review,
    ))


def _open_preview(cfg: RunConfig) -> Any:
    """The local preview window, or None (no display, or it could not open: a warning)."""
    from lgld.runtime.preview import PreviewWindow, preview_possible

    show, why = preview_possible(cfg.display.preview)
    if show:
        try:
            return PreviewWindow()
        except cv2.error as exc:
            log.warning("no preview window: %s", str(exc).strip().splitlines()[-1])
    elif cfg.display.preview == "on":
        log.warning("no preview window: %s", why)
    return None


def _finish(pipeline: Pipeline, source: Any, result_log: ResultLog | None) -> int:
    """The end-of-run summary line and the exit status."""
    skipped = source.skipped if isinstance(source, ImageFolderSource) else 0
    log.info("%s%s%s", pipeline.snapshot().summary_line(),
             f"; {skipped} skipped (unreadable or over source.max_image_pixels)" if skipped else "",
             f"; log {result_log.path} ({result_log.lines} lines)" if result_log else "")
    if pipeline.failure is not None:
        return _error(_exit_code(pipeline.failure), _message(pipeline.failure))
    if pipeline.batch and pipeline.stats.results == 0:
        return _error(EXIT_SOURCE, f"no image could be read ({skipped} skipped, see above)")
    return EXIT_OK


def _calibration_text(state: calibration.CalibrationState | None) -> str:
    if state is None:
        return " | flat-field calibration off"
    text = f" | calibration {state.state}: {state.message}"
    cal = state.calibration
    if state.state == "ok" and cal is not None and cal.camera:
        text += f" | camera locked: {_controls_text(cal.camera)}"
    return text


def _count_session(cfg: RunConfig, classifier: OnnxClassifier, result_log: ResultLog | None,
                   tracking: bool) -> tuple[CountSession, bool]:
    """Cell mode's stage and count session, and whether it resumed the log's open session."""
    c = cfg.cells
    stage = CellStage(classifier, DetectorSettings.from_config(c),
                      TrackerSettings.from_config(c), c.target, tracking)
    info = classifier.info
    model = {"name": info.name, "path": str(classifier.path),
             "sha256": file_sha256(classifier.path), "precision": info.quantization,
             "classes": list(classifier.classes)}
    budget = None
    if c.crops_dir and c.crop_budget_mb > 0:
        log_path = cfg.log.path
        budget = CropBudget(c.crops_dir, c.crop_budget_mb,
                            (lambda: reviewed_crops(log_path)) if log_path else frozenset)
    session = CountSession(stage, result_log.write if result_log else None, model, c.sample,
                           c.crops_dir or None, cfg.log.path or None,
                           crop_budget=budget.added if budget else None,
                           domain=_domain_check(cfg, info.domain, model["sha256"]))
    resumed = session.open(result_log.path if result_log else None,
                           resume=tracking and c.resume)
    if resumed and c.sample and c.sample != session.sample:
        session.start(c.sample)  # another sample is another count: the open one ends here
        resumed = False
    return session, resumed


def _session_line(cells: CountSession, resumed: bool, cfg: RunConfig) -> str:
    """The start-up line of the count: resumed or new, and where it is kept."""
    count = cells.count()
    how = (f"resumed count session {cells.id} at {count['total']}/{count['target']} cells"
           if resumed else f"new count session {cells.id}")
    sample = f", sample {cells.sample!r}" if cells.sample else ""
    kept = (f"; kept in {cfg.log.path}, crops in {cfg.cells.crops_dir or '(none)'}"
            if cfg.log.path else "; no log (--no-log): this count is not kept")
    return how + sample + kept


def _stop_count(cells: CountSession, closes: bool) -> None:
    """A stopped run leaves an unfinished count open for the next start to resume (docs/cells.md);
    a count that reached its target, or a batch of images, is closed."""
    count = cells.count()
    line = f"count session {cells.id}: {_count_line(count)}"
    if closes or count["complete"]:
        cells.end()
        log.info("%s; closed", line)
    else:
        log.info("%s; left open: the next start continues it (--new-session starts a new "
                 "count)", line)


def _domain_check(cfg: RunConfig, reference: dict[str, Any], sha256: str) -> DomainCheck:
    """The per-session microscope check: the model's reference and its stored validations."""
    ref = None
    if reference:
        try:
            ref = DomainReference.from_dict(reference)
        except DomainError as exc:
            log.warning("model: %s; the microscope is not checked", exc)
    try:
        records = validation.load(calibration.state_dir(cfg.calibration))
    except validation.ValidationError as exc:
        log.warning("%s", exc)
        records = []
    return DomainCheck(ref, max(1, cfg.cells.domain_cells), validation.for_model(records, sha256))


def _count_line(count: dict[str, Any]) -> str:
    parts = [f"{k} {v} ({count['percent'][k]:.0f}%)" for k, v in count["counts"].items() if v]
    total = f"{count['total']}/{plural(count['target'], 'cell')}"
    line = total + (": " + ", ".join(parts) if parts else "")
    domain = count.get("domain")
    return line + (f"; microscope: {domain['state']} ({domain['message']})" if domain else "")


def _message(exc: BaseException) -> str:
    if isinstance(exc, SourceError | ResultLogError | RegionError | ModelLoadError):
        return str(exc)
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"


def _warn_if_exposed(host: str, port: int, token: str) -> None:
    """Say it when the page is reachable from other machines, and louder without a token."""
    if is_loopback(host):
        return
    log.warning("http: listening on %s:%d: the live page, stream and snapshots are reachable "
                "from the network (only 127.0.0.1 keeps them on this machine)", host, port)
    if not token:
        log.warning("http: no access token: anyone who can reach %s:%d can watch and save "
                    "snapshots; set [http] token_file or $LGLD_HTTP_TOKEN (docs/deploy.md)",
                    host, port)


def _main_loop(pipeline: Pipeline, renderer: Renderer, stop: threading.Event,
               notifier: Notifier, preview: Any) -> None:
    """Wait for the end; meanwhile send READY after the first frame, ping the watchdog, update
    STATUS and the preview window."""
    last_status, shown, ready = 0.0, -1, False
    tick = 0.03 if preview is not None else 0.2
    while not stop.is_set():
        finished = pipeline.finished.wait(tick)
        if not ready and pipeline.stats.frames > 0:  # the camera delivers: now we are up
            ready = True
            notifier.ready(f"classifying {pipeline.source.name}")
        if finished:
            break
        now = time.monotonic()
        healthy = pipeline.alive() and now - pipeline.heartbeat < 10.0
        notifier.watchdog(healthy)
        if now - last_status > 2.0:
            last_status = now
            notifier.status(pipeline.snapshot().status_line())
        if preview is not None:
            seq, frame, result = pipeline.hub.latest()
            if frame is not None and seq != shown:
                shown = seq
                if not preview.show(renderer.overlay(frame, result)):
                    break


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``lgld-run``; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_USAGE
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
    handler.addFilter(_prefix_warnings)
    log.addHandler(handler)
    previous_level = log.level
    log.setLevel(logging.INFO)
    with suppress(Exception):
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        cfg = effective_config(args)
        if args.print_config:
            sys.stdout.write(to_toml(cfg))
            return EXIT_OK
        cfg.log.path, cfg.cells.crops_dir = output_paths(cfg)
        if args.check:
            from lgld.runtime.doctor import doctor

            return doctor(cfg)
        if args.calibrate:
            return calibrate(cfg)
        return run(cfg)
    except ConfigError as exc:
        return _error(EXIT_USAGE, exc)
    except KeyboardInterrupt:  # Ctrl-C before the pipeline took over the signal
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: still one line, the traceback on request
        if os.environ.get("LGLD_DEBUG"):
            raise
        return _error(EXIT_FAILURE, f"unexpected {_message(exc)} (LGLD_DEBUG=1 shows details)")
    finally:
        log.removeHandler(handler)
        log.setLevel(previous_level)


def _prefix_warnings(record: logging.LogRecord) -> bool:
    if record.levelno >= logging.WARNING and not str(record.msg).startswith("warning: "):
        record.msg = "warning: " + str(record.msg)
    return True


if __name__ == "__main__":
    sys.exit(main())
