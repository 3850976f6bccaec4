"""Tracking and the differential count: a cell seen in many frames is counted once."""

from __future__ import annotations

import numpy as np
import pytest

from lgld.runtime.cells.count import DifferentialCount
from lgld.runtime.cells.detect import Detection
from lgld.runtime.cells.track import UNCLASSIFIED, CellTracker, TrackerSettings

CLASSES = ["Basophil", "Eosinophil", "Lymphocyte", "Monocyte", "Neutrophil"]


def _cell(x: float, y: float, d: float = 150.0, partial: bool = False) -> Detection:
    box = (int(x - d / 2), int(y - d / 2), int(x + d / 2), int(y + d / 2))
    return Detection(box, (x, y), d, 0.2 * d * d, partial)


def _probs(k: int, p: float = 0.9) -> np.ndarray:
    row = np.full(len(CLASSES), (1 - p) / (len(CLASSES) - 1), np.float32)
    row[k] = p
    return row


def test_a_cell_crossing_the_field_in_40_frames_is_counted_once() -> None:
    tracker = CellTracker(CLASSES, TrackerSettings(min_frames=5))
    counted = []
    for i in range(40):  # 0.2 frame widths per second at 30 fps
        x = 100 + i * 0.2 * 640 / 30
        update = tracker.update([_cell(x, 240)], _probs(4)[None], 640, i / 30)
        counted += update.counted
        assert len(update.cells) == 1
    assert [c.label for c in counted] == ["Neutrophil"]
    assert counted[0].frames_seen == 5
    assert len({t.id for t in tracker.tracks}) == 1


def test_two_cells_are_two_tracks_and_keep_their_identity() -> None:
    tracker = CellTracker(CLASSES, TrackerSettings(min_frames=3))
    seen: dict[int, set[str | None]] = {}
    for i in range(10):
        dets = [_cell(150 + 5 * i, 200), _cell(450 + 5 * i, 260)]
        for c in tracker.update(dets, np.stack([_probs(2), _probs(3)]), 640, i / 30).cells:
            seen.setdefault(c.track, set()).add(c.label)
    assert sorted(map(sorted, seen.values())) == [["Lymphocyte"], ["Monocyte"]]


def test_a_jump_beyond_the_motion_gate_starts_a_new_track() -> None:
    tracker = CellTracker(CLASSES, TrackerSettings(max_speed=0.5))
    a = tracker.update([_cell(100, 240)], _probs(0)[None], 640, 0.0).cells[0].track
    b = tracker.update([_cell(400, 240)], _probs(0)[None], 640, 1 / 30).cells[0].track
    assert a != b


def test_a_cell_missing_for_a_few_frames_keeps_its_track() -> None:
    tracker = CellTracker(CLASSES, TrackerSettings(max_missed=5))
    first = tracker.update([_cell(100, 240)], _probs(0)[None], 640, 0.0).cells[0].track
    for i in range(1, 4):
        tracker.update([], None, 640, i / 30)
    again = tracker.update([_cell(104, 240)], _probs(0)[None], 640, 4 / 30).cells[0].track
    assert again == first


def test_an_uncertain_track_is_counted_as_unclassified() -> None:
    tracker = CellTracker(CLASSES, TrackerSettings(min_frames=3, min_confidence=0.6))
    counted = []
    for i in range(6):
        update = tracker.update([_cell(300, 240)], _probs(i % 2, 0.5)[None], 640, i / 30)
        counted += update.counted
        assert update.cells[0].state == "uncertain"
    assert [c.label for c in counted] == [UNCLASSIFIED]


def test_partial_frames_are_shown_but_neither_averaged_nor_counted() -> None:
    tracker = CellTracker(CLASSES, TrackerSettings(min_frames=3))
    for i in range(5):
        update = tracker.update([_cell(20, 240, partial=True)], _probs(1)[None], 640, i / 30)
        assert update.cells[0].state == "partial" and not update.counted
    counted = []
    for i in range(5, 9):
        counted += tracker.update([_cell(90, 240)], _probs(1)[None], 640, i / 30).counted
    assert [(c.label, c.frames_seen) for c in counted] == [("Eosinophil", 3)]


def test_the_count_gives_percentages_and_completes_at_its_target() -> None:
    count = DifferentialCount(CLASSES, target=4)
    count.add_all(["Neutrophil", "Neutrophil", "Lymphocyte"])
    state = count.to_dict()
    assert state["total"] == 3 and not state["complete"]
    assert state["percent"]["Neutrophil"] == pytest.approx(66.7)
    count.add("something else")  # unknown labels are unclassified, never lost
    state = count.to_dict()
    assert state["complete"] and state["counts"][UNCLASSIFIED] == 1
    assert sum(state["percent"].values()) == pytest.approx(100, abs=0.2)
    count.reset()
    assert count.total == 0 and not count.complete


def test_settings_reject_nonsense() -> None:
    with pytest.raises(ValueError):
        TrackerSettings(min_frames=0)
    with pytest.raises(ValueError):
        DifferentialCount(CLASSES, target=0)
