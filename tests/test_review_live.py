"""The live page's review side (lgld.runtime.review.live): the gallery, reviews, crops and the
report, served from the running count session's in-memory replay."""

from __future__ import annotations

import json

import pytest
from review_logs import WBC5, LogBuilder

from lgld.runtime.cells.session import CountSession
from lgld.runtime.cells.stage import CellStage
from lgld.runtime.core.countlog import read_log
from lgld.runtime.results import ResultLog
from lgld.runtime.review.live import ReviewDesk, ReviewError, gallery


class WhiteCellModel:
    """The classifier surface the stage uses (the desk never calls the model)."""

    classes = WBC5

    class info:  # noqa: N801 - mirrors OnnxClassifier.info
        input_size = 32


def desk_for(path, writer=None):
    """The desk of a run restarted on the log at ``path`` (its last session resumed)."""
    count = CountSession(CellStage(WhiteCellModel()), writer.write if writer else None,
                         log_path=path)
    count.open(path)
    return ReviewDesk(count)


def test_the_gallery_lists_every_counted_cell_with_its_reviewed_class_and_crop(tmp_path):
    b = LogBuilder(tmp_path, seed=6)
    b.start()
    b.cells(6)
    b.review(2, "reject")
    b.review(3, "reclassify", "Basophil")
    path = b.write()
    log = read_log(path)
    data = gallery(log, log.get())
    assert [c["track"] for c in data["cells"]] == [1, 2, 3, 4, 5, 6]
    assert data["cells"][1]["class"] is None and data["cells"][1]["review"] == "reject"
    assert data["cells"][2]["class"] == "Basophil"
    assert all(c["crop"] for c in data["cells"])
    assert data["reviewed_total"] == 5 and data["rejected"] == 1
    assert "unclassified" not in data["review_classes"]
    json.dumps(data)  # serialisable as is


def test_crops_are_looked_up_by_track_only(tmp_path):
    b = LogBuilder(tmp_path, seed=7)
    b.start()
    cell = b.cell("Eosinophil", confidence=0.9)
    desk = desk_for(b.write())
    assert desk.crop(1) == (tmp_path / cell["crop"]).read_bytes()
    assert desk.crop("1") == desk.crop(1)  # as the crop URL's query names it
    (tmp_path / cell["crop"]).unlink()
    assert desk.crop(1) is None
    with pytest.raises(ReviewError) as err:
        desk.crop("../../etc/passwd")
    assert err.value.status == 400
    with pytest.raises(ReviewError) as err:
        desk.crop(2)
    assert err.value.status == 404


def test_the_review_desk_logs_reviews_through_the_writer_and_serves_gallery_crop_and_report(
        tmp_path):
    b = LogBuilder(tmp_path, seed=8)
    b.start(sample="desk")
    b.start(sample="current")  # the latest session is the current one
    cells = [b.cell("Neutrophil", confidence=0.8), b.cell("Lymphocyte", confidence=0.9)]
    path = b.write()
    with ResultLog(path) as writer:
        desk = desk_for(path, writer)
        assert desk.gallery()["sample"] == "current"
        after = desk.review({"session": b.session, "track": 1, "action": "reclassify",
                             "class": "Monocyte"})
        assert {k: v for k, v in after["reviewed_counts"].items() if v} == {
            "Monocyte": 1, "Lymphocyte": 1}
        assert desk.count.count()["counts"]["Monocyte"] == 1  # the live count moved with it
        assert desk.crop(2) == (tmp_path / cells[1]["crop"]).read_bytes()
        html = desk.report_html()
    assert "Differential count · current" in html
    lines = path.read_text().splitlines()
    assert json.loads(lines[-1])["action"] == "reclassify"  # appended, nothing rewritten
    assert lines[:-1] == b.lines
    again = read_log(path).get()
    assert {k: v for k, v in again.reviewed_counts().items() if v} == {
        k: v for k, v in after["reviewed_counts"].items() if v}


def test_the_review_desk_before_a_session_has_none(tmp_path):
    desk = ReviewDesk(CountSession(CellStage(WhiteCellModel())))
    assert desk.gallery() == {"session": None, "cells": []}
    with pytest.raises(ReviewError, match="no count session"):
        desk.review({"session": "x", "track": 1, "action": "reject"})
    with pytest.raises(ReviewError, match="no count session"):
        desk.report_html()
