"""Cell-mode row (``lgld-bench --model wbc5 --cells SECONDS``): detection time per 640x480
frame, and the runtime's real Pipeline in cell mode on frames with 3 white cells each.

The frames are the demo smear with exactly 3 whole cells (``lgld.bench.cellmode``'s
speed frames), delivered by a source paced like a 30 fps camera; every frame goes through the
pipeline's capture thread (detection, crops, preprocessing) and inference thread (one batched
model call, tracking, counting). The model's own batch-of-3 call is timed in the same run.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np

from lgld.bench import BenchError
from lgld.bench.cellmode import three_cell_frames
from lgld.runtime.cells.detect import CellDetector
from lgld.runtime.cells.session import CountSession
from lgld.runtime.cells.stage import CellStage
from lgld.runtime.core.classifier import OnnxClassifier
from lgld.runtime.pipeline import Pipeline, PipelineSettings
from lgld.runtime.sources.base import Frame, Source

CAMERA_FPS = 30.0


class PacedFrames(Source):
    """The given frames in a loop, paced like a camera, for ``seconds``."""

    name = "bench:3-cells"
    live = False

    def __init__(self, frames: list[np.ndarray], seconds: float, fps: float) -> None:
        super().__init__()
        self.frames, self.seconds, self.fps = frames, seconds, fps
        self._start = self._next = 0.0

    def open(self) -> None:
        self._start = self._next = time.monotonic()

    def read(self) -> Frame | None:
        now = time.monotonic()
        if now - self._start > self.seconds:
            return None
        self._next = max(self._next, now - 0.1) + 1 / self.fps
        time.sleep(max(0.0, self._next - now))
        return self._frame(self.frames[self._index % len(self.frames)])


def run_cells(clf: OnnxClassifier, seconds: float, warmup: int, repeats: int) -> dict[str, Any]:
    """Detection ms, the model's batch-of-3 ms and the pipeline's results/s, one run."""
    frames = three_cell_frames()
    detector = CellDetector()
    detect_ms = []
    for _ in range(max(1, repeats // len(frames) + 1)):
        for frame in frames:
            t0 = time.perf_counter()
            detector.detect(frame)
            detect_ms.append((time.perf_counter() - t0) * 1e3)
    stage = CellStage(clf)
    batch = stage.prepare(frames[0]).batch
    if batch is None or len(batch) != 3:
        raise BenchError("the cell-mode frames should hold 3 whole cells")
    for _ in range(warmup):
        clf.predict(batch)
    model_ms = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        clf.predict(batch)
        model_ms.append((time.perf_counter() - t0) * 1e3)
    session = CountSession(CellStage(clf))
    session.start()
    source = PacedFrames(frames, seconds, CAMERA_FPS)
    source.open()
    stamps: list[float] = []
    pipe = Pipeline(source, clf, PipelineSettings(mode="cells"), clf.info.name,
                    [lambda result: stamps.append(time.perf_counter())], session)
    pipe.start()
    pipe.finished.wait(seconds + 30)
    pipe.stop()
    pipe.join(5.0)
    if pipe.failure is not None:
        raise BenchError(f"cell-mode pipeline failed: {pipe.failure}")
    counted = stamps[3:]
    if len(counted) < 3:
        raise BenchError(f"only {len(stamps)} cell-mode results (machine too busy?)")
    rate = (len(counted) - 1) / (counted[-1] - counted[0])
    model = statistics.median(model_ms)
    return {
        "detect_ms_median": statistics.median(detect_ms),
        "model_batch3_ms_median": model,
        "pipeline_results_per_s": rate,
        "pipeline_vs_model": rate * model / 1e3,
        "results": len(stamps),
        "counted_cells": session.count()["total"],
        "camera_fps": CAMERA_FPS,
        "threads": clf.threads,
    }


def format_cells(row: dict[str, Any], name: str) -> str:
    target = "PASS" if row["pipeline_results_per_s"] >= 15 else "FAIL"
    det = "PASS" if row["detect_ms_median"] <= 5 else "FAIL"
    return "\n".join([
        f"cell mode ({name}, {row['threads']} inference thread(s), 3 cells per 640x480 frame, "
        f"camera {row['camera_fps']:g} fps)",
        f"  detection            {row['detect_ms_median']:7.2f} ms per frame   "
        f"[{det}: <= 5 ms]",
        f"  model, 3 crops       {row['model_batch3_ms_median']:7.1f} ms per call "
        f"({1e3 / row['model_batch3_ms_median']:.1f} calls/s)",
        f"  pipeline             {row['pipeline_results_per_s']:7.1f} results/s = "
        f"{row['pipeline_vs_model']:.2f} x the model's own rate   [{target}: >= 15/s]",
    ])
