"""The count log's contract: any sequence of cell, review and session events gives the same
counts live, after a restart, and in the report; no parseable line is ever fatal."""

from __future__ import annotations

import contextlib
import json
import random

import numpy as np
import pytest
from review_logs import WBC5

from lgld.runtime.cells.session import CountSession
from lgld.runtime.cells.stage import CellFrame, CellStage
from lgld.runtime.cells.track import CountedCell
from lgld.runtime.core.countlog import UNCLASSIFIED, ReviewError, read_log
from lgld.runtime.results import ResultLog
from lgld.runtime.review.report import summary

SEEDS = range(40)
STEPS = 60


class WhiteCellModel:
    classes = WBC5

    class info:  # noqa: N801 - mirrors OnnxClassifier.info
        input_size = 32


class ScriptedStage(CellStage):
    """A stage whose next frame counts the labels in ``next`` (no pictures, no model)."""

    def __init__(self) -> None:
        super().__init__(WhiteCellModel())
        self.next: list[str] = []

    def classify(self, prepared, image, now) -> CellFrame:
        frame = CellFrame([])
        for label in self.next:
            track = self.tracker._next_id
            self.tracker._next_id += 1
            probs = {c: 0.2 for c in WBC5}
            self.count.add(label)
            frame.counted.append(CountedCell(track, label, 0.9, probs, 5, (0, 0, 9, 9), 0))
            frame.crops.append(np.zeros((4, 4, 3), np.uint8))
        self.next = []
        return frame


def _nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in counts.items() if v}


class Run:
    """lgld-run's count side on a log: start-up (resume), frames, reviews, stops, crashes."""

    def __init__(self, path) -> None:
        self.path = path
        self.writer = ResultLog(path, max_bytes=6000, backups=1000)  # rotates, keeps all
        self.count = CountSession(ScriptedStage(), self.writer.write, {"classes": WBC5},
                                  log_path=path)
        self.count.open(path)
        self.tracks: list[int] = []  # counted in this process, for reviews to name
        self.frame = 0

    def cells(self, labels: list[str]) -> None:
        self.count.stage.next = labels
        self.frame += 1
        frame = self.count.process(None, np.zeros((8, 8, 3), np.uint8), 0.0, self.frame)
        self.tracks += [c.track for c in frame.counted]

    def close(self) -> None:
        self.writer.close()


def _review_body(rng: random.Random, run: Run) -> dict:
    sid = run.count.id
    session = rng.choices([sid, "20200101-000000-dead", None], weights=[85, 10, 5])[0]
    track = rng.choice([*run.tracks[-8:], 10_000, True, "3", -1]) if run.tracks else 1
    body = {"session": session, "track": track,
            "action": rng.choice(["confirm", "reclassify", "reject", "reject", "delete"])}
    if rng.random() < 0.9:
        body["class"] = rng.choice([*WBC5, "", "Platelet", UNCLASSIFIED, None])
    return {k: v for k, v in body.items() if v is not None}


def _old_lines(rng: random.Random, sid: str | None, tracks: list[int]) -> list[bytes]:
    """Lines another (older) writer left: format-1 reviews, reviews lgld never writes, torn
    and hostile lines."""
    track = rng.choice(tracks) if tracks else 1
    when = "2026-12-01T10:00:00.000+00:00"
    records = [
        {"event": "review", "session": sid, "time": when, "track": track, "action": "reject"},
        {"event": "review", "session": sid, "time": when, "track": track,
         "action": "reclassify", "class": ""},
        {"event": "review", "session": sid, "time": when, "track": track,
         "action": "reclassify", "class": rng.choice(WBC5)},
        {"event": "review", "session": sid, "track": True, "action": "reject"},
        {"event": "cell", "session": sid, "time": when, "track": None, "class": "Monocyte"},
        {"event": "cell", "session": sid, "track": 10**400, "class": "Platelet",
         "confidence": 1e308},
    ]
    lines = [json.dumps(r).encode() for r in rng.sample(records, rng.randint(1, 3))]
    lines += rng.sample([b'{"event":"cell","session":"', b"[" * 100_000, b"1e999",
                         b'{"event":"review","track":' + b"9" * 400 + b"}"], 2)
    return [line + b"\n" for line in lines]


@pytest.mark.parametrize("seed", SEEDS)
def test_live_restart_and_report_counts_agree_for_any_sequence_of_events(tmp_path, seed):
    rng = random.Random(seed)
    path = tmp_path / "results.jsonl"
    run = Run(path)
    for _ in range(STEPS):
        op = rng.choices(["cells", "review", "new", "crash", "stop"], [30, 45, 5, 12, 8])[0]
        if op == "cells":
            run.cells(rng.choices([*WBC5, UNCLASSIFIED], k=rng.randint(1, 3)))
        elif op == "review":
            with contextlib.suppress(ReviewError):
                run.count.review(_review_body(rng, run))
        elif op == "new":
            run.count.start(f"sample {rng.random():.3f}")
            run.tracks = []
        else:  # a crash (no session_end) or a stop, maybe an older writer's lines, a start
            if op == "stop":
                run.count.end()
            sid, tracks, before = run.count.id, run.tracks, run.count.count()["counts"]
            run.close()
            appended = rng.random() < 0.5
            if appended:
                with open(path, "ab") as fh:
                    fh.writelines(_old_lines(rng, sid, tracks))
            run = Run(path)
            if op == "crash":  # the crashed session continues, with the same counts
                assert run.count.id == sid
                assert appended or run.count.count()["counts"] == before
            else:
                assert run.count.id != sid
        live = _nonzero(run.count.count()["counts"])
        log = read_log(path)
        report = summary(log, log.get(run.count.id))
        assert live == _nonzero(report["reviewed_counts"]), (seed, op)
        assert run.count.count()["total"] == report["reviewed_total"]
    run.close()


def _hostile_lines(sid: str) -> list[bytes]:
    """Parseable but hostile lines (and one past the parser's nesting limit)."""
    huge = "9" * 400
    records = [
        f'{{"event":"cell","session":"{sid}","track":{huge},"class":"Monocyte",'
        f'"confidence":1e308,"probs":{{"Monocyte":{huge}}},"box":[1e308,{huge},0,0],'
        f'"frames_seen":{huge},"frame":-{huge}}}',
        f'{{"event":"review","session":"{sid}","track":{huge},"action":"reject"}}',
        f'{{"event":"session_start","session":"{sid}","target":{huge},"ts":"{huge}",'
        '"calibration":' + "[" * 500 + "]" * 500 + ',"model":{"path":"/","classes":[1e308]}}',
        '{"event":"cell","session":"x\\u0000y","class":"Monocyte","confidence":1e999}',
    ]
    return [b"[" * 100_000 + b"\n", *(r.encode() + b"\n" for r in records)]


def test_hostile_lines_are_counted_and_skipped_by_resume_review_report_and_dataset(
        tmp_path, capsys):
    from lab_logs import reviewed_session

    from lgld.lab.cli import main as dataset_main
    from lgld.runtime.review.cli import main as report_main
    from lgld.runtime.review.live import ReviewDesk

    sid = "20261201-100000-abcd"
    log = reviewed_session(tmp_path / "pi", sid, per_class=5)
    log.lines = [r for r in log.lines if r["event"] != "session_end"]  # a crash: it resumes
    path = log.write()
    with open(path, "ab") as fh:
        fh.writelines(_hostile_lines(sid))
    logged = read_log(path)
    assert logged.skipped >= 3
    session = logged.get(sid)
    assert session.target == 100 and session.model.path == "/zoo/lgld-wbc5.onnx"
    assert [c.confidence for c in session.cells][-1] is None  # 1e308 is no confidence

    count = CountSession(CellStage(WhiteCellModel()), log_path=path)
    assert count.open(path) and count.id == sid  # resumed, not a crash loop
    assert count.count()["total"] == len(session.reviewed_labels())
    desk = ReviewDesk(count)
    assert len(desk.gallery()["cells"]) == len(session.cells)
    assert "Differential count" in desk.report_html()

    out = tmp_path / "out"
    out.mkdir()
    assert report_main([str(path), "-o", str(out / "r.html"), "--csv", str(out / "r.csv"),
                        "--json", str(out / "r.json")]) == 0
    assert json.loads((out / "r.json").read_text())["reviewed_total"] == 16
    assert dataset_main([str(path), "-o", str(out / "lab")]) == 0
    assert "Traceback" not in capsys.readouterr().err
