"""Reading count sessions back from a cell-mode JSONL log (lgld.runtime.core.countlog)."""

from __future__ import annotations

import json

import pytest
from review_logs import WBC5, LogBuilder, expected_reviewed, session_cells

from lgld.runtime.core.countlog import SessionLogError, read_log


def _model_counts(events, sid):
    counts: dict[str, int] = {}
    for e in session_cells(events, sid):
        counts[e["class"]] = counts.get(e["class"], 0) + 1
    return counts


def _nonzero(counts):
    return {k: v for k, v in counts.items() if v}


def test_model_counts_match_the_cell_events_of_the_log(tmp_path):
    b = LogBuilder(tmp_path, seed=1, crops=None)
    sid = b.start(sample="donor 12", target=60, calibration={"diameter_px": [50, 90]})
    b.cells(60)
    b.end()
    session = read_log(b.write()).get()
    assert session.id == sid
    assert session.sample == "donor 12"
    assert session.target == 60
    assert session.calibration == {"diameter_px": [50, 90]}
    assert session.model.name == "lgld-wbc5" and session.model.classes == WBC5
    assert len(session.cells) == 60 and session.counted_at_end == 60
    assert _nonzero(session.model_counts()) == _model_counts(b.events, sid)
    assert session.model_counts() == session.reviewed_counts()  # nothing reviewed yet
    assert session.frames == 120 and session.ended


def test_reviews_apply_the_last_review_of_a_track_and_rejects_leave_the_reviewed_counts(
        tmp_path):
    b = LogBuilder(tmp_path, seed=2, crops=None)
    sid = b.start()
    cells = [b.cell(name=name, confidence=0.95) for name in
             ["Neutrophil", "Neutrophil", "Lymphocyte", "Monocyte", "Basophil"]]
    b.review(cells[0]["track"], "reclassify", "Eosinophil")
    b.review(cells[0]["track"], "reclassify", "Monocyte")  # the last one wins
    b.review(cells[1]["track"], "reject")
    b.review(cells[2]["track"], "reject")
    b.review(cells[2]["track"], "confirm")  # rejected, then confirmed: counted again
    b.end()
    session = read_log(b.write()).get()
    assert _nonzero(session.model_counts()) == {"Neutrophil": 2, "Lymphocyte": 1, "Monocyte": 1,
                                                "Basophil": 1}
    assert _nonzero(session.reviewed_counts()) == expected_reviewed(b.events, sid)
    assert _nonzero(session.reviewed_counts()) == {"Monocyte": 2, "Lymphocyte": 1,
                                                   "Basophil": 1}
    assert session.reviews == 5 and session.rejected == 1 and session.corrections == 2
    assert session.cells[0].reviewed_class == "Monocyte" and session.cells[1].rejected


def test_torn_and_foreign_lines_are_skipped_and_counted_and_other_records_are_not(tmp_path):
    b = LogBuilder(tmp_path, seed=3, crops=None)
    b.raw('{"time":"2026-12-01T09:00:00","label":"Benign","confidence":0.9}')  # field mode
    b.start()
    b.cells(5)
    b.raw('{"event":"cell","session":"20261201-0930')  # torn mid-write
    b.raw("[1, 2, 3]")  # JSON, but not a record
    b.raw('{"event":"cell","session":"x","track":9}')  # a cell without a class
    b.raw('{"event":"review","session":"x","track":1,"action":"rename"}')  # unknown action
    b.raw('{"event":"review","session":"x","track":1,"action":"reclassify"}')  # no class
    b.raw("")  # blank lines are not lines
    path = b.write()
    with open(path, "ab") as fh:
        fh.write(b'{"event":"cell","session":"\xff\xfe"}\n')  # not UTF-8
        fh.write(b'{"event":"session_end","session":"')  # torn last line, no newline
    log = read_log(path)
    assert log.skipped == 7
    assert log.other_records == 1
    assert len(log.get().cells) == 5
    assert log.ids() == [b.session]  # the broken lines created no sessions


def test_rotated_siblings_are_read_oldest_first(tmp_path):
    b = LogBuilder(tmp_path, seed=4, crops=None)
    sid = b.start()
    b.cells(30)
    b.review(1, "reclassify", "Basophil")
    b.end()
    path = b.write(rotate_every=25)
    assert path.with_name("results.jsonl.3").is_file()
    log = read_log(path)
    assert [f.name for f in log.files] == ["results.jsonl.3", "results.jsonl.2",
                                           "results.jsonl.1", "results.jsonl"]
    session = log.get()
    assert [c.track for c in session.cells] == list(range(1, 31))
    assert _nonzero(session.reviewed_counts()) == expected_reviewed(b.events, sid)
    assert log.skipped == 0


def test_a_session_without_session_end_ends_at_its_last_event(tmp_path):
    b = LogBuilder(tmp_path, seed=5, crops=None)
    b.start()
    b.cells(4)
    last = b.events[-1]
    log = read_log(b.write())
    session = log.get()
    assert not session.ended
    assert session.finish.isoformat(timespec="milliseconds") == last["time"]
    assert session.cells_per_minute() == pytest.approx(
        4 * 60 / (session.finish - session.start).total_seconds())


def test_sessions_are_kept_apart_and_the_latest_is_the_default(tmp_path):
    b = LogBuilder(tmp_path, seed=6, crops=None)
    first = b.start(sample="first")
    b.cells(3)
    b.end()
    second = b.start(sample="second")
    b.cells(7)
    b.review(2, "reject")  # track 2 belongs to the first session, not this one
    log = read_log(b.write())
    assert log.ids() == [first, second]
    assert log.get().id == second and len(log.get().cells) == 7
    assert len(log.get(first).cells) == 3
    assert log.get(second).orphan_reviews == 1 and log.get(first).rejected == 0


def test_an_unknown_session_is_an_error_that_lists_the_sessions(tmp_path):
    b = LogBuilder(tmp_path, seed=7, crops=None)
    ids = [b.start(), b.start()]
    log = read_log(b.write())
    with pytest.raises(SessionLogError) as err:
        log.get("20000101-000000-dead")
    message = str(err.value)
    assert "\n" not in message and all(sid in message for sid in ids)


def test_cells_whose_session_start_was_rotated_away_still_form_a_session(tmp_path):
    path = tmp_path / "results.jsonl"
    cell = {"event": "cell", "session": "S1", "time": "2026-12-01T10:00:00+00:00", "track": 4,
            "class": "Monocyte", "confidence": 0.9, "probs": {}, "frames_seen": 3,
            "box": [1, 2, 3, 4], "frame": 8, "crop": None}
    path.write_text(json.dumps(cell) + "\n")
    session = read_log(path).get()
    assert session.id == "S1" and session.model_counts() == {"Monocyte": 1}
    assert session.model.name == "" and session.start is None


def test_a_missing_log_is_an_error(tmp_path):
    with pytest.raises(SessionLogError, match="log not found"):
        read_log(tmp_path / "nope.jsonl")
    with pytest.raises(SessionLogError, match="not a file"):
        read_log(tmp_path)


def test_a_log_of_another_mode_has_no_sessions(tmp_path):
    path = tmp_path / "field.jsonl"
    path.write_text('{"time":"2026-12-01T09:00:00","label":"Benign","confidence":0.9}\n')
    with pytest.raises(SessionLogError, match="no count sessions"):
        read_log(path).get()


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
