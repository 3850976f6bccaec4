"""The pipeline: newest-frame slot, dropping, batch mode, trust (quality gate, smoothing),
camera loss and reconnection."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest
from conftest import ASSETS, CLASSES, FakeClassifier, install_fake_picamera2, sample_image

from lgld.runtime.config import SourceSection, TrustSection
from lgld.runtime.geometry import RegionError, model_region
from lgld.runtime.meters import RateMeter
from lgld.runtime.pipeline import LatestSlot, Pipeline, PipelineSettings
from lgld.runtime.sources import Frame, Source, open_source
from lgld.runtime.trust import Smoother, assess, decide


class ListSource(Source):
    """Frames from a list, at a fixed interval (a fast fake camera)."""

    def __init__(self, images, interval: float = 0.0, batch: bool = False) -> None:
        super().__init__()
        self.images, self.interval, self.batch = list(images), interval, batch
        self.name = "list"
        self.closed = False

    def read(self):
        if self._index >= len(self.images):
            return None
        if self.interval:
            time.sleep(self.interval)
        return self._frame(self.images[self._index], name=f"img{self._index}")

    def close(self):
        self.closed = True


def run_to_end(pipeline: Pipeline, timeout: float = 20.0) -> Pipeline:
    pipeline.start()
    assert pipeline.finished.wait(timeout), "pipeline did not finish"
    assert pipeline.join(5.0)
    return pipeline


# -- slot and meters -----------------------------------------------------------------------------


def test_slot_keeps_the_newest_and_counts_drops():
    slot = LatestSlot()
    for i in range(5):
        assert slot.put(i)
    assert slot.get(0.1) == 4 and slot.dropped == 4
    assert slot.get(0.01) is None
    slot.close()
    assert not slot.put(9)


def test_lossless_slot_blocks_until_taken():
    slot = LatestSlot(lossless=True)
    slot.put(1)
    done = threading.Event()
    threading.Thread(target=lambda: (slot.put(2), done.set()), daemon=True).start()
    assert not done.wait(0.2), "a lossless put must wait while the slot is full"
    assert slot.get(1) == 1 and done.wait(1) and slot.get(1) == 2 and slot.dropped == 0


def test_rate_meter():
    meter = RateMeter(window=2.0)
    for i in range(11):
        meter.tick(100.0 + i * 0.1)
    assert meter.rate(101.0) == pytest.approx(10.0)
    assert meter.rate(110.0) == 0.0


# -- regions -----------------------------------------------------------------------------------


def test_regions():
    assert model_region((720, 1280, 3), "field") == (280, 0, 720, 720)
    assert model_region((720, 1280, 3), "field", "full") == (0, 0, 1280, 720)
    assert model_region((480, 640, 3), "roi", roi_size=0.5) == (200, 120, 240, 240)
    assert model_region((480, 640, 3), "roi", roi=[600, 400, 100, 100]) == (600, 400, 40, 80)
    with pytest.raises(RegionError, match="outside the 640x480 frame"):
        model_region((480, 640, 3), "roi", roi=[700, 10, 50, 50])


# -- dropping --------------------------------------------------------------------------------------


class GatedSource(Source):
    """A fake camera that delivers a frame each time the test releases one."""

    name = "gated"

    def __init__(self, image) -> None:
        super().__init__()
        self.image = image
        self.gate = threading.Semaphore(0)
        self.stop = False

    def read(self):
        while not self.gate.acquire(timeout=0.05):
            if self.stop:
                return None
        return None if self.stop else self._frame(self.image)


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_inference_takes_the_newest_frame_and_counts_the_stale_ones():
    source = GatedSource(sample_image("all-pre"))
    busy, proceed = threading.Event(), threading.Event()

    def on_call():
        busy.set()
        assert proceed.wait(10)

    results = []
    pipeline = Pipeline(source, FakeClassifier(on_call=on_call), PipelineSettings(frames=2),
                        listeners=[results.append])
    pipeline.start()
    source.gate.release()  # frame 0: the worker takes it and is busy with it
    assert busy.wait(10)
    for _ in range(4):  # frames 1-4 arrive meanwhile; capture does not wait for inference
        source.gate.release()
    wait_until(lambda: pipeline.stats.frames == 5)
    assert pipeline.slot.dropped == 3
    proceed.set()
    assert pipeline.finished.wait(10)
    source.stop = True
    assert pipeline.join(5)
    assert [r.frame for r in results] == [0, 4], "frames 1-3 were stale and dropped"
    assert pipeline.snapshot().dropped == 3


def test_slow_inference_keeps_up_with_a_fast_camera_by_dropping():
    source = ListSource([sample_image("all-pre")] * 60, interval=0.004)
    results = []
    pipeline = Pipeline(source, FakeClassifier(delay=0.03),
                        PipelineSettings(trust=TrustSection(window=1)), listeners=[results.append])
    run_to_end(pipeline)
    assert pipeline.stats.frames == 60
    assert 0 < len(results) < 60 and pipeline.slot.dropped > 0
    assert pipeline.slot.dropped + len(results) == 60, "every frame is classified or dropped"
    processed = [r.frame for r in results]
    assert processed == sorted(set(processed))
    assert processed[-1] == 59, "the last frame of the stream must not be lost"
    assert source.closed


def test_gate_and_preprocessing_run_on_the_capture_thread_beside_inference():
    threads: dict[str, set[str]] = {"prepare": set(), "predict": set()}

    class Recorder(FakeClassifier):
        def prepare(self, images):
            threads["prepare"].add(threading.current_thread().name)
            return super().prepare(images)

        def predict(self, batch):
            threads["predict"].add(threading.current_thread().name)
            return super().predict(batch)

    results = []
    pipeline = Pipeline(ListSource([sample_image("all-pre")] * 20, interval=0.002),
                        Recorder(delay=0.005), PipelineSettings(), listeners=[results.append])
    run_to_end(pipeline)
    assert results and all(r.state in ("ok", "uncertain") for r in results)
    assert threads == {"prepare": {"lgld-capture"}, "predict": {"lgld-inference"}}
    assert all(r.latency_ms >= 5.0 for r in results), "latency covers preparation + inference"


def test_batch_source_classifies_every_frame_exactly_once():
    images = [sample_image(n) for n in ("all-benign", "all-early", "all-pre", "all-pro")] * 3
    source = ListSource(images, batch=True)
    results = []
    pipeline = Pipeline(source, FakeClassifier(delay=0.01),
                        PipelineSettings(trust=TrustSection(window=8)), listeners=[results.append])
    run_to_end(pipeline)
    assert [r.name for r in results] == [f"img{i}" for i in range(12)]
    assert pipeline.slot.dropped == 0
    assert all(r.window == 1 for r in results), "batch images are not smoothed together"


def test_frames_limit_stops_after_n_results():
    source = ListSource([sample_image("all-pro")] * 1000, interval=0.002)
    results = []
    pipeline = Pipeline(source, FakeClassifier(), PipelineSettings(frames=7),
                        listeners=[results.append])
    run_to_end(pipeline)
    assert len(results) == 7 and pipeline.failure is None


def test_listener_failure_stops_the_pipeline():
    def broken(result):
        raise OSError("disk on fire")

    pipeline = Pipeline(ListSource([sample_image()] * 500, 0.002), FakeClassifier(),
                        PipelineSettings(), listeners=[broken])
    run_to_end(pipeline)
    assert isinstance(pipeline.failure, OSError)


# -- trust: quality gate and smoothing ------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(ASSETS.glob("*.jpg")), ids=lambda p: p.stem[:14])
def test_focus_gate_accepts_sharp_and_rejects_blurred_real_images(path):
    image = cv2.imread(str(path))
    thresholds = TrustSection()
    big = cv2.resize(image, (720, 720), interpolation=cv2.INTER_CUBIC)  # as a camera would see it
    assert assess(big, thresholds).state == "ok"
    scale = 720 / 224
    blurred = cv2.GaussianBlur(big, (0, 0), 2.5 * scale)
    noise = np.random.default_rng(0).normal(0, 4, blurred.shape)
    noisy = np.clip(blurred + noise, 0, 255).astype(np.uint8)  # sensor noise is not sharpness
    assert assess(blurred, thresholds).state == "out_of_focus"
    assert assess(noisy, thresholds).state == "out_of_focus"


def test_exposure_gate():
    image = sample_image("all-early")
    t = TrustSection()
    assert assess(cv2.convertScaleAbs(image, alpha=0.08), t).state == "too_dark"
    assert assess(cv2.convertScaleAbs(image, alpha=3.0, beta=60), t).state == "too_bright"
    assert assess(image, t).state == "ok"


def test_smoothing_window_and_uncertainty():
    s = Smoother(3)
    assert np.allclose(s.update([1, 0, 0, 0]), [1, 0, 0, 0])
    s.update([0, 1, 0, 0])
    assert np.allclose(s.update([0, 1, 0, 0]), [1 / 3, 2 / 3, 0, 0])
    assert np.allclose(s.update([0, 1, 0, 0]), [0, 1, 0, 0]), "only the last 3 count"
    assert decide(np.array([0.2, 0.7, 0.05, 0.05]), CLASSES, 0.6).label == "Early"
    d = decide(np.array([0.3, 0.4, 0.2, 0.1]), CLASSES, 0.6)
    assert d.state == "uncertain" and d.label is None and d.confidence == pytest.approx(0.4)


def test_pipeline_states_smoothing_and_gate():
    sharp = sample_image("all-benign")
    blurred = cv2.GaussianBlur(sharp, (0, 0), 4)
    images = [sharp, sharp, blurred, sharp]
    clf = FakeClassifier(probs=(0.05, 0.55, 0.3, 0.1))
    source = ListSource(images)
    settings = PipelineSettings(trust=TrustSection(window=4, min_confidence=0.5))
    pipeline = Pipeline(source, clf, settings)
    results = [pipeline.process(source.read()) for _ in images]
    assert [r.state for r in results] == ["ok", "ok", "out_of_focus", "ok"]
    assert results[0].label == "Early" and results[0].confidence == pytest.approx(0.55)
    assert results[2].label is None and results[2].probabilities == {} and clf.calls == 3
    assert results[3].window == 1, "a rejected frame resets the smoothing window"
    record = results[0].to_record()
    assert set(record) >= {"ts", "frame", "source", "mode", "class", "confidence",
                           "probabilities", "state", "latency_ms", "model"}
    assert record["class"] == "Early" and record["probabilities"]["Pre"] == pytest.approx(0.3)
    clf.probs = np.array([0.2, 0.47, 0.2, 0.13], np.float32)
    assert pipeline.process(Frame(sharp, 9, 0.0, time.monotonic())).state == "ok"  # smoothed
    for _ in range(4):
        last = pipeline.process(Frame(sharp, 9, 0.0, time.monotonic()))
    assert last.state == "uncertain" and last.label is None


def test_roi_mode_classifies_the_roi_crop():
    frame_image = np.full((240, 320, 3), 30, np.uint8)
    frame_image[50:150, 100:200] = cv2.resize(sample_image("wbc5-lymph"), (100, 100))
    crops = []

    class Recorder(FakeClassifier):
        def prepare(self, images):
            crops.extend(images)
            return super().prepare(images)

    pipeline = Pipeline(ListSource([frame_image]), Recorder(),
                        PipelineSettings(mode="roi", roi=[100, 50, 100, 100]))
    result = pipeline.process(Frame(frame_image, 0, 0.0, time.monotonic()))
    assert result.region == (100, 50, 100, 100) and result.state == "ok"
    assert crops[0].shape == (100, 100, 3)
    assert np.array_equal(crops[0], frame_image[50:150, 100:200])


def test_a_new_mode_is_a_stage_the_pipeline_runs_without_branches():
    """A stage that counts bright frames: its region, gate, payload and answer are the
    pipeline's result, and its frames are shown only once classified."""
    from lgld.runtime.stages import Outcome

    class BrightStage:
        shows_classified_frames = True
        use_lores = False
        window = 0
        session = None

        def region(self, shape):
            return 0, 0, shape[1] // 2, shape[0]

        def prepare(self, frame, crop, quality):
            return quality, float(crop.mean())

        def classify(self, frame, quality, payload):
            return Outcome("ok", "bright" if payload > 100 else "dark", 1.0,
                           timing={"mean": round(payload, 1)})

    image = np.zeros((40, 60, 3), np.uint8)
    image[:, :30] = 200  # the left half, the stage's region
    pipeline = Pipeline(ListSource([image] * 3, batch=True), FakeClassifier(), PipelineSettings(),
                        stage=BrightStage())
    result = pipeline.process(Frame(image, 0, 0.0, time.monotonic()))
    assert result.region == (0, 0, 30, 40) and result.label == "bright"
    assert result.timing == {"mean": 200.0} and result.window == 0
    run_to_end(pipeline)
    assert pipeline.hub.latest()[1] is not None and pipeline.stats.results == 4


# -- camera loss -----------------------------------------------------------------------------------


def test_lost_camera_is_reopened_with_backoff_and_reported(monkeypatch, caplog):
    cam_cls = install_fake_picamera2(monkeypatch)
    cam_cls.stall_plan = [3, 0, None]  # stalls after 3 frames; first retry stalls too
    cfg = SourceSection(width=160, height=120, lores_width=80, lores_height=60, timeout_s=0.05)
    source = open_source("picamera2", cfg)
    settings = PipelineSettings(frames=8, retry_initial_s=0.02, retry_max_s=0.05)
    pipeline = Pipeline(source, FakeClassifier(), settings)
    run_to_end(pipeline)
    assert pipeline.failure is None and pipeline.stats.results == 8
    assert pipeline.stats.reconnects == 2 and len(cam_cls.instances) == 3
    assert pipeline.stats.camera_ok
    assert "camera lost: picamera2: no frame within 0.05 s" in caplog.text
    assert "is back" in caplog.text
    assert all(not cam.outstanding for cam in cam_cls.instances)
    assert all(cam.closed for cam in cam_cls.instances)
