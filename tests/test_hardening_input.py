"""Text, names, paths and images from outside (requests, flags, logs copied from a Pi or
crafted): refused or kept inside their folder, never a traceback, a file written elsewhere or a
file read from elsewhere."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import struct
import zlib
from pathlib import Path

import pytest
from conftest import small_demo_config
from lab_logs import WBC5, LabLog, reviewed_session
from review_logs import LogBuilder
from test_hardening_http import request, serve

from lgld.lab import build as build_mod
from lgld.lab.build import DatasetError, Options, Source, plan, write
from lgld.lab.cli import main as dataset_main
from lgld.runtime import cli
from lgld.runtime.config import ConfigError, HttpSection
from lgld.runtime.core.untrusted import (
    UntrustedError,
    check_name,
    check_text,
    inside,
    shown,
)
from lgld.runtime.review import report as report_mod
from lgld.runtime.review.cli import main as report_main
from lgld.runtime.web.guard import AccessGuard, load_token

SID = "20261201-100000-abcd"


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (the rest is one tiny, damaged chunk)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk)) + b"\x00" * 64)


@pytest.fixture
def outside(tmp_path):
    """A folder beside the log's, holding what a crafted log must never reach."""
    folder = tmp_path / "outside"
    folder.mkdir()
    import shutil

    from review_logs import SAMPLES
    shutil.copyfile(next((SAMPLES / "Neutrophil").glob("*.jpg")), folder / "secret.jpg")
    (folder / "secret.md").write_text("# SECRET-CARD\nnot a model card\n")
    (folder / "secret.onnx").write_bytes(b"not a model")
    return folder


# -- the one helper ------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["lab \ud800 x", "caf\udce9", "a\x00b", "line\nbreak",
                                  "bell\x07", "x" * 201])
def test_labels_with_lone_surrogates_control_characters_or_no_bound_are_refused(text):
    with pytest.raises(UntrustedError):
        check_text(text, "sample")
    assert check_text("slide 7, donor A · café", "sample") == "slide 7, donor A · café"
    assert "\ud800" not in shown(text) and len(shown(text)) <= 200


@pytest.mark.parametrize("name", ["/abs/dir", "../../x", "..", ".", "", "a/b", "a\\b",
                                  ".hidden"])
def test_names_that_are_paths_are_never_folder_names(name):
    with pytest.raises(UntrustedError):
        check_name(name, "class")
    assert check_name("Neutrophil", "class") == "Neutrophil"


def test_inside_keeps_paths_in_their_folder_and_follows_links(tmp_path, outside):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.jpg").write_bytes(b"x")
    (root / "link.jpg").symlink_to(outside / "secret.jpg")
    assert inside(root, "sub/a.jpg") == (root / "sub" / "a.jpg").resolve()
    for bad in (str(outside / "secret.jpg"), "../outside/secret.jpg", "sub/../../outside",
                "link.jpg", "a\x00b", ""):
        assert inside(root, bad) is None, bad


# -- a sample label: HTTP 400, CLI exit 2 ----------------------------------------------------


class _Cells:
    """The count-session side of the routes, recording what reached it."""

    def __init__(self) -> None:
        self.samples: list[str | None] = []

    def start(self, sample: str | None) -> str:
        self.samples.append(sample)
        return "s"

    def count(self) -> dict:
        return {"session": "s", "sample": self.samples[-1] if self.samples else ""}


def test_a_lone_surrogate_or_control_character_sample_is_refused_with_400(tmp_path):
    server, pipeline = serve(tmp_path)
    cells = pipeline.cells = _Cells()
    try:
        for body in (b'{"sample": "lab \\ud800 x"}', b'{"sample": "a\\u0000b"}',
                     json.dumps({"sample": "x" * 5000}).encode()):
            status, _, answer = request(server, "/api/session", "POST", body=body)
            assert status == 400, answer
            assert "sample" in json.loads(answer)["error"]
        assert cells.samples == []
        status, _, answer = request(server, "/api/session", "POST",
                                    body=json.dumps({"sample": "slide 7 · café"}).encode())
        assert status == 200 and cells.samples == ["slide 7 · café"]
    finally:
        pipeline.stop()
        pipeline.join()
        server.close()


def test_a_sample_flag_that_is_not_utf8_is_a_usage_error(tiny_model, tmp_path, capsys):
    config = small_demo_config(tmp_path)
    rc = cli.main(["--model", str(tiny_model), "--config", str(config), "--preview", "off",
                   "--sample", "caf\udce9", "--frames", "1"])  # what argv gives for b"caf\xe9"
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "lone surrogate" in err[0], err


# -- lgld-report on a hostile log -------------------------------------------------------------


def hostile_report_log(tmp_path: Path, outside: Path) -> LogBuilder:
    b = LogBuilder(tmp_path / "pi", seed=4)
    b.start(sample="lab \ud800 x\x1b[31m", model_path=str(outside / "secret.onnx"))
    for _ in range(3):
        b.cell("Neutrophil")
    (b.folder / "link.jpg").symlink_to(outside / "secret.jpg")
    (b.folder / "bomb.png").write_bytes(png_header(30000, 30000))
    for crop in (str(outside / "secret.jpg"), "../outside/secret.jpg", "link.jpg", "bomb.png"):
        b.cell("Lymphocyte")["crop"] = crop
    b.lines = [json.dumps(e, separators=(",", ":")) for e in b.events]
    return b


def test_a_hostile_log_gives_a_report_that_reads_nothing_outside_its_folder(
        tmp_path, outside, capsys, monkeypatch):
    decoded: list[int] = []
    real = report_mod.cv2.imdecode

    def spy(data, flags):
        decoded.append(len(data))
        return real(data, flags)

    monkeypatch.setattr(report_mod.cv2, "imdecode", spy)
    monkeypatch.setattr(report_mod.cv2, "imread", lambda *a: pytest.fail("imread of a path"))
    b = hostile_report_log(tmp_path, outside)
    out = tmp_path / "out"
    out.mkdir()
    rc = report_main([str(b.write()), "-o", str(out / "r.html"), "--csv", str(out / "c.csv"),
                      "--json", str(out / "s.json")])
    assert rc == 0, capsys.readouterr().err
    html = (out / "r.html").read_bytes().decode("utf-8")  # valid UTF-8, strictly
    assert "SECRET-CARD" not in html and "\x1b" not in html
    assert "lab \ufffd x" in html
    assert html.count("<img ") == 3  # the three crops inside the folder, none of the others
    assert len(decoded) == 3  # the 30000x30000 PNG was refused by its header, never decoded
    rows = list(csv.DictReader(io.StringIO((out / "c.csv").read_bytes().decode("utf-8"))))
    # the bomb is there (found) but shown as no thumbnail; the three outside are not found
    assert [r["crop_found"] for r in rows] == ["1", "1", "1", "0", "0", "0", "1"]
    summary = json.loads((out / "s.json").read_bytes().decode("utf-8"))
    assert summary["crops"] == {"found": 4, "missing": 3, "none": 0}


def test_a_model_path_of_slash_dot_or_nul_is_no_card_and_no_failure(tmp_path, capsys):
    for path in ("/", ".", "a\x00b", "/dev/zero"):
        b = LogBuilder(tmp_path / f"p{len(path)}{path.isalpha()}", seed=1, crops=None)
        b.start(model_path=path)
        b.cells(2)
        out = tmp_path / "r.html"
        assert report_main([str(b.write()), "-o", str(out)]) == 0, capsys.readouterr().err
        assert "Model card not found" in out.read_text()


def test_csv_cells_a_spreadsheet_would_run_are_quoted_and_columns_stay_the_models(tmp_path):
    b = LogBuilder(tmp_path, seed=2, crops=None)
    b.start()
    b.cell("Neutrophil")
    for i in range(50):  # a crafted log: a new class name per cell
        b.cell("Neutrophil")["class"] = f"=HYPERLINK(\"http://x/{i}\")"
    b.events[-1]["track"] = "@SUM(A1)"
    b.events[-1]["crop"] = "+cmd|' /C calc'!A0"
    b.lines = [json.dumps(e, separators=(",", ":")) for e in b.events]
    out = tmp_path / "c.csv"
    assert report_main([str(b.write()), "--csv", str(out)]) == 0
    rows = list(csv.reader(io.StringIO(out.read_text())))
    assert len(rows[0]) == 15 + len(WBC5)  # one probability column per model class
    cells = [c for row in rows[1:] for c in row]
    assert not [c for c in cells if c and (c[0] in "=+@" or (c[0] == "-" and not
                                                              re.fullmatch(r"-[\d.]+", c)))]
    assert "'=HYPERLINK(\"http://x/0\")" in rows[2] and "'@SUM(A1)" in rows[-1]


def test_report_output_names_that_are_not_text_are_usage_errors(tmp_path, capsys):
    b = LogBuilder(tmp_path, seed=2, crops=None)
    b.start()
    b.cells(1)
    with pytest.raises(SystemExit) as info:
        report_main([str(b.write()), "-o", str(tmp_path / "r\udce9.html")])
    assert info.value.code == 2 and "lone surrogate" in capsys.readouterr().err


# -- lgld-dataset on a hostile log -----------------------------------------------------------


@pytest.mark.parametrize("model_classes", [WBC5, None])
def test_review_classes_that_are_paths_never_become_folders(tmp_path, model_classes):
    log = reviewed_session(tmp_path / "pi", per_class=5)
    log.lines[0]["model"]["classes"] = model_classes  # None: a log that names no classes
    for track, name in ((1, str(tmp_path / "abs" / "dir")), (2, "../../x"), (3, "..")):
        log.review(SID, track, "reclassify", name)
    log.write()
    out = tmp_path / "lab"
    if model_classes is None:  # nothing can be checked against the model: nothing is labelled
        with pytest.raises(DatasetError, match="15 class unknown to the model"):
            plan([Source(log.path, log.folder)], Options(min_per_class=2))
    else:
        data = write(plan([Source(log.path, log.folder)], Options(min_per_class=2)), out)
        assert data["left_out"] == {"class unknown to the model": 3}
        assert sorted(p.name for p in out.iterdir()) == [
            "Eosinophil", "Lymphocyte", "Neutrophil", "manifest.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == (["lab", "pi"] if model_classes
                                                         else ["pi"])


def test_model_classes_that_are_paths_refuse_the_build(tmp_path):
    log = LabLog(tmp_path / "pi")
    log.session(SID)
    log.lines[0]["model"]["classes"] = ["../../x", *WBC5]
    for track in range(1, 11):
        log.cell(SID, track, "Neutrophil" if track % 2 else "../../x")
        log.review(SID, track, "confirm")
    log.write()
    with pytest.raises(DatasetError, match="cannot be a folder name"):
        plan([Source(log.path, log.folder)], Options(min_per_class=2))


def test_crops_outside_the_crop_folder_or_over_the_pixel_limit_are_never_read(
        tmp_path, outside, monkeypatch):
    decoded: list[int] = []
    real = build_mod.cv2.imdecode
    monkeypatch.setattr(build_mod.cv2, "imdecode",
                        lambda data, flags: decoded.append(len(data)) or real(data, flags))
    log = reviewed_session(tmp_path / "pi", per_class=5)
    (log.folder / "link.png").symlink_to(outside / "secret.jpg")
    (log.folder / "bomb.png").write_bytes(png_header(30000, 30000))
    for crop in (str(outside / "secret.jpg"), "../outside/secret.jpg", "link.png", "bomb.png"):
        log.lines[1]["crop"] = crop  # the first counted cell
        log.write()
        decoded.clear()
        with pytest.raises(DatasetError, match="1 of 15 crops missing or unreadable"):
            plan([Source(log.path, log.folder)], Options())
        assert len(decoded) == 14, crop  # the bomb's header was enough to refuse it


def test_crops_are_streamed_so_memory_does_not_grow_with_the_data_set(tmp_path):
    import tracemalloc

    import cv2
    import numpy as np
    rng = np.random.default_rng(0)
    log = LabLog(tmp_path / "pi")
    log.session(SID)
    for track in range(1, 301):  # 300 crops of ~200 KB: ~60 MB of crops
        image = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
        log.cell(SID, track, WBC5[track % 3], image=image)
        log.review(SID, track, "confirm")
    log.write()
    total = sum(p.stat().st_size for p in (log.folder / "crops").rglob("*.png"))
    assert total > 50e6
    cv2.setNumThreads(1)
    tracemalloc.start()
    try:
        data = write(plan([Source(log.path, log.folder)], Options()), tmp_path / "lab")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert data["images_total"] == 300
    assert peak < 10e6, f"peak {peak / 1e6:.1f} MB of Python memory for {total / 1e6:.0f} MB"


def test_a_temp_folder_left_by_a_killed_build_is_removed_by_the_next(tmp_path, capsys):
    log = reviewed_session(tmp_path / "pi", per_class=5)
    log.write()
    dead = tmp_path / ".lab.tmp-999999999"  # no such process
    (dead / "Neutrophil").mkdir(parents=True)
    live = tmp_path / f".lab.tmp-{os.getppid()}"  # a running build's folder stays
    live.mkdir()
    assert dataset_main([str(log.path), "-o", str(tmp_path / "lab")]) == 0
    assert not dead.exists() and live.exists()
    assert "removed" in capsys.readouterr().err


def test_include_unreviewed_leaves_out_crops_the_budget_pruned_instead_of_refusing(tmp_path):
    log = reviewed_session(tmp_path / "pi", per_class=5)
    for track in range(100, 106):
        log.cell(SID, track, "Neutrophil", confidence=0.97, save=track < 103)
    log.write()
    data = write(plan([Source(log.path, log.folder)], Options(include_unreviewed=True)),
                 tmp_path / "lab")
    assert data["images_total"] == 18
    assert data["left_out"] == {"unreviewed, crop pruned or missing": 3}


def test_dataset_flags_that_are_not_text_are_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        dataset_main([str(tmp_path / "r.jsonl"), "-o", str(tmp_path / "lab\udce9")])
    assert info.value.code == 2 and "lone surrogate" in capsys.readouterr().err


# -- Origin with its port, JSON POSTs, the token file, foreign cookies ------------------------


def test_an_origin_on_another_port_or_scheme_of_the_same_host_is_refused(tmp_path):
    server, pipeline = serve(tmp_path)
    server.app.snapshots.claim = lambda: None  # no rate limit between the cases
    try:
        here = f"127.0.0.1:{server.port}"
        for origin, expected in ((f"http://{here}", 200), (f"http://localhost:{server.port}", 200),
                                 ("http://127.0.0.1:3000", 403), ("http://127.0.0.1", 403),
                                 (f"ftp://{here}", 403), (f"http://{here}/path", 403)):
            status, _, body = request(server, "/api/snapshot", "POST",
                                      headers={"Origin": origin, "Host": here})
            assert status == expected, (origin, body)
    finally:
        pipeline.stop()
        pipeline.join()
        server.close()


def test_a_post_that_is_not_json_is_refused_with_415(tmp_path):
    server, pipeline = serve(tmp_path)
    try:
        for kind in ("text/plain", "application/x-www-form-urlencoded", ""):
            status, _, body = request(server, "/api/snapshot", "POST",
                                      headers={"Content-Type": kind})
            assert status == 415, body
        assert not (tmp_path / "snaps").exists()
        status, _, _ = request(server, "/api/snapshot", "POST",
                               headers={"Content-Type": "application/json; charset=utf-8"})
        assert status == 200
    finally:
        pipeline.stop()
        pipeline.join()
        server.close()


def test_an_empty_token_file_is_an_error(tmp_path, monkeypatch):
    monkeypatch.delenv("LGLD_HTTP_TOKEN", raising=False)
    for text in ("", "\n", "   \nsecond-line-token-0123\n"):
        (tmp_path / "token").write_text(text)
        with pytest.raises(ConfigError, match="no token"):
            load_token(HttpSection(token_file=str(tmp_path / "token")))


@pytest.mark.parametrize("header", [
    'other="a b"; lgld_token=s3cret-token-0123',
    "theme=dark mode; lgld_token=s3cret-token-0123",
    'a="x; lgld_token=s3cret-token-0123',
    'lgld_token="s3cret-token-0123"; z=1',
])
def test_the_token_cookie_is_found_beside_foreign_cookies(header):
    guard = AccessGuard(token="s3cret-token-0123")
    assert guard.refusal("GET", "/api/latest", {"Cookie": header}, "127.0.0.1") is None
    assert guard.refusal("GET", "/api/latest", {"Cookie": "lgld_token=wrong"},
                         "127.0.0.1").status == 401


def test_an_image_file_name_that_is_not_utf8_is_logged_as_valid_utf8(tmp_path):
    from lgld.runtime.results import ResultLog

    log = ResultLog(tmp_path / "r.jsonl")
    try:
        log.write({"file": "caf\udce9.jpg", "class": "Early"})  # os.listdir's name of b"caf\xe9"
    finally:
        log.close()
    record = json.loads((tmp_path / "r.jsonl").read_bytes().decode("utf-8"))
    assert record == {"file": "caf\ufffd.jpg", "class": "Early"}
