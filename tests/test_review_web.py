"""The review routes of the live page (/api/review, /api/review/crop, /report) on 127.0.0.1."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import FakeClassifier
from review_logs import WBC5, LogBuilder, expected_reviewed

from lgld.runtime.cells.session import CountSession
from lgld.runtime.cells.stage import CellStage
from lgld.runtime.config import TrustSection
from lgld.runtime.pipeline import Pipeline, PipelineSettings
from lgld.runtime.render import Renderer
from lgld.runtime.results import ResultLog
from lgld.runtime.review.live import ReviewDesk
from lgld.runtime.sources.demo import DemoSource
from lgld.runtime.web import App, HttpServer


class WhiteCellModel:
    """The classifier surface the count session's stage uses (never called here)."""

    classes = WBC5

    class info:  # noqa: N801 - mirrors OnnxClassifier.info
        input_size = 32


def _serve(review):
    source = DemoSource("all", size=(160, 120), fps=30)
    source.open()
    pipeline = Pipeline(source, FakeClassifier(), PipelineSettings(trust=TrustSection(window=4)))
    server = HttpServer("127.0.0.1", 0)
    server.start(App(pipeline, Renderer(pipeline, 80), review=review))
    return server, pipeline


@pytest.fixture
def served(tmp_path):
    """A count-session log with crops, its writer, and the page served with a review desk."""
    b = LogBuilder(tmp_path, seed=21)
    b.start(sample="web")
    b.cell("Neutrophil", confidence=0.81)
    b.cell("Lymphocyte", confidence=0.92)
    b.cell("Monocyte", confidence=0.66)
    path = b.write()
    writer = ResultLog(path)
    count = CountSession(CellStage(WhiteCellModel()), writer.write, log_path=path)
    count.open(path)  # a restart: the log's last session continues
    server, pipeline = _serve(ReviewDesk(count))
    yield server, b, path
    server.close()
    writer.close()
    pipeline.source.close()


def call(server, path, body=None):
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(server.url.rstrip("/") + path, data=data,
                                     method="GET" if data is None else "POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, response.headers, response.read()


def status_of(server, path, body=None):
    with pytest.raises(urllib.error.HTTPError) as err:
        call(server, path, body)
    return err.value.code, json.loads(err.value.read())["error"]


def test_the_gallery_reviews_crops_and_report_of_the_current_session(served):
    server, b, path = served
    _, _, body = call(server, "/api/review")
    gallery = json.loads(body)
    assert gallery["sample"] == "web" and [c["track"] for c in gallery["cells"]] == [1, 2, 3]
    sid = gallery["session"]
    _, _, body = call(server, "/api/review", {"session": sid, "track": 1,
                                               "action": "reclassify", "class": "Eosinophil"})
    _, _, body = call(server, "/api/review", {"session": sid, "track": 3, "action": "reject"})
    after = json.loads(body)
    assert after["reviewed_total"] == 2 and after["reviewed_counts"]["Eosinophil"] == 1
    assert after["cell"] == {"track": 3, "model_class": "Monocyte", "class": None,
                             "confidence": 0.66, "review": "reject", "crop": True}
    assert "cells" not in after  # the answer is O(1): the page updates its gallery in place
    events = [json.loads(line) for line in path.read_text().splitlines()]
    assert {k: v for k, v in after["reviewed_counts"].items() if v} == expected_reviewed(
        events, b.session)
    assert [e["action"] for e in events if e.get("event") == "review"] == ["reclassify",
                                                                          "reject"]
    _, headers, crop = call(server, "/api/review/crop?track=2")
    assert headers["Content-Type"] == "image/jpeg"
    cell = next(e for e in b.events if e["event"] == "cell" and e["track"] == 2)
    assert crop == (path.parent / cell["crop"]).read_bytes()
    _, headers, html = call(server, "/report")
    assert "text/html" in headers["Content-Type"]
    assert b"Differential count \xc2\xb7 web" in html and b"data:image/jpeg;base64," in html
    _, _, page = call(server, "/")
    assert b'id="rv-gallery"' in page and b'href="/report"' in page


def test_bad_review_requests_get_one_line_errors_and_log_nothing(served):
    server, _, path = served
    before = path.read_bytes()
    assert status_of(server, "/api/review", b"{not json") == (400, "the body is not JSON")
    sid = json.loads(call(server, "/api/review")[2])["session"]
    assert status_of(server, "/api/review", {"session": sid, "track": 9,
                                             "action": "reject"})[0] == 404
    assert status_of(server, "/api/review", {"session": sid, "track": 1,
                                             "action": "reclassify", "class": "Platelet"})[0] == 400
    code, message = status_of(server, "/api/review", {"session": "20260101-000000-0000",
                                                      "track": 1, "action": "reject"})
    assert code == 409 and "reload the page" in message  # a stale page
    assert status_of(server, "/api/review", {"session": sid, "track": True,
                                             "action": "reject"})[0] == 400
    assert status_of(server, "/api/review/crop?track=../../x")[0] == 400
    deep = b"[" * 60_000  # nested past the parser's recursion limit: a 400, not a dropped call
    assert status_of(server, "/api/review", deep) == (400, "the body is not JSON")
    assert path.read_bytes() == before


def test_without_cell_mode_and_a_log_the_review_routes_say_so(tmp_path):
    server, pipeline = _serve(None)
    try:
        code, message = status_of(server, "/api/review")
        assert code == 409 and "--mode cells" in message
        assert status_of(server, "/report")[0] == 409
        assert status_of(server, "/api/review", {"track": 1, "action": "reject"})[0] == 409
    finally:
        server.close()
        pipeline.source.close()


def test_a_cell_mode_run_with_a_sample_label_gives_a_log_lgld_report_reads(tmp_path, capsys):
    from lgld.runtime import cli as run_cli
    from lgld.runtime.review.cli import main as report_main

    bccd = Path(__file__).resolve().parent / "data" / "bccd" / "images"
    config = tmp_path / "lgld.toml"
    config.write_text(f'[http]\nsnapshot_dir = "{tmp_path / "crops"}"\n')
    log = tmp_path / "results.jsonl"
    rc = run_cli.main(["--config", str(config), "--model", "wbc5-128", "--mode", "cells",
                       "--preview", "off", "--threads", "1", "--source", f"images:{bccd}",
                       "--log", str(log), "--sample", "BCCD fields 0-378"])
    assert rc == 0
    events = [json.loads(line) for line in log.read_text().splitlines()]
    (start,) = [e for e in events if e.get("event") == "session_start"]
    assert start["sample"] == "BCCD fields 0-378"
    cells = [e for e in events if e.get("event") == "cell"]
    assert cells and all(e["crop"] for e in cells)
    summary = tmp_path / "s.json"
    capsys.readouterr()
    assert report_main([str(log), "--json", str(summary), "-o", str(tmp_path / "r.html")]) == 0
    data = json.loads(summary.read_text())
    model: dict[str, int] = {}
    for e in cells:
        model[e["class"]] = model.get(e["class"], 0) + 1
    assert {k: v for k, v in data["model_counts"].items() if v} == model
    assert data["sample"] == "BCCD fields 0-378"
    assert data["crops"] == {"found": len(cells), "missing": 0, "none": 0}
    assert data["log"]["skipped_lines"] == 0


def test_a_review_from_a_foreign_origin_is_refused_and_not_logged(served):
    server, _, path = served
    before = path.read_bytes()
    request = urllib.request.Request(
        server.url.rstrip("/") + "/api/review", method="POST",
        data=json.dumps({"track": 1, "action": "reject"}).encode(),
        headers={"Content-Type": "application/json", "Origin": "http://evil.example"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=10)
    assert err.value.code == 403
    assert path.read_bytes() == before
