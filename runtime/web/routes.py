"""The HTTP routes: what each URL serves, and the :class:`App` state they serve it from.

* ``/``                  the live page (stream, latest prediction, counts, links)
* ``/stream.mjpg``       multipart MJPEG of the overlaid frames, at camera rate (capped)
* ``/snapshot.jpg``      the latest overlaid frame; ``?raw=1`` the frame as captured
* ``/snapshot.json``     the latest result (the one drawn on /snapshot.jpg)
* ``POST /api/snapshot`` save raw frame, overlay and result JSON to ``http.snapshot_dir``
* ``/api/latest``        the latest result plus counts and rates (JSON)
* ``/healthz``           200 while frames arrive and inference runs, else 503; with the
                         flat-field calibration's state (ok, stale, missing, demo)
* ``/metrics``           Prometheus text format (version 0.0.4)
* ``/api/count``         cell mode: the differential count (counts, %, target, session)
* ``POST /api/count/reset``  cell mode: end the count session and start a new, empty one
* ``POST /api/session``  cell mode: the same, with ``{"sample": "label"}`` as the JSON body
* ``/api/review``        the current count session's cells and counts (cell mode with a log);
  ``POST`` a correction ``{"session", "track", "action", "class"}`` (409 for another session
  than the current one); ``/api/review/crop?track=T`` a crop
* ``/report``            the current count session's lab report (the lgld-report HTML)

A new route is one branch in :meth:`Handler.do_GET` (or ``do_POST``) reading from the App.
It needs no checks of its own: every request passes the access checks (:mod:`guard`: Host,
Origin, token), a Content-Length check and, for a POST, the JSON content-type check in
:meth:`Handler.parse_request` before any route;
a malformed request or a client that vanishes costs one log line, never a traceback. Stream
viewers are capped (``max_streams``, 503 beyond); snapshots are rate-limited and size-capped
(:mod:`snapshots`). Every JSON answer is strict JSON (:mod:`lgld.runtime.core.strictjson`).
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from lgld.runtime.config import HttpSection
from lgld.runtime.core.jsonlog import loads
from lgld.runtime.core.modelinfo import lgld_version
from lgld.runtime.core.precision import model_label
from lgld.runtime.core.strictjson import dumps
from lgld.runtime.core.untrusted import UntrustedError, check_text
from lgld.runtime.pipeline import Pipeline
from lgld.runtime.render import Renderer
from lgld.runtime.review.live import ReviewDesk, ReviewError
from lgld.runtime.trust import STATE_LABELS
from lgld.runtime.web import mjpeg
from lgld.runtime.web.guard import AccessGuard, Refusal
from lgld.runtime.web.snapshots import SnapshotRefused, SnapshotStore

STALE_AFTER_S = 5.0
MAX_BODY = 65536  # no route takes a request body; larger ones are refused (413)

log = logging.getLogger("lgld.runtime")
PAGE_PATH = Path(__file__).resolve().parents[1] / "assets" / "index.html"


class SnapshotError(RuntimeError):
    """A snapshot cannot be saved (one-line reason)."""


class App:
    """What the request handlers serve: the pipeline, its renderer and the settings."""

    def __init__(
        self,
        pipeline: Pipeline,
        renderer: Renderer,
        stream_max_fps: float = HttpSection.stream_max_fps,
        snapshot_dir: str = HttpSection.snapshot_dir,
        stale_after_s: float = STALE_AFTER_S,
        guard: AccessGuard | None = None,
        max_streams: int = HttpSection.max_streams,
        snapshot_min_interval_s: float = HttpSection.snapshot_min_interval_s,
        snapshot_max_bytes: int = HttpSection.snapshot_max_mb * 1_000_000,
        review: ReviewDesk | None = None,
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
        self.review = review  # count sessions: cell mode with a log
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

    def review_desk(self) -> ReviewDesk:
        if self.review is None:
            raise ReviewError("review needs cell mode and a log: this run keeps none (--no-log "
                              "or [log] path = \"\"); lgld-run --mode cells keeps one by "
                              "default", 409)
        return self.review

    def latest(self) -> dict[str, Any]:
        """/api/latest: the latest result, counts and rates, and the state vocabulary."""
        snap = self.pipeline.snapshot()
        clf = self.pipeline.classifier
        return {
            "model": snap.model,
            # the file and precision that run, as --check, the log and the report name them
            "model_file": model_label(clf.path, clf.info.quantization)
            if hasattr(clf, "path") and hasattr(clf, "info") else None,
            "classes": self.pipeline.classes,
            "source": snap.source,
            "mode": snap.mode,
            "version": lgld_version(),
            "result": None if snap.result is None else snap.result.to_record(),
            "stats": snap.counts(),
            "calibration": snap.calibration,
            "state_labels": STATE_LABELS,
            "count": snap.cell_count,  # cell mode: the differential count, else null
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

    def calibration(self) -> dict[str, str]:
        """The flat-field calibration's state (ok | stale | missing | demo) and what to do about it;
        a missing or stale one does not make the run unhealthy (frames are still classified,
        with the model's own illumination correction only)."""
        cal = self.pipeline.calibration
        if cal is None:
            return {"state": "off", "message": "flat-field calibration not used"}
        return {"state": cal.state, "message": cal.message}

    def save_snapshot(self) -> dict[str, Any]:
        """Save the latest frame; raises SnapshotError, or SnapshotRefused when too soon."""
        if self.snapshots is None:
            raise SnapshotError("snapshot saving is off (set http.snapshot_dir)")
        _, frame, result = self.pipeline.hub.latest()
        if frame is None:
            raise SnapshotError("no frame yet")
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
            raise SnapshotError(f"cannot save snapshot in {self.snapshots.folder}: "
                                f"{exc.strerror or exc}") from None
        return {"files": [str(f) for f in files], "frame": frame.index, "result": record}


def _length_refusal(length: str | None) -> Refusal | None:
    """Why a Content-Length is refused (not a number: 400, over MAX_BODY: 413), else None."""
    if length is None:
        return None
    if not length.strip().isdigit():
        return Refusal(400, f"Content-Length {length[:40]!r} is not a number of bytes")
    if int(length) > MAX_BODY:
        return Refusal(413, f"Content-Length {length[:40]} is over {MAX_BODY}")
    return None


class Handler(BaseHTTPRequestHandler):
    server_version = "lgld-run"
    protocol_version = "HTTP/1.1"
    timeout = 60  # an idle keep-alive connection is closed after this many seconds
    server: Any  # an HTTP server with an ``app`` attribute (see lgld.runtime.web.server)

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
        """The standard parsing, then the access checks, the Content-Length check and the
        content-type check, for every method and route (a refused request never reaches a
        route)."""
        if not super().parse_request():
            return False
        self._cookie = None
        app = self.server.app
        local = self.connection.getsockname()
        refusal = app.guard.refusal(self.command, self.path, self.headers, local[0], local[1])
        if refusal is None:
            refusal = _length_refusal(self.headers.get("Content-Length"))
        if refusal is None:
            refusal = app.guard.body_refusal(self.command, self.headers)
        if refusal is not None:
            level = logging.WARNING if refusal.status in (400, 413) else logging.INFO
            log.log(level, "http: %d for %s %s from %s: %s", refusal.status, self.command,
                    self.path.split("?")[0][:80], self.client_address[0], refusal.message)
            self.close_connection = True
            self._error(refusal.status, refusal.message)
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
                cells = app.pipeline.cells
                self._json(200 if ok else 503, {"status": "ok" if ok else "unhealthy",
                                                "reason": reason,
                                                "calibration": app.calibration(),
                                                "microscope": cells.count().get("domain")
                                                if cells is not None else None})
            elif url.path == "/api/count":
                if app.pipeline.cells is None:
                    self._error(409, "not in cell mode (lgld-run --mode cells)")
                else:
                    self._json(200, app.pipeline.cells.count())
            elif url.path == "/metrics":
                self._send(200, app.pipeline.snapshot().prometheus().encode(),
                           "text/plain; version=0.0.4; charset=utf-8")
            elif url.path in ("/api/review", "/api/review/crop", "/report"):
                self._review_get(app, url.path, query)
            else:
                self._error(404, f"not found: {url.path}")
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        app = self.server.app
        length = int(self.headers.get("Content-Length") or 0)  # checked in parse_request
        body = self.rfile.read(length) if length else b""
        path = urlsplit(self.path).path
        if path in ("/api/count/reset", "/api/session"):
            self._new_session(app, body if path == "/api/session" else b"")
            return
        if path == "/api/review":
            self._review_post(app, body)
            return
        if path != "/api/snapshot":
            self._error(404, f"not found: {self.path}")
            return
        try:
            self._json(200, app.save_snapshot())
        except SnapshotRefused as exc:
            retry = str(max(1, round(exc.retry_after + 0.5)))
            self._json(429, {"error": str(exc)}, {"Retry-After": retry})
        except SnapshotError as exc:
            self._error(409, str(exc))

    def _new_session(self, app: App, body: bytes) -> None:
        cells = app.pipeline.cells
        if cells is None:
            self._error(409, "not in cell mode (lgld-run --mode cells)")
            return
        sample = None
        if body.strip():
            try:
                data = loads(body)
                sample = data.get("sample") if isinstance(data, dict) else None
            except ValueError:
                self._error(400, "the body must be JSON: {\"sample\": \"label\"}")
                return
            try:
                sample = None if sample is None else check_text(sample, "sample")
            except UntrustedError as exc:
                self._error(400, str(exc))
                return
        cells.start(sample)
        self._json(200, cells.count())

    def _review_get(self, app: App, path: str, query: dict[str, list[str]]) -> None:
        try:
            desk = app.review_desk()
            if path == "/api/review":
                self._json(200, desk.gallery())
            elif path == "/report":
                self._send(200, desk.report_html().encode(), "text/html; charset=utf-8")
            else:
                crop = desk.crop(query.get("track", [""])[0])
                if crop is None:
                    self._error(404, "no crop saved for this cell")
                else:
                    self._send(200, crop, "image/jpeg")
        except ReviewError as exc:
            self._error(exc.status, str(exc))

    def _review_post(self, app: App, body: bytes) -> None:
        try:
            request = loads(body or b"null")
        except ValueError:
            self._error(400, "the body is not JSON")
            return
        try:
            self._json(200, app.review_desk().review(request))
        except ReviewError as exc:
            self._error(exc.status, str(exc))

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
        self.send_header("Content-Type", mjpeg.CONTENT_TYPE)
        self.send_header("Cache-Control", "no-store, no-cache, private")
        self.send_header("Pragma", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()

        def write(data: bytes) -> None:
            self.wfile.write(data)
            self.wfile.flush()

        mjpeg.stream_mjpeg(write, app.pipeline, app.renderer, app.stopping, app.stream_max_fps)
