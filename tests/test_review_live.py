"""The live page's review side (lgld.runtime.review.live): following the log, the gallery,
review requests, crop look-ups."""

from __future__ import annotations

import json

import pytest
from review_logs import LogBuilder, expected_reviewed

from lgld.runtime.results import ResultLog
from lgld.runtime.review.live import (
    LogFollower,
    ReviewDesk,
    ReviewError,
    crop_file,
    gallery,
    review_record,
)
from lgld.runtime.review.sessionlog import read_log


def _counts(follower):
    with follower.current() as log:
        return {k: v for k, v in log.get().reviewed_counts().items() if v}, log.skipped


def test_the_follower_reads_appended_lines_and_waits_for_an_incomplete_last_line(tmp_path):
    b = LogBuilder(tmp_path, seed=1, crops=None)
    sid = b.start()
    b.cells(5)
    path = b.write()
    follower = LogFollower(path)
    assert _counts(follower) == (expected_reviewed(b.events, sid), 0)
    cell = b.cell("Monocyte", confidence=0.9)
    line = json.dumps(cell).encode()
    with open(path, "ab") as fh:
        fh.write(line[:20])  # the writer is mid-line
    assert _counts(follower) == (expected_reviewed(b.events[:-1], sid), 0)
    with open(path, "ab") as fh:
        fh.write(line[20:] + b"\n")
    assert _counts(follower) == (expected_reviewed(b.events, sid), 0)
    with follower.current() as log:
        assert log.lines == len(b.lines) - 2  # the new cell's 2 frame lines were not written


def test_the_follower_follows_a_rotation_of_the_log_as_resultlog_does_it(tmp_path):
    b = LogBuilder(tmp_path, seed=2, crops=None)
    sid = b.start()
    b.cells(3)
    path = tmp_path / "live.jsonl"
    writer = ResultLog(path, max_bytes=3000, backups=5)
    follower = LogFollower(path)
    for written, event in enumerate(b.events, start=1):
        writer.write(event)
        if written % 3 == 0:  # look now and then, as the page does
            with follower.current() as log:
                assert len(log.get().cells) == sum(
                    e["event"] == "cell" for e in b.events[:written])
    for more in range(1, 41):  # many more lines: several rotations
        writer.write(b.cell())
        with follower.current() as log:
            assert len(log.get().cells) == 3 + more
    writer.close()
    assert path.with_name("live.jsonl.2").exists()
    with follower.current() as log:
        followed = {k: v for k, v in log.get().reviewed_counts().items() if v}
    again = read_log(path).get(sid)
    assert followed == {k: v for k, v in again.reviewed_counts().items() if v}


def test_a_torn_line_followed_by_an_appended_event_loses_only_the_torn_part(tmp_path):
    b = LogBuilder(tmp_path, seed=3, crops=None)
    b.start()
    b.cells(2)
    path = b.write()
    with open(path, "ab") as fh:  # a crash mid-write, then the restarted writer appends
        fh.write(b'{"event":"cell","session":"x","tr')
        fh.write(json.dumps(b.cell("Basophil", confidence=0.9)).encode() + b"\n")
    log = read_log(path)
    assert log.skipped == 1
    assert [c.model_class for c in log.get().cells][-1] == "Basophil"


def test_review_requests_become_review_events_that_the_reader_applies(tmp_path):
    b = LogBuilder(tmp_path, seed=4)
    b.start()
    b.cell("Neutrophil", confidence=0.8)
    b.cell("Lymphocyte", confidence=0.7)
    path = b.write()
    session = read_log(path).get()
    with ResultLog(path) as writer:
        writer.write(review_record(session, {"track": 1, "action": "reclassify",
                                             "class": "Monocyte"}))
        writer.write(review_record(session, {"track": "2", "action": "reject"}))
    session = read_log(path).get()
    assert {k: v for k, v in session.reviewed_counts().items() if v} == {"Monocyte": 1}
    assert session.cells[1].track == 2 and session.cells[1].rejected


@pytest.mark.parametrize("body, message", [
    ({"track": 99, "action": "reject"}, "not a counted cell"),
    ({"track": 1, "action": "delete"}, "action must be one of"),
    ({"track": 1, "action": "reclassify", "class": "Platelet"}, "class must be one of"),
    ({"track": 1, "action": "reclassify", "class": "unclassified"}, "class must be one of"),
    (["track", 1], "expected a JSON object"),
])
def test_bad_review_requests_are_refused_with_one_line(tmp_path, body, message):
    b = LogBuilder(tmp_path, seed=5, crops=None)
    b.start()
    b.cell("Neutrophil", confidence=0.8)
    session = read_log(b.write()).get()
    with pytest.raises(ReviewError, match=message) as err:
        review_record(session, body)
    assert "\n" not in str(err.value)


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
    log = read_log(b.write())
    found = crop_file(log, log.get(), 1)
    assert found is not None and found.read_bytes() == (tmp_path / cell["crop"]).read_bytes()
    found.unlink()
    assert crop_file(log, log.get(), 1) is None
    with pytest.raises(ReviewError):
        crop_file(log, log.get(), "../../etc/passwd")


def test_the_review_desk_logs_reviews_through_the_writer_and_serves_gallery_crop_and_report(
        tmp_path):
    b = LogBuilder(tmp_path, seed=8)
    b.start(sample="desk")
    b.start(sample="current")  # the latest session is the current one
    cells = [b.cell("Neutrophil", confidence=0.8), b.cell("Lymphocyte", confidence=0.9)]
    path = b.write()
    with ResultLog(path) as writer:
        desk = ReviewDesk(path, writer.write)
        assert desk.gallery()["sample"] == "current"
        after = desk.review({"track": 1, "action": "reclassify", "class": "Monocyte"})
        assert {k: v for k, v in after["reviewed_counts"].items() if v} == {
            "Monocyte": 1, "Lymphocyte": 1}
        assert desk.crop(2) == (tmp_path / cells[1]["crop"]).read_bytes()
        html = desk.report_html()
    assert "Differential count · current" in html
    lines = path.read_text().splitlines()
    assert json.loads(lines[-1])["action"] == "reclassify"  # appended, nothing rewritten
    assert lines[:-1] == b.lines


def test_the_review_desk_without_a_log_yet_has_no_session(tmp_path):
    desk = ReviewDesk(tmp_path / "none.jsonl", lambda record: None)
    assert desk.gallery() == {"session": None, "cells": []}
    with pytest.raises(ReviewError, match="no count session"):
        desk.review({"track": 1, "action": "reject"})
