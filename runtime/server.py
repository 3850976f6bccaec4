"""The HTTP side: a live page, MJPEG stream, snapshots, JSON API, health and Prometheus metrics.

Endpoints (standard library ``ThreadingHTTPServer``, one thread per client):

* ``/``                  the live page (stream, latest prediction, counts, links)
* ``/stream.mjpg``       multipart MJPEG of the overlaid frames, at camera rate (capped)
* ``/snapshot.jpg``      the latest overlaid frame; ``?raw=1`` the frame as captured
* ``/snapshot.json``     the latest result (the one drawn on /snapshot.jpg)
* ``POST /api/snapshot`` save raw frame, overlay and result JSON to ``http.snapshot_dir``
* ``/api/latest``        the latest result plus counts and rates (JSON)
* ``/healthz``           200 while frames arrive and inference runs, else 503
* ``/metrics``           Prometheus text format (version 0.0.4)

It binds 127.0.0.1 unless another address is asked for explicitly. Every request passes the
access checks (:mod:`web_guard`: Host, Origin, token) and a Content-Length check in
:meth:`Handler.parse_request`, before any route; malformed requests and clients that vanish
get one log line, never a traceback. Stream viewers are capped (``max_streams``, 503 beyond).
"""

from __future__ import annotations

import errno
import logging
import socket
import socketserver
import sys
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import cv2
import numpy as np

from lgld.runtime.core.modelinfo import lgld_version
from lgld.runtime.core.strictjson import dumps
from lgld.runtime.overlay import OverlayInfo, draw_overlay
from lgld.runtime.pipeline import Pipeline, Result
from lgld.runtime.web_guard import AccessGuard
from lgld.runtime.web_snapshots import SnapshotRefused, SnapshotStore

BOUNDARY = "lgldframe"
STALE_AFTER_S = 5.0
MAX_BODY = 65536  # no route takes a request body; larger ones are refused (413)

log = logging.getLogger("lgld.runtime")


class ServerError(RuntimeError):
    """The HTTP server cannot start (one-line reason)."""


# ---------------------------------------------------------------------------------------------
# Rendering shared by every viewer (the preview window uses it too)


class Renderer:
    """Overlay drawing and JPEG encoding of the latest frame, cached so that many viewers cost
    one encode per frame, and nothing at all when nobody watches."""

    def __init__(self, pipeline: Pipeline, jpeg_quality: int = 80) -> None:
        self.pipeline = pipeline
        self.jpeg_quality = jpeg_quality
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[tuple, bytes]] = {}

    def info(self) -> OverlayInfo:
        p = self.pipeline
        s = p.stats
        return OverlayInfo(
            model=p.model_name,
            mode=p.settings.mode,
            camera_fps=s.camera_fps.rate(),
            inference_fps=s.inference_fps.rate(),
            latency_ms=s.last_latency_ms,
            e2e_ms=s.last_e2e_ms,
            dropped=p.slot.dropped,
            camera_message="" if s.camera_ok else s.camera_message,
        )

    def overlay(self, frame: Any, result: Result | None) -> np.ndarray:
        try:
            region = self.pipeline.region_for(frame.image.shape)
        except Exception:
            region = None
        return draw_overlay(frame.image, result, self.info(), region)

    def jpeg(self, frame: Any, result: Result | None, raw: bool = False) -> bytes:
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


# ---------------------------------------------------------------------------------------------
# Prometheus text


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:.6g}"


def metrics_text(pipeline: Pipeline) -> str:
    """All metrics in the Prometheus text exposition format."""
    s = pipeline.stats
    out: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(f"{name}{labels} {_number(value)}" for labels, value in samples)

    info = (f'{{model="{_label(pipeline.model_name)}",source="{_label(pipeline.source.name)}",'
            f'mode="{pipeline.settings.mode}",version="{_label(lgld_version())}"}}')
    metric("lgld_info", "gauge", "Model, source and mode in use (value is always 1).",
           [(info, 1)])
    metric("lgld_uptime_seconds", "gauge", "Seconds since the pipeline started.",
           [("", round(s.uptime(), 3))])
    metric("lgld_camera_fps", "gauge", "Frames per second delivered by the source (last 2 s).",
           [("", round(s.camera_fps.rate(), 3))])
    metric("lgld_inference_fps", "gauge", "Frames classified per second (last 2 s).",
           [("", round(s.inference_fps.rate(), 3))])
    metric("lgld_frames_total", "counter", "Frames captured.", [("", s.frames)])
    metric("lgld_dropped_frames_total", "counter",
           "Frames replaced by a newer one before inference took them.",
           [("", pipeline.slot.dropped)])
    metric("lgld_results_total", "counter", "Results by state.",
           [(f'{{state="{_label(k)}"}}', v) for k, v in s.states.items()])
    metric("lgld_class_results_total", "counter", "Confident results by class.",
           [(f'{{class="{_label(k)}"}}', v) for k, v in s.classes.items()])
    metric("lgld_camera_up", "gauge", "1 while the camera delivers frames, 0 while it is lost.",
           [("", 1 if s.camera_ok else 0)])
    metric("lgld_camera_reconnects_total", "counter", "Successful camera reconnections.",
           [("", s.reconnects)])
    buckets, total, count = s.latency.cumulative()
    name = "lgld_inference_latency_seconds"
    out.append(f"# HELP {name} Quality check, preprocessing and inference time per frame.")
    out.append(f"# TYPE {name} histogram")
    out += [f'{name}_bucket{{le="{le}"}} {n}' for le, n in buckets]
    out += [f"{name}_sum {total:.6f}", f"{name}_count {count}"]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# The page

PAGE_PATH = Path(__file__).resolve().parent / "assets" / "index.html"


# ---------------------------------------------------------------------------------------------
# The server


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # do not wait for viewers (or idle keep-alive clients) on exit
    allow_reuse_address = True
    app: App

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One log line instead of socketserver's traceback on stderr (the journal)."""
        exc = sys.exc_info()[1]
        log.warning("http: %s from %s: %s", type(exc).__name__, client_address[0],
                    str(exc).strip().splitlines()[0][:160] if str(exc).strip() else "")

    def server_bind(self) -> None:
        # skip HTTPServer.server_bind's reverse DNS lookup (slow without a network)
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


class App:
    """What the request handlers serve: the pipeline, its renderer and the settings."""

    def __init__(
        self,
        pipeline: Pipeline,
        renderer: Renderer,
        stream_max_fps: float = 30.0,
        snapshot_dir: str = "",
        stale_after_s: float = STALE_AFTER_S,
        guard: AccessGuard | None = None,
        max_streams: int = 4,
        snapshot_min_interval_s: float = 2.0,
        snapshot_max_bytes: int = 500_000_000,
    ) -> None:
        self.pipeline = pipeline
        self.renderer = renderer
        self.stream_max_fps = stream_max_fps
        self.snapshot_dir = snapshot_dir
        self.snapshots = SnapshotStore(snapshot_dir, snapshot_min_interval_s,
                                       snapshot_max_bytes) if snapshot_dir else None
        self.stale_after_s = stale_after_s
        self.guard = guard or AccessGuard()
        self.max_streams = max_streams
        self.streams = 0
        self._streams_lock = threading.Lock()
        self.stopping = threading.Event()

    def open_stream(self) -> bool:
        """Take a viewer slot; False when max_streams viewers are watching."""
        with self._streams_lock:
            if self.streams >= self.max_streams:
                return False
            self.streams += 1
            return True

    def close_stream(self) -> None:
        with self._streams_lock:
            self.streams -= 1

    def latest(self) -> dict[str, Any]:
        p = self.pipeline
        _, _, result = p.hub.latest()
        return {
            "model": p.model_name,
            "classes": p.classes,
            "source": p.source.name,
            "mode": p.settings.mode,
            "version": lgld_version(),
            "result": None if result is None else result.to_record(),
            "stats": p.summary(),
        }

    def health(self) -> tuple[bool, str]:
        p = self.pipeline
        if p.finished.is_set() or p.stopping:
            return False, "stopped"
        if not p.stats.camera_ok:
            return False, f"camera lost: {p.stats.camera_message}"
        if p.stats.last_frame_mono == 0.0:
            return (p.stats.uptime() < self.stale_after_s), "waiting for the first frame"
        age = time.monotonic() - p.stats.last_frame_mono
        if age > self.stale_after_s and not p.batch:
            return False, f"no frame for {age:.1f} s"
        if time.monotonic() - p.heartbeat > self.stale_after_s:
            return False, "inference is stuck"
        return True, "ok"

    def save_snapshot(self) -> dict[str, Any]:
        """Save the latest frame, raises ServerError or SnapshotRefused (too soon)."""
        if self.snapshots is None:
            raise ServerError("snapshot saving is off (set http.snapshot_dir)")
        _, frame, result = self.pipeline.hub.latest()
        if frame is None:
            raise ServerError("no frame yet")
        self.snapshots.claim()
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        record = None if result is None else result.to_record()
        parts = [
            ("raw.jpg", self.renderer.jpeg(frame, result, raw=True)),
            ("overlay.jpg", self.renderer.jpeg(frame, result)),
            ("json", dumps({"frame": frame.index, "result": record}, indent=1).encode()),
        ]
        try:
            files = self.snapshots.save(f"lgld-{stamp}-f{frame.index}", parts)
        except OSError as exc:
            raise ServerError(f"cannot save snapshot in {self.snapshots.folder}: "
                              f"{exc.strerror or exc}") from None
        return {"files": [str(f) for f in files], "frame": frame.index, "result": record}


class Handler(BaseHTTPRequestHandler):
    server_version = "lgld-run"
    protocol_version = "HTTP/1.1"
    timeout = 60  # an idle keep-alive connection is closed after this many seconds
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # quiet: a stream viewer would log every frame otherwise

    # -- the one gate every request passes ------------------------------------------------

    def handle(self) -> None:
        """A client that resets or times out mid-request costs one log line, no traceback."""
        try:
            super().handle()
        except (ConnectionError, TimeoutError) as exc:
            self.close_connection = True
            what = "reset the connection" if isinstance(exc, ConnectionResetError) else (
                "went away" if isinstance(exc, ConnectionError) else "timed out")
            log.info("http: client %s %s mid-request", self.client_address[0], what)

    def parse_request(self) -> bool:
        """The standard parsing, then the access checks and the Content-Length check, for every
        method and route (a refused request never reaches a route)."""
        if not super().parse_request():
            return False
        self._cookie = None
        app = self.server.app
        local = self.connection.getsockname()[0]
        refusal = app.guard.refusal(self.command, self.path, self.headers, local)
        if refusal is not None:
            log.info("http: %d for %s %s from %s: %s", refusal.status, self.command,
                     self.path.split("?")[0][:80], self.client_address[0], refusal.message)
            self.close_connection = True
            self._error(refusal.status, refusal.message)
            return False
        length = self.headers.get("Content-Length")
        if length is not None:
            problem, status = None, 400
            if not length.strip().isdigit():
                problem = f"Content-Length {length[:40]!r} is not a number of bytes"
            elif int(length) > MAX_BODY:
                problem, status = f"Content-Length {length[:40]} is over {MAX_BODY}", 413
            if problem:
                log.warning("http: %d for %s %s from %s: %s", status, self.command,
                            self.path.split("?")[0][:80], self.client_address[0], problem)
                self.close_connection = True
                self._error(status, problem)
                return False
        self._cookie = app.guard.set_cookie(self.path)
        return True

    def end_headers(self) -> None:
        if getattr(self, "_cookie", None):
            self.send_header("Set-Cookie", self._cookie)
            self._cookie = None
        super().end_headers()

    # -- helpers ---------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str, extra: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any, extra: dict | None = None) -> None:
        self._send(status, dumps(obj).encode(), "application/json", extra)

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    # -- routes ----------------------------------------------------------------------------

    def do_HEAD(self) -> None:  # noqa: N802 - stdlib naming
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        app = self.server.app
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        try:
            if url.path in ("/", "/index.html"):
                self._send(200, PAGE_PATH.read_bytes(), "text/html; charset=utf-8")
            elif url.path == "/stream.mjpg":
                self._stream(app)
            elif url.path in ("/snapshot.jpg", "/snapshot/raw.jpg"):
                raw = url.path.endswith("raw.jpg") or query.get("raw", ["0"])[0] not in ("0", "")
                _, frame, result = app.pipeline.hub.latest()
                if frame is None:
                    self._error(503, "no frame yet")
                else:
                    self._send(200, app.renderer.jpeg(frame, result, raw), "image/jpeg",
                               {"X-Lgld-Frame": str(frame.index)})
            elif url.path == "/snapshot.json":
                _, frame, result = app.pipeline.hub.latest()
                self._json(200, {"frame": None if frame is None else frame.index,
                                 "result": None if result is None else result.to_record()})
            elif url.path == "/api/latest":
                self._json(200, app.latest())
            elif url.path == "/healthz":
                ok, reason = app.health()
                self._json(200 if ok else 503, {"status": "ok" if ok else "unhealthy",
                                                "reason": reason})
            elif url.path == "/metrics":
                self._send(200, metrics_text(app.pipeline).encode(),
                           "text/plain; version=0.0.4; charset=utf-8")
            else:
                self._error(404, f"not found: {url.path}")
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        app = self.server.app
        length = int(self.headers.get("Content-Length") or 0)  # checked in parse_request
        if length:
            self.rfile.read(length)
        if urlsplit(self.path).path != "/api/snapshot":
            self._error(404, f"not found: {self.path}")
            return
        try:
            self._json(200, app.save_snapshot())
        except SnapshotRefused as exc:
            self._json(429, {"error": str(exc)}, {"Retry-After": str(max(1, round(
                exc.retry_after + 0.5)))})
        except ServerError as exc:
            self._error(409, str(exc))

    def _stream(self, app: App) -> None:
        self.close_connection = True
        if not app.open_stream():
            self._error(503, f"too many viewers (http.max_streams = {app.max_streams})")
            return
        try:
            self._stream_frames(app)
        finally:
            app.close_stream()

    def _stream_frames(self, app: App) -> None:
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-store, no-cache, private")
        self.send_header("Pragma", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        min_gap = 1.0 / app.stream_max_fps
        seq, last_sent = 0, 0.0
        while not app.stopping.is_set():
            seq, frame, result = app.pipeline.hub.wait_frame(seq, timeout=0.5)
            if frame is None:
                if app.pipeline.finished.is_set():
                    break
                continue
            wait = last_sent + min_gap - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            data = app.renderer.jpeg(frame, result)
            self.wfile.write(
                f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n"
                f"X-Lgld-Frame: {frame.index}\r\n\r\n".encode() + data + b"\r\n"
            )
            self.wfile.flush()
            last_sent = time.monotonic()
            if app.pipeline.finished.is_set():  # a finished batch: show the last frame once
                break


class HttpServer:
    """Owns the listening socket (bound at once, so a busy port fails early) and its thread."""

    def __init__(self, host: str, port: int) -> None:
        _Server.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self.server = _Server((host, port), Handler)
        except OSError as exc:
            raise ServerError(_bind_error(host, port, exc)) from None
        self.host, self.port = host, int(self.server.server_address[1])
        self.app: App | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self, app: App) -> HttpServer:
        self.app = self.server.app = app
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
            name="lgld-http", daemon=True,
        )
        self._thread.start()
        return self

    def close(self) -> None:
        if self.app is not None:
            self.app.stopping.set()
            self.app.pipeline.hub.wake()
        if self._thread is not None:
            self.server.shutdown()
            self._thread.join(2.0)
        self.server.server_close()


def _bind_error(host: str, port: int, exc: OSError) -> str:
    where = f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return f"cannot listen on {where}: the port is already in use (another lgld-run?)"
    if exc.errno == errno.EACCES:
        return f"cannot listen on {where}: permission denied (ports below 1024 need privileges)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {where}: no such address on this machine"
    if isinstance(exc, socket.gaierror):
        return f"cannot listen on {where}: unknown host name"
    return f"cannot listen on {where}: {exc.strerror or exc}"


def port_free(host: str, port: int) -> tuple[bool, str]:
    """Can we listen on host:port right now? (for the doctor)"""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        return True, f"{host}:{port} is free"
    except OSError as exc:
        return False, _bind_error(host, port, exc)
