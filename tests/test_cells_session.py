"""Count sessions: log events and resuming the last session from a rotated, torn log."""

from __future__ import annotations

import json

import numpy as np

from lgld.runtime.cells.session import CountSession
from lgld.runtime.cells.stage import CellStage
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


def test_a_review_on_the_page_moves_the_live_count_to_the_reviewed_counts(tmp_path):
    log = tmp_path / "results.jsonl"
    records = [{"event": "session_start", "session": "B", "sample": "s"},
               _cell("B", 1, "Neutrophil"), _cell("B", 2, "Lymphocyte"),
               _cell("B", 3, "Monocyte")]
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    session = CountSession(CellStage(WhiteCellModel()))
    assert session.resume(log)
    assert session.count()["counts"]["Lymphocyte"] == 1
    with log.open("a") as fh:  # what ReviewDesk appends, then it calls recount
        fh.write(json.dumps({"event": "review", "session": "B", "track": 2,
                             "action": "reclassify", "class": "Basophil"}) + "\n")
        fh.write(json.dumps({"event": "review", "session": "B", "track": 3,
                             "action": "reject"}) + "\n")
    session.recount(log)
    counts = session.count()["counts"]
    assert counts["Lymphocyte"] == 0 and counts["Basophil"] == 1 and counts["Monocyte"] == 0
    assert session.count()["total"] == 2
    session.start("next")  # a new session's count is not touched by the old log's reviews
    session.recount(log)
    assert session.count()["total"] == 0


def test_resume_and_the_review_reader_agree_on_a_torn_line_with_an_event_appended(tmp_path):
    from lgld.runtime.review.sessionlog import read_log

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
