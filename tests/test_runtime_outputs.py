"""Outputs: the JSONL result log, systemd notifications, the overlay, the model zoo resolver."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest

from lgld.runtime import systemd
from lgld.runtime.core import zoo
from lgld.runtime.core.classifier import ModelLoadError, session_options
from lgld.runtime.geometry import model_region
from lgld.runtime.overlay import OverlayInfo, draw_overlay
from lgld.runtime.results import Result, ResultLog, ResultLogError
from lgld.runtime.trust import Quality

# -- result log --------------------------------------------------------------------------------


def test_every_line_is_on_disk_before_write_returns(tmp_path):
    path = tmp_path / "sub" / "results.jsonl"
    log = ResultLog(path, fsync_interval_s=3600)
    for i in range(3):
        log.write({"frame": i, "class": "Pre"})
        # another reader sees the line at once (nothing waits in a user-space buffer)
        assert len(path.read_text().splitlines()) == i + 1
    log.close()
    log.close()  # idempotent
    assert [json.loads(x)["frame"] for x in path.read_text().splitlines()] == [0, 1, 2]
    with pytest.raises(ResultLogError, match="closed"):
        log.write({"frame": 3})


def test_appends_to_an_existing_log(tmp_path):
    path = tmp_path / "r.jsonl"
    with ResultLog(path) as log:
        log.write({"n": 1})
    with ResultLog(path) as log:
        log.write({"n": 2})
    assert [json.loads(x)["n"] for x in path.read_text().splitlines()] == [1, 2]


def test_rotation_keeps_n_backups(tmp_path):
    path = tmp_path / "r.jsonl"
    record = {"pad": "x" * 200}
    line = len(json.dumps(record, separators=(",", ":"))) + 1
    with ResultLog(path, max_bytes=1024, backups=2) as log:
        for i in range(40):
            log.write({**record, "i": i})
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["r.jsonl", "r.jsonl.1", "r.jsonl.2"]
    for p in tmp_path.iterdir():
        assert p.stat().st_size <= 1024
    last = [json.loads(x)["i"] for x in path.read_text().splitlines()]
    older = [json.loads(x)["i"] for x in (tmp_path / "r.jsonl.1").read_text().splitlines()]
    assert last[-1] == 39 and older[-1] == last[0] - 1, "rotation loses no line in between"
    assert len(last) <= 1024 // line


def test_disk_full_and_unwritable_folder_are_clear_errors(tmp_path):
    if Path("/dev/full").exists():
        log = ResultLog("/dev/full")
        with pytest.raises(ResultLogError, match="cannot write log /dev/full: No space left"):
            log.write({"frame": 1})
        log.close()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ResultLogError, match="cannot be created"):
        ResultLog(blocker / "logs" / "r.jsonl")
    with pytest.raises(ResultLogError, match="is a folder"):
        ResultLog(tmp_path)


# -- systemd -------------------------------------------------------------------------------------


def test_sd_notify_sends_datagrams_and_is_a_noop_elsewhere(tmp_path, monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(address)
        server.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", address)
        monkeypatch.setenv("WATCHDOG_USEC", "20000000")
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
        n = systemd.Notifier()
        assert n.interval == pytest.approx(20.0)
        n.ready("starting")
        assert server.recv(256) == b"READY=1\nSTATUS=starting"
        assert n.watchdog(healthy=True)
        assert server.recv(256) == b"WATCHDOG=1"
        assert not n.watchdog(healthy=True), "rate-limited to half the interval"
        assert not n.watchdog(healthy=False)
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert systemd.watchdog_interval() is None, "the watchdog is for another process"


# -- overlay -------------------------------------------------------------------------------------


def make_result(region, state="ok", label="Early", conf=0.83) -> Result:
    probs = {"Benign": 0.05, "Early": 0.83, "Pre": 0.1, "Pro": 0.02} if label or conf else {}
    return Result(1, 1, 0.0, "demo", "roi", "m", state, label, conf, probs, dict(probs),
                  12.0, 30.0, Quality(state, 20.0, 0.0, 0.0), region, 8)


@pytest.mark.parametrize("size", [(640, 480), (1280, 720), (1920, 1080)])
def test_overlay_draws_panel_bars_status_and_roi_at_every_size(size):
    w, h = size
    image = np.full((h, w, 3), 128, np.uint8)
    region = model_region(image.shape, "roi")
    info = OverlayInfo("lgld-all", "roi", 29.9, 14.1, 12.0, 30.0, 5)
    out = draw_overlay(image, make_result(region), info, region)
    assert out.shape == image.shape and np.array_equal(image, np.full((h, w, 3), 128, np.uint8))
    changed = np.any(out != image, axis=2)
    assert changed[: h // 4, : w // 3].mean() > 0.5, "the verdict panel is drawn top left"
    assert changed[h - 5 :, :].mean() > 0.9, "the status bar is drawn at the bottom"
    x, y, rw, rh = region
    assert changed[y + rh // 2, x] and changed[y, x + rw // 2], "the ROI box is drawn"
    assert not changed[y + rh // 2, x + rw // 2], "the ROI itself stays clear"
    green = out[: h // 4, : w // 3]
    assert np.any((green[..., 1] > 180) & (green[..., 2] < 120)), "ok is drawn in green"


def test_overlay_for_rejected_frames_and_camera_outage():
    image = np.full((480, 640, 3), 128, np.uint8)
    region = model_region(image.shape, "field")
    out = draw_overlay(image, make_result(region, "out_of_focus", None, None),
                       OverlayInfo(mode="field", camera_message="no frame within 2 s"), region)
    panel = out[:80, :300]
    assert np.any((panel[..., 2] > 200) & (panel[..., 1] < 100)), "rejected = red headline"
    assert np.any((out[400:450, :, 2] > 200) & (out[400:450, :, 1] < 100)), "camera message"
    assert draw_overlay(image, None, OverlayInfo()).shape == image.shape


# -- zoo ---------------------------------------------------------------------------------------


def test_zoo_names_resolve_inside_the_zoo_package(tmp_path, monkeypatch):
    folder = zoo.zoo_dir()
    assert folder.name == "zoo" and (folder / "__init__.py").is_file()
    monkeypatch.setattr(zoo, "zoo_dir", lambda: tmp_path)
    with pytest.raises(ModelLoadError, match="model 'all' is not built yet: .*lgld-all.onnx"):
        zoo.resolve_model("all")
    (tmp_path / "lgld-wbc5.onnx").write_bytes(b"x")
    assert zoo.resolve_model("wbc5") == tmp_path / "lgld-wbc5.onnx"
    with pytest.raises(ModelLoadError, match="model not found"):
        zoo.resolve_model(str(tmp_path / "nope.onnx"))


# -- preview window ------------------------------------------------------------------------------


def test_preview_only_with_a_display_outside_systemd_and_with_gui(monkeypatch):
    from lgld.runtime import preview

    for var in ("DISPLAY", "WAYLAND_DISPLAY", "INVOCATION_ID", "NOTIFY_SOCKET"):
        monkeypatch.delenv(var, raising=False)
    assert preview.preview_possible("off") == (False, "preview off")
    ok, why = preview.preview_possible("auto")
    assert not ok and "no display" in why
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setattr(preview, "opencv_has_gui", lambda: False)
    ok, why = preview.preview_possible("on")
    assert not ok and "opencv-python-headless" in why
    monkeypatch.setattr(preview, "opencv_has_gui", lambda: True)
    assert preview.preview_possible("auto")[0]
    monkeypatch.setenv("INVOCATION_ID", "abc")  # started by systemd
    ok, why = preview.preview_possible("auto")
    assert not ok and "systemd" in why
    assert preview.preview_possible("on")[0], "asked for explicitly"


@pytest.mark.parametrize(("threads", "spin"), [(1, "0"), (2, "1"), (4, "1")])
def test_thread_pool_spins_only_when_it_has_workers(threads, spin):
    so = session_options(threads)
    assert so.intra_op_num_threads == threads
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == spin
    assert so.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    assert so.get_session_config_entry("session.force_spinning_stop") == "1"
