"""Row 4: the runtime's own live pipeline, measured end to end and stage by stage.

Nothing here re-implements the runtime: the frames come from its demo source, every frame goes
through its ``Pipeline.prepare``/``Pipeline.classify`` and its renderer, and the viewer is its
MJPEG streaming code. Stage times come from thin wrappers that time the real calls.
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

import numpy as np

from lgld.bench import BenchError
from lgld.runtime.config import TrustSection
from lgld.runtime.core.classifier import OnnxClassifier
from lgld.runtime.pipeline import Pipeline, PipelineSettings
from lgld.runtime.render import Renderer
from lgld.runtime.sources.demo import DemoSource
from lgld.runtime.web.mjpeg import stream_mjpeg

FRAME_SIZE = (640, 480)
STAGES = ("capture", "quality gate", "preprocess", "inference", "smoothing", "overlay",
          "JPEG encode")


def bench_settings() -> PipelineSettings:
    """Pipeline settings with the quality gate open, so every frame is classified."""
    return PipelineSettings(
        mode="field",
        trust=TrustSection(min_focus=0.0, dark_level=0, bright_level=255,
                           max_dark_fraction=1.0, max_bright_fraction=1.0),
    )


class TimedClassifier:
    """The runtime's classifier, unchanged, with the duration of its last calls recorded."""

    def __init__(self, clf: OnnxClassifier) -> None:
        self.clf = clf
        self.classes = clf.classes
        self.prepare_s = self.predict_s = 0.0

    def prepare(self, images: Any) -> np.ndarray:
        t0 = time.perf_counter()
        batch = self.clf.prepare(images)
        self.prepare_s = time.perf_counter() - t0
        return batch

    def predict(self, batch: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        probs = self.clf.predict(batch)
        self.predict_s = time.perf_counter() - t0
        return probs


class TimedRenderer(Renderer):
    """The runtime's renderer, unchanged, with the duration of its last overlay recorded."""

    overlay_s = 0.0

    def overlay(self, frame: Any, result: Any) -> np.ndarray:
        t0 = time.perf_counter()
        image = super().overlay(frame, result)
        self.overlay_s = time.perf_counter() - t0
        return image


def pipeline_stages(clf: OnnxClassifier, warmup: int, repeats: int) -> dict[str, list[float]]:
    """Time each stage of one frame through the real pipeline, called in sequence (ms)."""
    source = DemoSource(scene="all", size=FRAME_SIZE, fps=30.0, realtime=False)
    source.open()
    timed = TimedClassifier(clf)
    pipe = Pipeline(source, timed, bench_settings(), clf.info.name)
    renderer = TimedRenderer(pipe)
    stages: dict[str, list[float]] = {name: [] for name in STAGES}
    try:
        for i in range(warmup + repeats):
            t0 = time.perf_counter()
            frame = source.read()
            t1 = time.perf_counter()
            prepared = pipe.prepare(frame)
            t2 = time.perf_counter()
            result = pipe.classify(prepared)
            t3 = time.perf_counter()
            renderer.jpeg(frame, result)
            t4 = time.perf_counter()
            if i < warmup:
                continue
            seconds = (t1 - t0, t2 - t1 - timed.prepare_s, timed.prepare_s, timed.predict_s,
                       t3 - t2 - timed.predict_s, renderer.overlay_s, t4 - t3 - renderer.overlay_s)
            for name, s in zip(STAGES, seconds, strict=True):
                stages[name].append(s * 1e3)
    finally:
        source.close()
    return stages


def run_pipeline(
    clf: OnnxClassifier, seconds: float, camera_fps: float, warmup_results: int = 5
) -> dict[str, Any]:
    """Run the real Pipeline on the demo source plus one MJPEG viewer; results per second."""
    source = DemoSource(scene="all", size=FRAME_SIZE, fps=camera_fps, realtime=True)
    source.open()
    stamps: list[float] = []
    latencies: list[float] = []

    def on_result(result: Any) -> None:
        stamps.append(time.perf_counter())
        latencies.append(result.latency_ms)

    pipe = Pipeline(source, clf, bench_settings(), clf.info.name, [on_result])
    renderer = Renderer(pipe)
    stop = threading.Event()
    sent = [0]

    def viewer() -> None:  # one /stream.mjpg client, through the runtime's own streaming code
        sent[0] = stream_mjpeg(lambda part: None, pipe, renderer, stop)  # lgld-run's fps cap

    thread = threading.Thread(target=viewer, name="lgld-bench-viewer", daemon=True)
    t0 = time.perf_counter()
    pipe.start()
    thread.start()
    # at least `seconds` and enough results for a median, but never more than 5 x `seconds`
    deadline, hard = t0 + seconds, t0 + 5 * seconds
    while not pipe.finished.is_set():
        now = time.perf_counter()
        if now >= hard or (now >= deadline and len(stamps) >= warmup_results + 10):
            break
        time.sleep(0.05)
    stop.set()
    pipe.stop()
    pipe.join(5.0)
    thread.join(2.0)
    elapsed = time.perf_counter() - t0
    if pipe.failure is not None:
        raise BenchError(f"pipeline failed: {pipe.failure}")
    counted = stamps[warmup_results:]
    if len(counted) < 3:
        raise BenchError(f"only {len(stamps)} results in {elapsed:.0f} s (machine too busy?); "
                         "use a longer --pipeline-seconds")
    intervals = [(b - a) * 1e3 for a, b in zip(counted, counted[1:], strict=False)]
    return {
        "intervals_ms": intervals,
        "throughput_fps": (len(counted) - 1) / (counted[-1] - counted[0]),
        "results": len(stamps),
        "frames": pipe.stats.frames,
        "dropped": pipe.slot.dropped,
        "camera_fps_requested": camera_fps,
        "camera_fps": pipe.stats.frames / elapsed,
        "stream_fps": sent[0] / elapsed,
        "latency_ms_median": statistics.median(latencies[warmup_results:]),
        "seconds": elapsed,
    }
