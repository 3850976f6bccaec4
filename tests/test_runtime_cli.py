"""lgld-run end to end through cli.main(argv): results, errors and exit codes, config, doctor,
signals and systemd notifications."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
import tomllib
import urllib.request

import cv2
import pytest
from conftest import (
    free_port,
    install_fake_picamera2,
    read_jsonl,
    sample_image,
    small_demo_config,
    write_video,
)

from lgld.runtime import cli
from lgld.runtime.core import zoo
from lgld.runtime.sources import opencv

REQUIRED = {"ts", "frame", "source", "mode", "class", "confidence", "probabilities", "state",
            "latency_ms", "model"}


@pytest.fixture
def base(tiny_model, tmp_path):  # noqa: F811
    """Arguments every run shares: the tiny model, small demo frames, no preview window."""
    config = small_demo_config(tmp_path)
    return ["--model", str(tiny_model), "--config", str(config), "--preview", "off",
            "--threads", "1"]


def one_error_line(capsys, code: int, rc: int, pattern: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == code, err
    last = err[-1]
    assert last.startswith("lgld-run: error: ") and pattern in last, err
    assert "Traceback" not in "\n".join(err)
    return last


# -- running -------------------------------------------------------------------------------------


def test_demo_for_n_frames_writes_n_results(base, tmp_path, capsys):
    log = tmp_path / "logs" / "results.jsonl"
    rc = cli.main([*base, "--source", "demo", "--frames", "12", "--log", str(log)])
    assert rc == 0, capsys.readouterr().err
    records = read_jsonl(log)
    assert len(records) == 12
    assert all(set(r) >= REQUIRED for r in records)
    assert [r["frame"] for r in records] == sorted({r["frame"] for r in records})
    first = records[0]
    assert first["source"] == "demo:all" and first["mode"] == "field"
    assert first["model"] == "tiny-test" and set(first["probabilities"]) == {
        "Benign", "Early", "Pre", "Pro"}
    assert first["state"] in ("ok", "uncertain", "out_of_focus")
    assert (first["class"] is None) == (first["state"] != "ok")
    assert "12 results" in capsys.readouterr().err


def test_roi_flag_switches_to_roi_mode_and_crops(base, tmp_path):
    log = tmp_path / "r.jsonl"
    assert cli.main([*base, "--source", "demo", "--roi", "40,30,100,100", "--frames", "3",
                     "--log", str(log)]) == 0
    records = read_jsonl(log)
    assert all(r["mode"] == "roi" and r["region"] == [40, 30, 100, 100] for r in records)
    assert records[0]["source"] == "demo:wbc"


def test_image_folder_is_classified_once_each_then_exits(base, tmp_path, capsys):
    folder = tmp_path / "slides"
    folder.mkdir()
    for i, name in enumerate(("all-benign", "all-early", "all-pre", "all-pro", "wbc5-eos")):
        cv2.imwrite(str(folder / f"{i:02d}.jpg"), sample_image(name))
    log = tmp_path / "b.jsonl"
    rc = cli.main([*base, "--source", f"images:{folder}", "--log", str(log)])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0
    records = read_jsonl(log)
    assert [os.path.basename(r["file"]) for r in records] == [f"{i:02d}.jpg" for i in range(5)]
    assert [line.split("\t")[0] for line in out] == [r["file"] for r in records]
    assert all(r["window"] <= 1 for r in records)


def test_video_file_source(base, tmp_path):
    video = write_video(tmp_path / "clip.avi", 6, size=(96, 64), fps=100.0)
    log = tmp_path / "v.jsonl"
    assert cli.main([*base, "--source", f"video:{video}", "--log", str(log)]) == 0
    records = read_jsonl(log)
    assert 1 <= len(records) <= 6 and records[-1]["frame"] == 5
    assert records[0]["source"] == f"video:{video}"


def test_fake_pi_camera_through_the_cli(base, tmp_path, monkeypatch):
    install_fake_picamera2(monkeypatch)
    log = tmp_path / "p.jsonl"
    assert cli.main([*base, "--source", "auto", "--frames", "4", "--log", str(log)]) == 0
    assert [r["source"] for r in read_jsonl(log)] == ["picamera2"] * 4


# -- errors --------------------------------------------------------------------------------------


def test_bad_model_path(base, tmp_path, capsys):
    rc = cli.main([*base, "--model", str(tmp_path / "missing.onnx"), "--source", "demo"])
    one_error_line(capsys, 3, rc, "model not found")


def test_not_an_onnx_model_and_not_an_lgld_model(base, tmp_path, tiny_model, capsys):  # noqa: F811
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00garbage" * 50)
    one_error_line(capsys, 3, cli.main([*base, "--model", str(junk)]), "cannot load ONNX model")
    onnx = pytest.importorskip("onnx")
    proto = onnx.load(str(tiny_model))
    del proto.metadata_props[:]
    plain = tmp_path / "plain.onnx"
    onnx.save(proto, str(plain))
    one_error_line(capsys, 3, cli.main([*base, "--model", str(plain)]), "not an lgld model")


def test_zoo_model_not_built_yet(base, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(zoo, "zoo_dir", lambda: tmp_path)
    rc = cli.main([*base, "--model", "all", "--source", "demo"])
    one_error_line(capsys, 3, rc, "model 'all' is not built yet")


def test_no_camera(base, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "picamera2", None)
    monkeypatch.setattr(opencv, "camera_device_exists", lambda n: False)
    rc = cli.main([*base, "--source", "auto"])
    line = one_error_line(capsys, 4, rc, "no camera found (use --source demo to try without one)")
    assert line == "lgld-run: error: no camera found (use --source demo to try without one)"


def test_camera_busy(base, monkeypatch, capsys):
    install_fake_picamera2(monkeypatch, busy=True)
    rc = cli.main([*base, "--source", "picamera2"])
    one_error_line(capsys, 4, rc, "Raspberry Pi camera 0 is busy")


def test_port_in_use(base, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        rc = cli.main([*base, "--source", "demo", "--http", str(port)])
    one_error_line(capsys, 5, rc, f"cannot listen on 127.0.0.1:{port}: the port is already in use")


def test_log_folder_not_writable(base, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    rc = cli.main([*base, "--source", "demo", "--log", str(tmp_path / "file" / "r.jsonl")])
    one_error_line(capsys, 5, rc, "cannot be created")


def test_bad_arguments_and_config(base, tmp_path, capsys):
    one_error_line(capsys, 2, cli.main([*base, "--roi", "1,2,3"]), "--roi needs x,y,w,h")
    one_error_line(capsys, 2, cli.main([*base, "--frames", "many"]), "invalid int value")
    one_error_line(capsys, 2, cli.main([*base, "--http", "localhost:http"]), "HOST:PORT")
    bad = tmp_path / "bad.toml"
    bad.write_text("[trust]\nwindoww = 3\n")
    one_error_line(capsys, 2, cli.main(["--config", str(bad)]), "unknown key 'windoww'")
    bad.write_text("[trust]\nwindow = 'three'\n")
    one_error_line(capsys, 2, cli.main(["--config", str(bad)]), "[trust] window must be an int")
    bad.write_text("[trust\n")
    one_error_line(capsys, 2, cli.main(["--config", str(bad)]), "is not valid TOML")
    bad.write_text("[trust]\nmin_confidence = 1.5\n")
    one_error_line(capsys, 2, cli.main(["--config", str(bad)]), "min_confidence must be in")
    rc = cli.main(["--config", str(tmp_path / "none.toml")])
    one_error_line(capsys, 2, rc, "config file not found")
    rc = cli.main([*base, "--source", "demo", "--roi", "2000,2000,50,50", "--frames", "2"])
    one_error_line(capsys, 2, rc, "lies outside the 320x240 frame")


# -- configuration and doctor ----------------------------------------------------------------------


def test_print_config_is_commented_toml_that_round_trips(tmp_path, capsys):
    assert cli.main(["--print-config"]) == 0
    default_text = capsys.readouterr().out
    data = tomllib.loads(default_text)
    assert list(data) == ["source", "model", "inference", "trust", "calibration", "http", "log",
                          "display", "cells"]
    assert data["model"]["path"] == "all" and data["source"]["input"] == "auto"
    assert data["http"]["listen"] == "" and default_text.count("\n# ") > 30
    config = tmp_path / "lgld.toml"
    config.write_text(default_text.replace('listen = ""', 'listen = "0.0.0.0:9000"'))
    assert cli.main(["--config", str(config), "--mode", "roi", "--threads", "2",
                     "--print-config"]) == 0
    text = capsys.readouterr().out
    data = tomllib.loads(text)
    assert data["http"]["listen"] == "0.0.0.0:9000", "the file is applied"
    assert data["inference"]["mode"] == "roi" and data["model"]["threads"] == 2, "flags win"
    config.write_text(text)
    assert cli.main(["--config", str(config), "--print-config"]) == 0
    assert capsys.readouterr().out == text, "stable: printing a printed config changes nothing"


def test_check_reports_and_fails_on_problems(base, tmp_path, capsys):
    port = free_port()
    args = [*base, "--source", "demo", "--log", str(tmp_path / "x.jsonl"), "--http", str(port)]
    assert cli.main([*args, "--check"]) == 0
    out = capsys.readouterr().out
    assert "[ ok ] model" in out and "tiny-test" in out and "[ ok ] source" in out
    assert "[ ok ] log" in out and f"[ ok ] http         127.0.0.1:{port} is free" in out
    assert "onnxruntime" in out and "all good" in out
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        rc = cli.main([*args, "--model", str(tmp_path / "none.onnx"), "--check"])
    out = capsys.readouterr().out
    assert rc == 1 and "[FAIL] model" in out and "[FAIL] http" in out
    assert "problems with model, http" in out


# -- operation: signals, HTTP while running, systemd -----------------------------------------------


def test_sigterm_stops_cleanly_with_everything_flushed(base, tmp_path, monkeypatch, capsys):
    port = free_port()
    log = tmp_path / "live.jsonl"
    notify = tmp_path / "n.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify))
    listener.settimeout(0.1)
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify))
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    seen: dict = {}

    def client():
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url + "/api/latest", timeout=2) as r:
                    latest = json.loads(r.read())
                if latest["result"] is not None:
                    seen["latest"] = latest
                    break
            except OSError:
                pass
            time.sleep(0.05)
        with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
            seen["health"] = r.status
        time.sleep(0.3)  # let a few watchdog pings happen
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    try:
        rc = cli.main([*base, "--source", "demo", "--http", str(port), "--log", str(log)])
    finally:
        thread.join(5)
        messages = []
        while True:
            try:
                messages.append(listener.recv(256).decode())
            except OSError:
                break
        listener.close()
    err = capsys.readouterr().err
    assert rc == 0 and "SIGTERM received, stopping" in err
    assert seen["health"] == 200 and seen["latest"]["model"] == "tiny-test"
    records = read_jsonl(log)  # every line complete: the log was closed cleanly
    n = int(err.split(" results from ")[0].rsplit(" ", 1)[-1])
    assert len(records) == n > 0
    assert messages[0].startswith("READY=1") and messages[-1] == "STOPPING=1"
    assert "WATCHDOG=1" in messages
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, "handlers are restored"


def test_listen_and_roi_parsing():
    from lgld.runtime.config import ConfigError, parse_listen, parse_roi

    assert parse_listen("8080") == ("127.0.0.1", 8080), "a bare port stays on loopback"
    assert parse_listen(":8080") == ("127.0.0.1", 8080)
    assert parse_listen("0.0.0.0:9000") == ("0.0.0.0", 9000)
    assert parse_listen("[::1]:9000") == ("::1", 9000)
    assert parse_roi("10, 20,30,40") == [10, 20, 30, 40]
    for bad in ("host:99999", "x"):
        with pytest.raises(ConfigError):
            parse_listen(bad)
