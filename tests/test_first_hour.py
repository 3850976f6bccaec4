"""The first hour at the microscope, as the README's command 1 gives it and nothing more: a count
is kept in the state directory, stopped with SIGTERM and Ctrl-C, continued by the next start,
reviewed through the HTTP API with its crops, and reported by lgld-report."""

from __future__ import annotations

import json
import signal
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port, get_json, post_json, run_lgld_with_client, wait_for_json

from lgld.runtime import cli
from lgld.runtime.core.precision import model_card, model_label
from lgld.runtime.core.zoo import zoo_dir
from lgld.runtime.doctor import check_model
from lgld.runtime.overlay import (
    AMBER,
    CLASS_COLOURS,
    WHITE,
    OverlayInfo,
    contrast_ratio,
    draw_overlay,
    text_colour_on,
)
from lgld.runtime.review.cli import main as report_main


def test_command_1_keeps_a_count_that_a_restart_continues_and_review_and_report_use(
        tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    port = free_port()
    command_1 = ["--model", "wbc5", "--mode", "cells", "--source", "demo:cells",
                 "--http", f"127.0.0.1:{port}"]
    base = f"http://127.0.0.1:{port}"
    seen: dict = {}

    def first_run() -> None:
        seen["count"] = wait_for_json(f"{base}/api/count", lambda c: c["total"] >= 2)
        review = wait_for_json(f"{base}/api/review", lambda r: len(r.get("cells", [])) >= 2)
        assert review["session"] == seen["count"]["session"]
        cell = review["cells"][0]
        assert cell["crop"] is True  # no "no crop" tiles: crops are kept beside the log
        with urllib.request.urlopen(f"{base}/api/review/crop?track={cell['track']}",
                                    timeout=10) as response:
            assert response.headers["Content-Type"] == "image/jpeg"
            assert response.read(2) == b"\xff\xd8"
        latest = get_json(f"{base}/api/latest")
        assert latest["calibration"]["state"] == "demo"
        assert latest["model_file"] in ("lgld-wbc5.onnx (fp32)", "lgld-wbc5.int8.onnx (int8)")
        metrics = urllib.request.urlopen(f"{base}/metrics", timeout=10).read().decode()
        assert "lgld_cells_counted_total" in metrics  # cells, not per-frame class results
        assert "lgld_class_results_total" not in metrics

    assert run_lgld_with_client(command_1, first_run, signal.SIGTERM) == 0
    err = capsys.readouterr().err
    state = tmp_path / "state" / "lgld"
    log = state / "counts.jsonl"
    session = seen["count"]["session"]
    assert f"new count session {session}; kept in {log}, crops in {state / 'crops'}" in err
    assert "left open: the next start continues it" in err
    assert "calibration missing" not in err and "--calibrate" not in err
    assert any((state / "crops").rglob("*.jpg"))

    def second_run() -> None:
        count = wait_for_json(f"{base}/api/count",
                              lambda c: c["total"] >= seen["count"]["total"] + 1)
        assert count["session"] == session  # the same count, continued
        review = get_json(f"{base}/api/review")
        cell = review["cells"][0]
        other = next(c for c in review["review_classes"] if c != cell["model_class"])
        post_json(f"{base}/api/review", {"session": session, "track": cell["track"],
                                     "action": "reclassify", "class": other})
        seen["reviewed"] = (cell["track"], other)

    assert run_lgld_with_client(command_1, second_run, signal.SIGINT) == 0  # Ctrl-C
    err = capsys.readouterr().err
    assert f"resumed count session {session} at " in err and "SIGINT received" in err

    report = tmp_path / "report.html"
    assert report_main([str(log), "-o", str(report), "--json", str(tmp_path / "s.json")]) == 0
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["session"] == session and summary["cells"] >= 3
    assert summary["review"]["corrections"] == 1
    assert summary["model"]["label"] in ("lgld-wbc5.onnx (fp32)", "lgld-wbc5.int8.onnx (int8)")
    html = report.read_text()
    assert "data:image/jpeg;base64," in html  # the crops, in the report
    assert "Model card not found" not in html


def test_every_overlay_label_reads_at_wcag_aa_on_its_class_colour():
    for name, colour in {**CLASS_COLOURS, "uncertain": AMBER, "other": WHITE}.items():
        assert contrast_ratio(text_colour_on(colour), colour) >= 4.5, name
    assert contrast_ratio(WHITE, (0, 0, 0)) == pytest.approx(21.0)
    # the old Basophil label: purple text on a dark translucent box (about 2.3:1)
    assert contrast_ratio(CLASS_COLOURS["Basophil"], (20, 20, 20)) < 4.5


def test_the_count_panel_sits_beside_the_frame_and_hides_no_cell():
    frame = np.full((480, 640, 3), 200, np.uint8)
    count = {"counts": {"Basophil": 1, "unclassified": 0}, "percent": {"Basophil": 100.0,
             "unclassified": 0.0}, "total": 1, "target": 100, "complete": False}
    out = draw_overlay(frame, None, OverlayInfo(mode="cells", cell_count=count))
    assert out.shape[0] == 480 and out.shape[1] > 640
    status_bar = round(34 * 0.6)
    assert (out[: 480 - status_bar, :640] == 200).all()  # nothing drawn over the field


def test_the_int8_file_shares_the_card_and_is_named_by_file_and_precision(tmp_path):
    zoo = zoo_dir()
    assert zoo is not None
    int8 = zoo / "lgld-wbc5.int8.onnx"
    assert model_card(int8) == model_card(zoo / "lgld-wbc5.onnx") == zoo / "lgld-wbc5.md"
    assert model_card(int8).is_file()
    assert model_label(int8, "int8-qdq") == "lgld-wbc5.int8.onnx (int8)"
    cfg = cli.effective_config(cli.build_parser().parse_args(
        ["--model", "wbc5", "--precision", "int8", "--threads", "1"]))
    check = check_model(cfg)
    assert check.ok and check.detail.startswith("lgld-wbc5.int8.onnx (int8) | ")


def test_the_report_defaults_to_the_last_session_with_cells(tmp_path, capsys):
    log = tmp_path / "counts.jsonl"
    records = [
        {"event": "session_start", "session": "s1", "time": "2026-12-03T08:00:00.000+00:00"},
        {"event": "cell", "session": "s1", "time": "2026-12-03T08:00:01.000+00:00",
         "track": 1, "class": "Neutrophil", "confidence": 0.9},
        {"event": "session_end", "session": "s1", "time": "2026-12-03T08:00:02.000+00:00"},
        {"event": "session_start", "session": "s2", "time": "2026-12-03T08:00:03.000+00:00"},
    ]
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert report_main([str(log), "--json", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["session"] == "s1"
    assert report_main([str(log), "--session", "s2", "--json", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["cells"] == 0


def test_no_log_keeps_nothing_and_log_and_crops_put_the_count_elsewhere(tmp_path, monkeypatch,
                                                                        capsys):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    folder = tmp_path / "fields"
    folder.mkdir()
    image = sorted((Path(__file__).parent / "data" / "bccd" / "images").glob("*.jpg"))[0]
    (folder / image.name).write_bytes(image.read_bytes())
    common = ["--model", "wbc5-128", "--mode", "cells", "--source", f"images:{folder}",
              "--preview", "off", "--threads", "1"]
    assert cli.main([*common, "--no-log"]) == 0
    assert "no log (--no-log): this count is not kept" in capsys.readouterr().err
    assert not (tmp_path / "state").exists()

    log, crops = tmp_path / "here" / "count.jsonl", tmp_path / "crops"
    assert cli.main([*common, "--log", str(log), "--crops", str(crops)]) == 0
    err = capsys.readouterr().err
    assert f"kept in {log}, crops in {crops}" in err and "; closed" in err  # a batch closes
    assert not (tmp_path / "state").exists() and any(crops.rglob("*.jpg"))
    events = [json.loads(line).get("event") for line in log.read_text().splitlines()]
    assert events.count("session_start") == events.count("session_end") == 1

    assert cli.main([*common, "--log", str(log), "--no-log"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err
