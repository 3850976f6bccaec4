"""The per-session microscope check (core.domain), its place in a count session, and the
validation record of lgld-report --validate (review.validation)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from lgld.runtime.cells.session import CountSession
from lgld.runtime.cells.stage import CellFrame, CellInput, CellStage
from lgld.runtime.core.domain import (
    CHECKING,
    FAMILIAR,
    NEW,
    UNCHECKED,
    VALIDATED,
    DomainCheck,
    DomainError,
    DomainReference,
    fit_reference,
)
from lgld.runtime.core.modelinfo import ModelInfo
from lgld.runtime.core.preprocess import PreprocessSpec
from lgld.runtime.review import cli as report_cli
from lgld.runtime.review import validation

K = 5


def logits_like_training(n: int, rng: np.random.Generator, classes=range(K)) -> np.ndarray:
    """Each cell: a high logit for its class, noise elsewhere (a well-trained model)."""
    labels = rng.choice(list(classes), n)
    x = rng.normal(0.0, 1.0, (n, K))
    x[np.arange(n), labels] += 8.0
    return x


@pytest.fixture(scope="module")
def reference() -> DomainReference:
    return fit_reference(logits_like_training(600, np.random.default_rng(0)), "synthetic")


def session_state(ref, logits, n=50, validations=()):
    check = DomainCheck(ref, first_n=n, validations=list(validations))
    for row in logits:
        check.add([row])
    return check.state()


def test_the_model_s_own_kind_of_cells_is_familiar_whatever_the_class_mix(reference):
    rng = np.random.default_rng(1)
    for classes in (range(K), [4], [2, 4]):  # all classes, only neutrophils, two classes
        states = [session_state(reference, logits_like_training(50, rng, classes))["state"]
                  for _ in range(40)]
        assert states.count(FAMILIAR) >= 38, (classes, states)


def test_cells_unlike_the_reference_are_a_new_microscope(reference):
    rng = np.random.default_rng(2)
    for _ in range(20):
        shifted = logits_like_training(50, rng) * 0.4 + rng.normal(0, 1.5, (50, K))
        state = session_state(reference, shifted)
        assert state["state"] == NEW and state["z"] > reference.threshold_z
        assert "lgld-report LOG --validate" in state["message"]


def test_checking_until_first_n_cells_and_only_those_count(reference):
    rng = np.random.default_rng(3)
    check = DomainCheck(reference, first_n=10)
    assert not check.add(logits_like_training(9, rng))
    assert check.state()["state"] == CHECKING and check.state()["cells"] == 9
    assert check.add(logits_like_training(5, rng))  # this call completed the check
    assert len(check.scores) == 10
    assert not check.add(logits_like_training(5, rng) * 0)  # later cells change nothing
    assert check.state()["state"] == FAMILIAR
    check.reset()
    assert check.state()["state"] == CHECKING
    assert DomainCheck(None).state()["state"] == UNCHECKED


def test_a_matching_validation_makes_the_session_validated(reference):
    rng = np.random.default_rng(4)
    shifted = logits_like_training(50, rng) * 0.4 + rng.normal(0, 1.5, (50, K))
    first = DomainCheck(reference, first_n=50)
    first.add(shifted)
    st = first.state()
    record = {"validation": {"reviewed": 40, "right": 36, "accuracy": 0.9, "ci95": [0.77, 0.96]},
              "domain": {"score_mean": st["score_mean"], "score_sd": st["score_sd"]}}
    again = logits_like_training(50, rng) * 0.4 + rng.normal(0, 1.5, (50, K))
    state = session_state(reference, again, validations=[record])
    assert state["state"] == VALIDATED and "36/40" in state["message"]
    # a session from the training microscope does not match that validation
    assert session_state(reference, logits_like_training(50, rng),
                         validations=[record])["state"] == FAMILIAR


def test_reference_round_trips_through_model_metadata_and_refuses_damage(reference):
    spec = PreprocessSpec(input_size=32)
    info = ModelInfo(classes=["a", "b", "c", "d", "e"], preprocess=spec,
                     domain=reference.to_dict())
    back = ModelInfo.from_metadata(info.to_metadata())
    ref = DomainReference.from_dict(back.domain)
    assert np.allclose(ref.means, reference.means, atol=1e-5)
    assert "lgld.domain" not in ModelInfo(classes=["a", "b"], preprocess=spec).to_metadata()
    for damage in ({"method": "other"}, {**reference.to_dict(), "score_sd": 0},
                   {**reference.to_dict(), "precision": [[1]]}):
        with pytest.raises(DomainError):
            DomainReference.from_dict(damage)
    with pytest.raises(DomainError):
        fit_reference(np.zeros((5, K)))


class LogitModel:
    """The classifier surface of the stage, with logits (like OnnxClassifier)."""

    classes = ["Basophil", "Eosinophil", "Lymphocyte", "Monocyte", "Neutrophil"]

    class info:  # noqa: N801 - mirrors OnnxClassifier.info
        input_size = 32

    def __init__(self, rows: np.ndarray) -> None:
        self.rows = rows

    def prepare(self, images):
        return np.zeros((len(images), 3, 32, 32), np.float32)

    def logits(self, batch):
        return self.rows[: len(batch)]


def test_a_count_session_logs_its_domain_state_once_and_shows_it(reference, monkeypatch):
    rng = np.random.default_rng(5)
    rows = logits_like_training(3, rng) * 0.4 + 6.0
    stage = CellStage(LogitModel(rows), tracking=False)
    written: list[dict] = []
    session = CountSession(stage, written.append, domain=DomainCheck(reference, first_n=5))
    session.start()
    image = np.full((64, 64, 3), 200, np.uint8)

    def frame(prepared, image, now):  # three counted cells per frame, with their logits
        return CellFrame([], logits=list(rows), counted=[], crops=[])
    monkeypatch.setattr(stage, "classify", frame)
    prepared = CellInput(None, [], None, 0.0, 0.0)
    session.process(prepared, image, 0.0, 0)
    assert session.count()["domain"]["state"] == CHECKING
    session.process(prepared, image, 0.0, 1)
    session.process(prepared, image, 0.0, 2)
    domain_events = [e for e in written if e["event"] == "domain"]
    assert len(domain_events) == 1 and domain_events[0]["state"] == NEW
    assert session.count()["domain"]["state"] == NEW
    session.end()
    assert written[-1]["event"] == "session_end" and written[-1]["domain"]["state"] == NEW


def test_stage_passes_each_counted_cell_s_logits():
    from lgld.runtime.cells.slide import SlideScan

    scan = SlideScan((640, 480))
    seen = 0
    for index in range(0, 300, 15):
        image = scan.frame(index)
        rows = np.arange(24 * 5, dtype=np.float32).reshape(-1, 5)
        stage = CellStage(LogitModel(rows), tracking=False)
        result = stage.process(image)
        assert len(result.logits) == len(result.counted)
        for counted, row in zip(result.counted, result.logits, strict=True):
            assert np.array_equal(row, rows[counted.detection_index])
        seen += len(result.counted)
    assert seen >= 3


def test_wilson_interval_matches_the_textbook_value():
    lo, hi = validation.wilson(25, 52)
    assert (round(lo, 3), round(hi, 3)) == (0.351, 0.613)
    assert validation.wilson(0, 0) == (0.0, 1.0)
    lo, hi = validation.wilson(20, 20)
    assert hi == 1.0 and 0.83 < lo < 0.84


def _log(tmp_path, reviews, domain=True):
    events = [{"event": "session_start", "session": "S", "sample": "slide",
               "model": {"name": "m", "sha256": "ab" * 32, "precision": "fp32"}}]
    for t in range(1, 31):
        events.append({"event": "cell", "session": "S", "track": t, "class": "Neutrophil",
                       "confidence": 0.9, "probs": {}, "box": [0, 0, 1, 1], "frame": t,
                       "crop": None})
    for t, action in reviews.items():
        r = {"event": "review", "session": "S", "track": t, "action": action}
        if action == "reclassify":
            r["class"] = "Lymphocyte"
        events.append(r)
    if domain:
        events.append({"event": "domain", "session": "S", "state": NEW, "z": 20.0,
                       "score_mean": 2.3, "score_sd": 0.6, "cells": 30, "message": "new"})
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


def test_validate_stores_the_reviewed_accuracy_and_the_report_carries_it(tmp_path, capsys):
    reviews = {t: "confirm" for t in range(1, 19)} | {t: "reclassify" for t in range(19, 23)}
    reviews[23] = "reject"
    log = _log(tmp_path, reviews)
    state = tmp_path / "state"
    assert report_cli.main([str(log), "--validate", "--state-dir", str(state),
                            "--json", str(tmp_path / "s.json")]) == 0
    records = validation.load(state)
    assert len(records) == 1
    v = records[0]["validation"]
    assert (v["right"], v["reviewed"]) == (18, 22)  # the rejected cell does not count
    assert v["ci95"] == [round(x, 4) for x in validation.wilson(18, 22)]
    micro = json.loads((tmp_path / "s.json").read_text())["microscope"]
    assert micro["state"] == NEW and micro["validations"][0]["session"] == "S"
    # validating again replaces, never duplicates
    assert report_cli.main([str(log), "--validate", "--state-dir", str(state)]) == 0
    assert len(validation.load(state)) == 1
    assert "18/22 right" in capsys.readouterr().out


def test_validate_refuses_too_few_reviews_or_no_domain_check(tmp_path, capsys):
    state = tmp_path / "state"
    log = _log(tmp_path, {t: "confirm" for t in range(1, 6)})
    assert report_cli.main([str(log), "--validate", "--state-dir", str(state)]) == 1
    assert "needs at least 20" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "state", ignore_errors=True)
    log = _log(tmp_path, {t: "confirm" for t in range(1, 25)}, domain=False)
    assert report_cli.main([str(log), "--validate", "--state-dir", str(state)]) == 1
    assert "no domain check" in capsys.readouterr().err
    assert not (state / validation.VALIDATIONS_FILE).exists()
    state.mkdir()
    (state / validation.VALIDATIONS_FILE).write_text("{broken")
    with pytest.raises(validation.ValidationError, match="unreadable"):
        validation.load(state)


def test_domainstats_writes_the_reference_into_the_model(tiny_model, tmp_path, capsys):
    pytest.importorskip("onnx")
    import cv2

    from lgld.export import domainstats
    from lgld.runtime.core.classifier import OnnxClassifier

    model = tmp_path / "m.onnx"
    shutil.copy(tiny_model, model)
    rng = np.random.default_rng(0)
    classes = OnnxClassifier(model, threads=1).classes
    for name in classes:
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(15):
            image = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
            cv2.imwrite(str(tmp_path / "data" / name / f"{i}.png"), image)
    assert domainstats.main([str(model), "--data", str(tmp_path / "data"), "--limit", "60"]) == 0
    clf = OnnxClassifier(model, threads=1)
    ref = DomainReference.from_dict(clf.info.domain)
    assert ref.cells == 60 and ref.means.shape == (len(classes), len(classes))
    assert clf.info.classes == classes  # the rest of the metadata is kept
    assert domainstats.main([str(tmp_path / "none.onnx"), "--data", "x"]) == 1
    assert "model not found" in capsys.readouterr().err


def test_a_domain_event_belongs_to_its_session_in_the_report_reader(tmp_path):
    from lgld.runtime.core.countlog import read_log

    log = _log(tmp_path, {})
    parsed = read_log(log)
    assert parsed.other_records == 0 and parsed.skipped == 0
    assert len(parsed.get("S").cells) == 30


# --- which calls are shown as sure ------------------------------------------------------------

def foreign_logits(n: int, rng: np.random.Generator) -> np.ndarray:
    """Confident calls (one class well ahead) whose logits lie far from the reference."""
    x = logits_like_training(n, rng) * 2.5
    return x + rng.normal(0.0, 4.0, x.shape)


def test_vouching_follows_the_session_state_and_each_cell_while_checking(reference):
    rng = np.random.default_rng(6)
    check = DomainCheck(reference, first_n=5)
    own = check.cell_scores(logits_like_training(200, rng))
    far = check.cell_scores(foreign_logits(200, rng))
    # checking: a cell like the reference is vouched for, a foreign-looking one is not (the
    # first cell of a session must lie within CELL_MEAN_Z: about 84% of the reference's cells)
    assert np.mean([check.vouches(s) for s in own]) >= 0.75
    assert not any(check.vouches(s) for s in far)
    check.add(logits_like_training(3, rng))  # after a few cells like the reference: most are
    assert np.mean([check.vouches(s) for s in own]) >= 0.9
    check.reset()
    assert not check.vouches(float("nan")) and not check.vouches(None)
    check.add(foreign_logits(3, rng))  # 3 foreign cells: even a familiar-looking one is not sure
    assert sum(check.vouches(s) for s in own) <= 0.2 * len(own)
    check.add(foreign_logits(2, rng))
    assert check.state()["state"] == NEW and not any(check.vouches(s) for s in own)
    check.reset()
    check.add(logits_like_training(5, rng))
    assert check.state()["state"] == FAMILIAR and all(check.vouches(s) for s in far)
    assert DomainCheck(None).vouches(None)  # no reference: as before, confidence alone


def test_a_validated_microscope_vouches_only_with_a_good_validation(reference):
    rng = np.random.default_rng(7)
    shifted = foreign_logits(50, rng)
    first = DomainCheck(reference, first_n=50)
    first.add(shifted)
    st = first.state()
    for ci_low, sure in ((0.35, False), (0.92, True)):
        record = {"validation": {"reviewed": 50, "right": 25, "accuracy": 0.5,
                                 "ci95": [ci_low, 0.99]},
                  "domain": {"score_mean": st["score_mean"], "score_sd": st["score_sd"]}}
        check = DomainCheck(reference, first_n=50, validations=[record])
        check.add(shifted)
        assert check.state()["state"] == VALIDATED and check.vouches(None) is sure


def slide_session(rows: np.ndarray, domain: DomainCheck | None, tracking: bool = False,
                  frames: int = 0):
    """A count session over demo-slide frames whose every cell gets a row of ``rows``."""
    from lgld.runtime.cells.slide import SlideScan

    scan = SlideScan((640, 480), speed=320.0, seed=3)
    step = 2 if tracking else 15  # tracked: 15 frames a second; else unrelated views
    frames = frames or (120 if tracking else 40)
    stage = CellStage(LogitModel(rows), tracking=tracking)
    written: list[dict] = []
    session = CountSession(stage, written.append, domain=domain)
    session.start()
    shown = []
    for index in range(frames):
        image = scan.frame(30 + index * step)  # after the slide's lead-in
        shown += session.process(stage.prepare(image), image, index * step / scan.fps,
                                 index).cells
    return shown, [e for e in written if e["event"] == "cell"]


def confident(rows: np.ndarray) -> np.ndarray:
    e = np.exp(rows - rows.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).max(axis=1)


@pytest.mark.parametrize("tracking", [False, True])
def test_a_session_whose_cells_look_foreign_shows_no_call_as_sure(reference, tracking):
    rows = foreign_logits(24, np.random.default_rng(8))
    rows = np.tile(rows[confident(rows) >= 0.9][:1], (24, 1))  # every cell: one confident call
    shown, cells = slide_session(rows, None, tracking)
    assert shown and all(c["state"] in ("ok", "partial") for c in shown if c["class"])
    shown, cells = slide_session(rows, DomainCheck(reference, first_n=3), tracking)
    whole = [c for c in shown if c["state"] != "partial" and c["class"]]
    assert whole and all(c["state"] == "unfamiliar" for c in whole)
    # still counted by type (the lab needs a differential), logged as not sure
    assert len(cells) >= 4 and all(c["class"] != "unclassified" for c in cells)
    assert all(c["state"] == "unfamiliar" for c in cells)


@pytest.mark.parametrize("tracking", [False, True])
def test_a_session_like_the_training_images_keeps_its_sure_calls(reference, tracking):
    rows = logits_like_training(200, np.random.default_rng(9))
    z = (DomainCheck(reference).cell_scores(rows) - reference.score_mean) / reference.score_sd
    rows = np.tile(rows[(np.abs(z) < 1) & (confident(rows) >= 0.9)][:1], (24, 1))
    without, _ = slide_session(rows, None, tracking)
    shown, cells = slide_session(rows, DomainCheck(reference, first_n=3), tracking)
    assert [c["state"] for c in shown] == [c["state"] for c in without]
    assert sum(c["state"] == "ok" for c in shown) >= 10
    assert len(cells) >= 4 and all(c["state"] == "ok" for c in cells)


def test_an_old_log_replays_unchanged_and_a_new_one_says_which_calls_were_sure(tmp_path):
    from lgld.runtime.core.countlog import replay

    old = _log(tmp_path, {1: "reclassify", 2: "reject"}, domain=False)  # no cell states
    lines = old.read_text().splitlines()
    lines.insert(2, json.dumps({"event": "cell", "session": "S", "track": 99,
                                "class": "unclassified", "confidence": 0.4, "probs": {}}))
    old.write_text("\n".join(lines) + "\n")
    session = replay(old).get("S")
    assert session.reviewed_counts() == {"Neutrophil": 28, "Lymphocyte": 1, "unclassified": 1}
    assert session.sure_calls() == {"ok": 30, "uncertain": 1, "unfamiliar": 0}
    new = tmp_path / "new.jsonl"
    new.write_text("".join(json.dumps({**json.loads(line), "state": "unfamiliar"}) + "\n"
                           if '"cell"' in line and '"unclassified"' not in line else line + "\n"
                           for line in lines))
    again = replay(new).get("S")
    assert again.reviewed_counts() == session.reviewed_counts()  # counted by type all the same
    assert again.sure_calls() == {"ok": 0, "uncertain": 1, "unfamiliar": 30}
    assert report_cli.main([str(new), "--json", str(tmp_path / "r.json"),
                            "-o", str(tmp_path / "r.html")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["calls_shown"]["unfamiliar"] == 30
    assert "0 of 31" in (tmp_path / "r.html").read_text()


def test_the_overlay_shows_an_unfamiliar_call_as_not_sure_and_says_why():
    from types import SimpleNamespace

    from lgld.runtime import overlay

    def box_colour(state):
        img = np.full((200, 200, 3), 255, np.uint8)
        cell = {"box": [40, 60, 160, 180], "class": "Neutrophil", "confidence": 0.95,
                "state": state, "counted": True}
        overlay._draw_cells(img, SimpleNamespace(cells=[cell]), 1.0, 2)
        return tuple(int(v) for v in img[120, 40])

    assert box_colour("ok") == overlay.CLASS_COLOURS["Neutrophil"]
    assert box_colour("unfamiliar") == overlay.AMBER == box_colour("uncertain")
    count = {"counts": {"Neutrophil": 3, "unclassified": 0}, "total": 3, "target": 100,
             "percent": {"Neutrophil": 100.0, "unclassified": 0.0}, "complete": False}
    frame = np.full((480, 640, 3), 200, np.uint8)

    def strip(domain):
        return overlay._count_strip(frame.copy(), {**count, "domain": domain}, 1.0, 2)[:, 640:]

    plain = strip({"state": FAMILIAR})
    assert np.array_equal(plain, strip(None))
    new = strip({"state": NEW})
    assert (np.abs(new.astype(int) - plain).sum(axis=2) > 0).sum() > 200  # the warning drawn
    assert (np.all(new == overlay.RED, axis=2)).any()
