"""Count sessions: log events and resuming the last session from a rotated, torn log."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lgld.runtime.cells.session import CountSession
from lgld.runtime.cells.stage import CellStage
from lgld.runtime.core.countlog import ReviewError
from lgld.runtime.core.jsonlog import read_records

CLASSES = ["Basophil", "Eosinophil", "Lymphocyte", "Monocyte", "Neutrophil"]


class WhiteCellModel:
    """The classifier surface the stage uses (resume never calls the model)."""

    classes = CLASSES

    class info:  # noqa: N801 - mirrors OnnxClassifier.info
        input_size = 32

    def prepare(self, images):
        return np.zeros((len(images), 3, 32, 32), np.float32)

    def predict(self, batch):
        return np.full((len(batch), len(CLASSES)), 1 / len(CLASSES), np.float32)


def _cell(sid: str, track: int, label: str) -> dict:
    return {"event": "cell", "session": sid, "time": "t", "track": track, "class": label,
            "confidence": 0.9, "probs": {}, "frames_seen": 5, "box": [0, 0, 1, 1], "frame": 1,
            "crop": None}


def test_a_restart_resumes_the_unfinished_session_with_reviews_applied(tmp_path):
    log = tmp_path / "results.jsonl"
    old = [{"event": "session_start", "session": "A", "sample": "old"}, _cell("A", 1, "Monocyte"),
           {"event": "session_end", "session": "A", "counted": 1}]
    new = [{"event": "session_start", "session": "B", "sample": "slide 2"},
           _cell("B", 1, "Neutrophil"), _cell("B", 2, "Lymphocyte"), _cell("B", 7, "Monocyte"),
           {"event": "review", "session": "B", "track": 2, "action": "reject"},
           {"event": "review", "session": "B", "track": 7, "action": "reclassify",
            "class": "Eosinophil"}]
    (tmp_path / "results.jsonl.1").write_text("\n".join(json.dumps(r) for r in old) + "\n")
    log.write_text("\n".join(json.dumps(r) for r in new) + '\n{"event": "cell", "sess')
    written: list[dict] = []
    session = CountSession(CellStage(WhiteCellModel()), written.append)
    assert session.resume(log)
    count = session.count()
    assert count["session"] == "B" and count["sample"] == "slide 2"
    assert count["counts"]["Neutrophil"] == 1 and count["counts"]["Eosinophil"] == 1
    assert count["total"] == 2
    assert session.stage.tracker._next_id == 8  # new tracks never reuse a counted id
    assert written == []  # resuming writes nothing
    session.start("slide 3")
    assert [e["event"] for e in written] == ["session_end", "session_start"]
    assert written[0]["session"] == "B" and written[0]["counted"] == 2
    assert session.count()["total"] == 0


def test_a_finished_session_is_not_resumed(tmp_path):
    log = tmp_path / "results.jsonl"
    log.write_text(json.dumps({"event": "session_start", "session": "A"}) + "\n"
                   + json.dumps({"event": "session_end", "session": "A"}) + "\n")
    assert not CountSession(CellStage(WhiteCellModel())).resume(log)
    assert [r["event"] for r in read_records(log)] == ["session_start", "session_end"]


def test_a_review_moves_the_live_count_at_once_without_reading_the_log_again(tmp_path):
    log = tmp_path / "results.jsonl"
    records = [{"event": "session_start", "session": "B", "sample": "s"},
               _cell("B", 1, "Neutrophil"), _cell("B", 2, "Lymphocyte"),
               _cell("B", 3, "Monocyte")]
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    written: list[dict] = []
    session = CountSession(CellStage(WhiteCellModel()), written.append)
    assert session.resume(log)
    assert session.count()["counts"]["Lymphocyte"] == 1
    log.unlink()  # the count holds what it needs: a review never reads the log again
    session.review({"session": "B", "track": 2, "action": "reclassify", "class": "Basophil"})
    session.review({"session": "B", "track": 3, "action": "reject"})
    counts = session.count()["counts"]
    assert counts["Lymphocyte"] == 0 and counts["Basophil"] == 1 and counts["Monocyte"] == 0
    assert session.count()["total"] == 2
    assert [(e["event"], e["track"], e["action"]) for e in written] == [
        ("review", 2, "reclassify"), ("review", 3, "reject")]
    assert all("ts" in e and "time" not in e for e in written)  # one time key


def test_a_reject_then_an_empty_reclassify_counts_the_same_live_and_in_the_report(tmp_path):
    from lgld.runtime.core.countlog import read_log

    log = tmp_path / "results.jsonl"
    records = [{"event": "session_start", "session": "B"}, _cell("B", 1, "Lymphocyte"),
               _cell("B", 2, "Monocyte"),
               {"event": "review", "session": "B", "track": 1, "action": "reject"},
               {"event": "review", "session": "B", "track": 1, "action": "reclassify",
                "class": ""}]
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    session = CountSession(CellStage(WhiteCellModel()))
    assert session.resume(log)
    live = {k: v for k, v in session.count()["counts"].items() if v}
    report = {k: v for k, v in read_log(log).get().reviewed_counts().items() if v}
    assert live == report == {"Monocyte": 1}


@pytest.mark.parametrize("body, status, message", [
    ({"session": "A", "track": 1, "action": "reject"}, 409, "not the current count session"),
    ({"track": 1, "action": "reject"}, 400, "session must name"),
    ({"session": "B", "track": True, "action": "reject"}, 400, "non-negative integer"),
    ({"session": "B", "track": 1.0, "action": "reject"}, 400, "non-negative integer"),
    ({"session": "B", "track": 9, "action": "reject"}, 404, "not a counted cell"),
    ({"session": "B", "track": 1, "action": "delete"}, 400, "action must be one of"),
    ({"session": "B", "track": 1, "action": "reclassify", "class": "Platelet"}, 400,
     "class must be one of"),
    ({"session": "B", "track": 1, "action": "reclassify", "class": "unclassified"}, 400,
     "class must be one of"),
    (["track", 1], 400, "expected a JSON object"),
])
def test_a_review_of_another_session_or_a_bad_track_is_refused_and_logs_nothing(
        tmp_path, body, status, message):
    log = tmp_path / "results.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in [
        {"event": "session_start", "session": "A"}, _cell("A", 1, "Monocyte"),
        {"event": "session_end", "session": "A"}, {"event": "session_start", "session": "B"},
        _cell("B", 1, "Lymphocyte")]))
    written: list[dict] = []
    session = CountSession(CellStage(WhiteCellModel()), written.append)
    assert session.resume(log)
    with pytest.raises(ReviewError, match=message) as err:
        session.review(body)
    assert err.value.status == status and "\n" not in str(err.value)
    assert written == [] and session.count()["counts"]["Lymphocyte"] == 1


def test_a_new_session_at_start_up_gives_tracks_ids_above_every_id_in_the_log(tmp_path):
    log = tmp_path / "results.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in [
        {"event": "session_start", "session": "A"}, _cell("A", 41, "Monocyte"),
        {"event": "session_start", "session": "B"}, _cell("B", 7, "Monocyte")]))
    session = CountSession(CellStage(WhiteCellModel()), lambda record: None)
    assert not session.open(log, resume=False)  # --new-session
    assert session.id not in ("A", "B")
    assert session.stage.tracker._next_id == 42  # a stale page's track 7 or 41 names no cell


def test_resume_and_the_review_reader_agree_on_a_torn_line_with_an_event_appended(tmp_path):
    from lgld.runtime.core.countlog import read_log

    log = tmp_path / "results.jsonl"
    head = [{"event": "session_start", "session": "B", "sample": "s"}, _cell("B", 1, "Monocyte")]
    torn = json.dumps(_cell("B", 2, "Basophil"))[:40]  # a crash mid-write, then a restart
    log.write_text("".join(json.dumps(r) + "\n" for r in head) + torn
                   + json.dumps(_cell("B", 3, "Neutrophil")) + "\n")
    session = CountSession(CellStage(WhiteCellModel()))
    assert session.resume(log)
    reviewed = read_log(log).get("B").reviewed_counts()
    live = {k: v for k, v in session.count()["counts"].items() if v}
    assert live == reviewed
    assert session.count()["total"] == 2 and reviewed == {"Monocyte": 1, "Neutrophil": 1}


def test_sessions_started_in_the_same_second_get_distinct_ids():
    import re

    from lgld.runtime.cells.session import new_session_id

    ids = [new_session_id() for _ in range(2000)]  # all within a second or two
    assert all(re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{8}", i) for i in ids)
    assert len(set(ids)) == len(ids)  # with 4 hex digits, 2000 ids almost surely collide
