"""The HTTP endpoints answer a real HTTP client (urllib) on 127.0.0.1."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import FakeClassifier, free_port

from lgld.runtime.config import TrustSection
from lgld.runtime.pipeline import Pipeline, PipelineSettings
from lgld.runtime.render import Renderer
from lgld.runtime.sources.demo import DemoSource
from lgld.runtime.web import App, HttpServer, ServerError, port_free
from lgld.runtime.web.mjpeg import BOUNDARY, stream_mjpeg

SAMPLE = re.compile(
    r"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*=\"([^\"\\]|\\.)*\",?)*\})? "
    r"([-+]?[0-9.]+([eE][-+]?[0-9]+)?|[-+]Inf|NaN)$"
)


@pytest.fixture
def live(tmp_path):
    """A demo pipeline (fake classifier) served on a free loopback port."""
    source = DemoSource("all", size=(320, 240), fps=60)
    source.open()
    pipeline = Pipeline(source, FakeClassifier(), PipelineSettings(trust=TrustSection(window=4)))
    server = HttpServer("127.0.0.1", 0)
    app = App(pipeline, Renderer(pipeline, 80), stream_max_fps=60,
              snapshot_dir=str(tmp_path / "snaps"))
    server.start(app)
    pipeline.start()
    deadline = time.monotonic() + 10
    while (pipeline.stats.results < 2 or pipeline.stats.frames < 3) and time.monotonic() < deadline:
        time.sleep(0.02)
    yield server, pipeline
    pipeline.stop()
    pipeline.join()
    server.close()


def get(server, path, method="GET"):
    headers = {"Content-Type": "application/json"} if method == "POST" else {}
    request = urllib.request.Request(server.url.rstrip("/") + path, method=method,
                                     headers=headers)
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status, response.headers, response.read()


def decode_jpeg(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not a JPEG"
    return image


def test_page_snapshots_api_and_health(live):
    server, pipeline = live
    assert server.host == "127.0.0.1" and server.port > 0
    status, headers, body = get(server, "/")
    assert status == 200 and b"/stream.mjpg" in body and "text/html" in headers["Content-Type"]
    status, headers, body = get(server, "/snapshot.jpg")
    overlay = decode_jpeg(body)
    assert headers["Content-Type"] == "image/jpeg" and overlay.shape == (240, 320, 3)
    _, raw_headers, raw_body = get(server, "/snapshot.jpg?raw=1")
    raw = decode_jpeg(raw_body)
    if raw_headers["X-Lgld-Frame"] == headers["X-Lgld-Frame"]:
        assert np.abs(raw.astype(int) - overlay).mean() > 3, "the overlay is drawn"
    _, _, body = get(server, "/snapshot.json")
    snap = json.loads(body)
    assert snap["result"]["model"] == "lgld" and snap["result"]["state"] == "ok"
    _, _, body = get(server, "/api/latest")
    latest = json.loads(body)
    assert latest["classes"] == ["Benign", "Early", "Pre", "Pro"]
    assert latest["result"]["class"] == "Early" and latest["stats"]["frames"] > 0
    assert latest["source"] == "demo:all"
    assert latest["state_labels"]["out_of_focus"] == "out of focus"
    status, _, body = get(server, "/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    with pytest.raises(urllib.error.HTTPError) as err:
        get(server, "/nope")
    assert err.value.code == 404
    status, _, body = get(server, "/api/snapshot", method="POST")
    saved = json.loads(body)["files"]
    assert len(saved) == 3
    assert decode_jpeg(Path(saved[0]).read_bytes()).shape == (240, 320, 3)
    assert json.loads(Path(saved[2]).read_text())["result"]["class"] == "Early"


def test_mjpeg_stream_delivers_successive_jpeg_frames(live):
    server, _ = live
    with urllib.request.urlopen(server.url + "stream.mjpg", timeout=5) as response:
        ctype = response.headers["Content-Type"]
        boundary = re.search(r"boundary=(\S+)", ctype).group(1)
        assert ctype.startswith("multipart/x-mixed-replace")
        frames = []
        for _ in range(3):
            assert response.readline().strip() == f"--{boundary}".encode()
            headers = {}
            while (line := response.readline().strip()):
                key, _, value = line.decode().partition(":")
                headers[key.lower()] = value.strip()
            assert headers["content-type"] == "image/jpeg"
            frames.append((int(headers["x-lgld-frame"]),
                           decode_jpeg(response.read(int(headers["content-length"])))))
            assert response.readline() == b"\r\n"
    indices = [i for i, _ in frames]
    assert indices == sorted(set(indices)), "each part is a newer frame"
    assert all(image.shape == (240, 320, 3) for _, image in frames)


def test_mjpeg_streaming_runs_without_http_and_stops_when_asked(live):
    _, pipeline = live
    stop = threading.Event()
    parts: list[bytes] = []

    def write(data: bytes) -> None:
        parts.append(data)
        if len(parts) == 3:
            stop.set()

    sent = stream_mjpeg(write, pipeline, Renderer(pipeline, 80), stop, max_fps=60)
    assert sent == 3 and all(p.startswith(f"--{BOUNDARY}\r\n".encode()) for p in parts)
    body = parts[-1].split(b"\r\n\r\n", 1)[1][:-2]
    assert decode_jpeg(body).shape == (240, 320, 3)


def test_status_summary_api_and_metrics_agree_on_one_snapshot(live):
    _, pipeline = live
    snap = pipeline.snapshot()
    assert snap.counts()["results"] == snap.results >= 2
    assert f"lgld_results_total{{state=\"ok\"}} {snap.states['ok']}" in snap.prometheus()
    assert snap.status_line().startswith("demo:all: Early, ")
    assert snap.summary_line().startswith(f"{snap.results} results from {snap.frames} frames")


def test_metrics_are_valid_prometheus_text(live):
    server, pipeline = live
    status, headers, body = get(server, "/metrics")
    text = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .+$", line), line
            continue
        assert SAMPLE.match(line), f"not a Prometheus sample: {line!r}"
        name, value = line.rsplit(" ", 1)
        samples[name] = float(value)
    for name in ("lgld_camera_fps", "lgld_inference_fps", "lgld_dropped_frames_total",
                 "lgld_uptime_seconds", "lgld_frames_total"):
        assert name in samples
    assert "# TYPE lgld_inference_latency_seconds histogram" in text
    hist = "lgld_inference_latency_seconds"
    buckets = [(k, v) for k, v in samples.items() if k.startswith(hist + "_bucket")]
    counts = [v for _, v in buckets]
    assert counts == sorted(counts) and buckets[-1][0].endswith('{le="+Inf"}')
    assert samples["lgld_inference_latency_seconds_count"] == counts[-1] > 0
    assert samples["lgld_inference_latency_seconds_sum"] > 0
    assert samples["lgld_camera_fps"] > 0 and samples["lgld_uptime_seconds"] > 0
    assert samples['lgld_results_total{state="ok"}'] > 0


def test_health_turns_503_when_the_pipeline_stops(live):
    server, pipeline = live
    pipeline.stop()
    pipeline.join()
    with pytest.raises(urllib.error.HTTPError) as err:
        get(server, "/healthz")
    assert err.value.code == 503 and json.loads(err.value.read())["status"] == "unhealthy"


def test_port_in_use_is_a_one_line_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ServerError, match=f"127.0.0.1:{port}: the port is already in use"):
            HttpServer("127.0.0.1", port)
        assert port_free("127.0.0.1", port)[0] is False
    assert port_free("127.0.0.1", free_port())[0] is True
