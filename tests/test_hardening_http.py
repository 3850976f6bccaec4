"""Hardening of the HTTP side: nothing open to the network by surprise, no request
that puts a traceback in the journal or holds a thread, bounded snapshots and viewers."""

from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import struct
import time
from pathlib import Path

import pytest
from conftest import FakeClassifier, small_demo_config

from lgld.runtime import cli
from lgld.runtime.config import TrustSection
from lgld.runtime.pipeline import Pipeline, PipelineSettings
from lgld.runtime.render import Renderer
from lgld.runtime.sources.demo import DemoSource
from lgld.runtime.web import App, HttpServer
from lgld.runtime.web.guard import AccessGuard, load_token


def serve(tmp_path, guard=None, classifier=None, **app_kwargs):
    """A demo pipeline (fake classifier) on a free loopback port; returns (server, pipeline)."""
    source = DemoSource("all", size=(160, 120), fps=60)
    source.open()
    pipeline = Pipeline(source, classifier or FakeClassifier(),
                        PipelineSettings(trust=TrustSection(window=4)))
    server = HttpServer("127.0.0.1", 0)
    kwargs = {"stream_max_fps": 60, "snapshot_dir": str(tmp_path / "snaps"), **app_kwargs}
    server.start(App(pipeline, Renderer(pipeline, 80), guard=guard or AccessGuard(), **kwargs))
    pipeline.start()
    deadline = time.monotonic() + 10
    while pipeline.stats.results < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    return server, pipeline


@pytest.fixture
def running(tmp_path):
    started = []

    def start(**kwargs):
        started.append(serve(tmp_path, **kwargs))
        return started[-1][0]

    yield start
    for server, pipeline in started:
        pipeline.stop()
        pipeline.join()
        server.close()


def request(server, path, method="GET", headers=None, body=None):
    """One request; a POST says it is JSON unless ``headers`` say otherwise."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    if method == "POST":
        headers = {"Content-Type": "application/json", **(headers or {})}
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks):
                break
        return b"".join(chunks)


# -- Host and Origin (DNS rebinding, cross-site POSTs) -------------------------------------------


def test_a_foreign_host_header_is_refused(running):
    server = running()
    status, _, body = request(server, "/api/latest",
                              headers={"Host": f"evil.example:{server.port}"})
    assert status == 403 and b"host" in body.lower()


def test_localhost_the_bound_address_and_configured_hosts_are_served(running):
    server = running(guard=AccessGuard(allowed_hosts=["scope.lab"]))
    for host in (f"127.0.0.1:{server.port}", f"localhost:{server.port}", "scope.lab",
                 f"SCOPE.lab:{server.port}"):
        status, _, body = request(server, "/api/latest", headers={"Host": host})
        assert status == 200, (host, body)


def test_a_post_from_a_foreign_origin_is_refused_and_saves_nothing(running, tmp_path):
    server = running()
    status, _, _ = request(server, "/api/snapshot", "POST",
                           headers={"Origin": "http://evil.example"})
    assert status == 403
    assert not (tmp_path / "snaps").exists() or not any((tmp_path / "snaps").iterdir())
    status, _, _ = request(server, "/api/snapshot", "POST",
                           headers={"Origin": f"http://127.0.0.1:{server.port}"})
    assert status == 200


# -- strict JSON ----------------------------------------------------------------------------------


def test_a_model_answering_nan_gives_strict_json_everywhere(running):
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    server = running(classifier=FakeClassifier(probs=(float("nan"), 0.7, 0.1, 0.1)))
    for path in ("/api/latest", "/snapshot.json"):
        status, _, body = request(server, path)
        document = json.loads(body, parse_constant=refuse)
        assert status == 200
        result = document["result"]
        assert result["state"] == "invalid_output" and result["class"] is None
    status, _, body = request(server, "/api/snapshot", "POST")
    saved = json.loads(body, parse_constant=refuse)
    json_file = next(Path(f) for f in saved["files"] if f.endswith(".json"))
    json.loads(json_file.read_text(), parse_constant=refuse)


# -- snapshots: rate and size ---------------------------------------------------------------------


def test_snapshots_are_rate_limited(running):
    server = running(snapshot_min_interval_s=30.0)
    assert request(server, "/api/snapshot", "POST")[0] == 200
    status, headers, _ = request(server, "/api/snapshot", "POST")
    assert status == 429 and int(headers["Retry-After"]) >= 1


def test_the_snapshot_folder_is_capped_oldest_first_and_the_log_says_so(running, tmp_path, caplog):
    folder = tmp_path / "snaps"
    folder.mkdir()
    old = []
    for i in range(4):
        path = folder / f"lgld-2020010{i}T000000.000000Z-f{i}.raw.jpg"
        path.write_bytes(b"\0" * 40_000)
        os.utime(path, (1_600_000_000 + i, 1_600_000_000 + i))
        old.append(path)
    server = running(snapshot_max_bytes=100_000, snapshot_min_interval_s=0.0)
    with caplog.at_level(logging.INFO, logger="lgld.runtime"):
        status, _, body = request(server, "/api/snapshot", "POST")
    assert status == 200
    saved = [Path(p) for p in json.loads(body)["files"]]
    assert all(p.exists() for p in saved)
    total = sum(p.stat().st_size for p in folder.iterdir())
    assert total <= 100_000
    assert not old[0].exists() and not old[1].exists(), "the oldest went first"
    assert any("snapshot" in r.getMessage() and "removed" in r.getMessage()
               for r in caplog.records)


# -- token ---------------------------------------------------------------------------------------


def test_with_a_token_every_route_but_health_needs_it(running):
    server = running(guard=AccessGuard(token="s3cret-token"))
    assert request(server, "/api/latest")[0] == 401
    assert request(server, "/snapshot.jpg")[0] == 401
    assert request(server, "/api/snapshot", "POST")[0] == 401
    assert request(server, "/api/latest", headers={"Authorization": "Bearer wrong"})[0] == 401
    assert request(server, "/healthz")[0] == 200
    ok = request(server, "/api/latest", headers={"Authorization": "Bearer s3cret-token"})
    assert ok[0] == 200
    status, headers, _ = request(server, "/?token=s3cret-token")
    assert status == 200 and "lgld_token=" in headers.get("Set-Cookie", "")
    cookie = headers["Set-Cookie"].split(";")[0]
    assert "HttpOnly" in headers["Set-Cookie"] and "SameSite=Strict" in headers["Set-Cookie"]
    assert request(server, "/api/latest", headers={"Cookie": cookie})[0] == 200


def test_the_token_comes_from_the_environment_or_the_token_file(tmp_path, monkeypatch):
    from lgld.runtime.config import ConfigError, HttpSection

    token_file = tmp_path / "token"
    token_file.write_text("from-file-0123456789\n")
    monkeypatch.delenv("LGLD_HTTP_TOKEN", raising=False)
    assert load_token(HttpSection(token_file=str(token_file))) == "from-file-0123456789"
    assert load_token(HttpSection()) == ""
    monkeypatch.setenv("LGLD_HTTP_TOKEN", "from-env-0123456789")
    assert load_token(HttpSection(token_file=str(token_file))) == "from-env-0123456789"
    monkeypatch.delenv("LGLD_HTTP_TOKEN")
    with pytest.raises(ConfigError, match="token"):
        load_token(HttpSection(token_file=str(tmp_path / "missing")))
    (tmp_path / "short").write_text("abc\n")
    with pytest.raises(ConfigError, match="token"):
        load_token(HttpSection(token_file=str(tmp_path / "short")))


# -- warnings when opening the network ------------------------------------------------------------


@pytest.fixture
def base(tiny_model, tmp_path):
    config = small_demo_config(tmp_path)
    return ["--model", str(tiny_model), "--config", str(config), "--preview", "off",
            "--threads", "1"]


def test_binding_beyond_loopback_is_warned_about(base, capsys, monkeypatch):
    monkeypatch.delenv("LGLD_HTTP_TOKEN", raising=False)
    rc = cli.main([*base, "--source", "demo", "--frames", "2", "--http", "0.0.0.0:0"])
    err = capsys.readouterr().err
    assert rc == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("lgld-run: warning: ")]
    assert any("0.0.0.0" in w and "network" in w for w in warnings), err
    assert any("token" in w for w in warnings), err
    rc = cli.main([*base, "--source", "demo", "--frames", "2", "--http", "127.0.0.1:0"])
    assert rc == 0 and "warning" not in capsys.readouterr().err


def test_check_reports_a_non_loopback_bind_as_a_warning(base, capsys):
    cli.main([*base, "--source", "demo", "--check", "--http", "0.0.0.0:0"])
    http_line = [line for line in capsys.readouterr().out.splitlines() if "] http" in line]
    assert http_line and http_line[0].startswith("[warn]"), http_line


def test_help_does_not_advertise_listening_on_every_interface(capsys):
    assert cli.main(["--help"]) == 0
    assert "0.0.0.0" not in capsys.readouterr().out


# -- malformed requests -----------------------------------------------------------------------


@pytest.mark.parametrize("length, status", [(b"abc", b"400"), (b"-5", b"400"),
                                            (b"99999999999999999999999", b"413")])
def test_a_bad_content_length_is_refused_with_one_log_line_and_no_traceback(
        running, capfd, caplog, length, status):
    server = running()
    with caplog.at_level(logging.INFO, logger="lgld.runtime"):
        reply = raw_exchange(server.port, b"POST /api/snapshot HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                             b"Content-Length: " + length + b"\r\n\r\n")
        time.sleep(0.2)
    assert reply.startswith(b"HTTP/1.1 " + status), reply[:80]
    lines = [r.getMessage() for r in caplog.records if "Content-Length" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "Traceback" not in capfd.readouterr().err


def test_a_client_reset_mid_request_leaves_no_traceback(running, capfd, caplog):
    server = running()
    with caplog.at_level(logging.INFO, logger="lgld.runtime"):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        sock.sendall(b"POST /api/snapshot HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\nabc")
        time.sleep(0.2)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # RST
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and not any(
                "reset" in r.getMessage() for r in caplog.records):
            time.sleep(0.05)
    err = capfd.readouterr().err
    assert "Traceback" not in err, err
    assert any("reset" in r.getMessage() for r in caplog.records)


# -- concurrent viewers -------------------------------------------------------------------------


def open_stream(port: int) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    head = b""
    while b"\r\n" not in head:
        head += sock.recv(1024)
    return sock, head


def test_viewers_beyond_the_stream_cap_get_503_and_a_freed_slot_is_reused(running):
    server = running(max_streams=1)
    first, head = open_stream(server.port)
    assert head.startswith(b"HTTP/1.1 200")
    second, head = open_stream(server.port)
    second.close()
    assert head.startswith(b"HTTP/1.1 503"), head[:60]
    first.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    first.close()
    deadline = time.monotonic() + 5
    while True:
        third, head = open_stream(server.port)
        third.close()
        if head.startswith(b"HTTP/1.1 200") or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert head.startswith(b"HTTP/1.1 200")
