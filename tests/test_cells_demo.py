"""The demo slide: the differential count equals the known number of unique white cells."""

from __future__ import annotations

from lgld.runtime.cells.slide import SlideScan
from lgld.runtime.cells.stage import CellStage
from lgld.runtime.cells.track import TrackerSettings
from lgld.runtime.core.classifier import OnnxClassifier
from lgld.runtime.core.zoo import resolve_model


def test_demo_count_equals_the_unique_cells_that_crossed_the_field() -> None:
    fps, min_frames = 10.0, 5
    scan = SlideScan((640, 480), fps=fps, speed=320.0, seed=3)
    stage = CellStage(OnnxClassifier(resolve_model("wbc5-128"), threads=1),
                      tracker=TrackerSettings(min_frames=min_frames))
    frames = 100
    # stop where no cell is on the fence: every cell is either clearly counted or not yet seen
    while len(scan.unique_cells(frames, min_frames + 3)) != len(scan.unique_cells(frames, 1)):
        frames += 1
    for i in range(frames):
        stage.process(scan.frame(i), now=i / fps)
    truth = scan.unique_cells(frames, min_frames)
    assert len(truth) >= 6
    assert stage.count.total == len(truth)
    labels = sorted(c.label for c in truth)
    counted = stage.count.counts()
    right = sum(min(counted.get(k, 0), labels.count(k)) for k in set(labels))
    assert right >= 0.6 * len(truth), (counted, labels)
