"""The live pipeline: capture thread -> latest-frame slot -> inference worker -> results.

* The capture thread never waits for inference. It checks each frame's quality, preprocesses
  the frames that pass (:meth:`Pipeline.prepare`) and puts the result into a one-frame slot,
  replacing (and counting as dropped) one the worker has not taken yet. Memory is bounded:
  one frame in the slot, one being classified, the newest one published for display.
* The inference worker always takes the newest prepared frame, runs only the model on it,
  smooths the probabilities and hands the :class:`Result` to the listeners (log, ...). What
  differs between field, roi and cell mode is the mode's stage (:mod:`lgld.runtime.stages`). The
  quality gate and the preprocessing thus run beside inference, not before it, so the
  pipeline's result rate stays close to the model's own (``lgld-bench`` row 4).
* Display and streaming read :class:`FrameHub`, which is updated at camera rate and holds the
  latest frame and the latest result, so a viewer sees every frame with the last result on it.
  Cell mode publishes the classified frames instead, so that each cell's box is drawn on the
  frame it was found in, never on a later one where the stage has moved the cell away.
* Batch sources (a folder of images) use the slot losslessly: each image is classified once.
* A live source that stops delivering (:class:`CameraLost`) is closed and reopened with
  exponential backoff; the outage is reported on stderr, in the overlay, /healthz and /metrics.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lgld.runtime.calibration import CalibrationState
from lgld.runtime.cells.session import CountSession
from lgld.runtime.config import InferenceSection, RunConfig, SourceSection, TrustSection
from lgld.runtime.geometry import Region, crop_region
from lgld.runtime.results import Result
from lgld.runtime.sources import CameraLost, Frame, Source
from lgld.runtime.stages import ClassifyStage, CountStage, Stage
from lgld.runtime.stats import Snapshot, Stats
from lgld.runtime.trust import Quality, assess

log = logging.getLogger("lgld.runtime")


# ---------------------------------------------------------------------------------------------
# The slot between the two threads


class LatestSlot:
    """A one-item buffer. put() replaces an untaken item (counted in ``dropped``) and never
    blocks, unless ``lossless``: then put() waits until the item was taken (batch mode)."""

    def __init__(self, lossless: bool = False) -> None:
        self.lossless = lossless
        self.dropped = 0
        self._item: Any = None
        self._closed = False
        self._cond = threading.Condition()

    def put(self, item: Any) -> bool:
        """Offer an item; False when the slot is closed."""
        with self._cond:
            if self.lossless:
                self._cond.wait_for(lambda: self._item is None or self._closed)
            if self._closed:
                return False
            if self._item is not None:
                self.dropped += 1
            self._item = item
            self._cond.notify_all()
            return True

    def get(self, timeout: float | None = None) -> Any:
        """The newest item (and empty the slot), or None after timeout / when closed and empty."""
        with self._cond:
            self._cond.wait_for(lambda: self._item is not None or self._closed, timeout)
            item, self._item = self._item, None
            self._cond.notify_all()
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def waiting(self) -> bool:
        """An item is in the slot that the worker has not taken yet."""
        return self._item is not None

    def skip(self) -> None:
        """Count an item that was never offered (dropped before its preparation)."""
        with self._cond:
            self.dropped += 1


# ---------------------------------------------------------------------------------------------
# What the capture thread hands to the inference thread


@dataclass
class Prepared:
    """A frame after the quality gate and preprocessing: what the inference worker needs."""

    frame: Frame
    region: Region
    quality: Quality
    payload: Any  # the stage's input for classify (the model input, or cell mode's cells and
    # crops); None when the quality gate rejected the frame
    seconds: float  # time spent on the gate and preprocessing


# ---------------------------------------------------------------------------------------------
# The hub that display and streaming read


class FrameHub:
    """The latest frame (updated at camera rate) and the latest result, with change waits."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.seq = 0
        self.frame: Frame | None = None
        self.result: Result | None = None

    def publish_frame(self, frame: Frame) -> None:
        with self._cond:
            self.frame = frame
            self.seq += 1
            self._cond.notify_all()

    def publish_result(self, result: Result) -> None:
        with self._cond:
            self.result = result

    def latest(self) -> tuple[int, Frame | None, Result | None]:
        with self._cond:
            return self.seq, self.frame, self.result

    def wait_frame(self, after: int, timeout: float) -> tuple[int, Frame | None, Result | None]:
        """Wait (up to timeout) for a frame newer than sequence number ``after``."""
        with self._cond:
            self._cond.wait_for(lambda: self.seq > after, timeout)
            return self.seq, self.frame, self.result

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


# ---------------------------------------------------------------------------------------------
# The pipeline


@dataclass
class PipelineSettings:
    """What the pipeline needs from the configuration (defaults: those of the config)."""

    mode: str = InferenceSection.mode
    field_crop: str = InferenceSection.field_crop
    roi: list[int] = field(default_factory=list)
    roi_size: float = InferenceSection.roi_size
    trust: TrustSection = field(default_factory=TrustSection)
    frames: int = InferenceSection.frames  # stop after this many results (0 = never)
    retry_initial_s: float = SourceSection.retry_initial_s
    retry_max_s: float = SourceSection.retry_max_s

    @classmethod
    def from_config(cls, cfg: RunConfig) -> PipelineSettings:
        i = cfg.inference
        return cls(
            mode=i.mode,
            field_crop=i.field_crop,
            roi=list(i.roi),
            roi_size=i.roi_size,
            trust=cfg.trust,
            frames=i.frames,
            retry_initial_s=cfg.source.retry_initial_s,
            retry_max_s=cfg.source.retry_max_s,
        )


class Pipeline:
    """Runs a source through a classifier on two threads; see the module docstring."""

    def __init__(
        self,
        source: Source,
        classifier: Any,
        settings: PipelineSettings,
        model_name: str = "lgld",
        listeners: list[Callable[[Result], None]] | None = None,
        cells: CountSession | None = None,
        calibration: CalibrationState | None = None,
        stage: Stage | None = None,
    ) -> None:
        self.source = source
        self.cells = cells  # cell mode: detection, tracking and the differential count
        #: the flat-field calibration's state; its flat field corrects frames when ``ok``
        self.calibration = calibration
        self.classifier = classifier
        self.classes: list[str] = list(classifier.classes)
        self.settings = settings
        self.model_name = model_name
        self.listeners = list(listeners or [])
        self.batch = source.batch
        self.slot = LatestSlot(lossless=self.batch)
        #: the mode's per-frame work: cell mode with ``cells``, else field or roi, or any given
        self.stage: Stage = stage or (CountStage(cells) if cells is not None else ClassifyStage(
            classifier, settings.mode, settings.trust, smooth=not self.batch,
            field_crop=settings.field_crop, roi=settings.roi, roi_size=settings.roi_size))
        self.hub = FrameHub()
        self.stats = Stats()
        self.stats.classes = dict.fromkeys(self.classes, 0)
        self.failure: BaseException | None = None
        self.finished = threading.Event()
        self.heartbeat = time.monotonic()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._results = 0

    # -- control -------------------------------------------------------------------------------

    def start(self) -> Pipeline:
        self.stats.started = time.monotonic()
        self._threads = [
            threading.Thread(target=self._capture_loop, name="lgld-capture", daemon=True),
            threading.Thread(target=self._inference_loop, name="lgld-inference", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Ask both threads to end (returns at once; see join)."""
        self._stop.set()
        self.slot.close()
        self.hub.wake()

    def join(self, timeout: float = 5.0) -> bool:
        """Wait for both threads; True when they ended."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def alive(self) -> bool:
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    def region_for(self, shape: tuple[int, ...]) -> Region:
        return self.stage.region(shape)

    def _fail(self, exc: BaseException) -> None:
        if self.failure is None:
            self.failure = exc
        self.stop()

    # -- capture -------------------------------------------------------------------------------

    def _capture_loop(self) -> None:
        delay = self.settings.retry_initial_s
        try:
            while not self._stop.is_set():
                try:
                    frame = self.source.read()
                except CameraLost as exc:
                    if not self.source.live:
                        raise
                    self._reconnect(str(exc), delay)
                    delay = min(delay * 2, self.settings.retry_max_s)
                    continue
                if frame is None:  # a finite source ended
                    break
                delay = self.settings.retry_initial_s
                self.stats.frames += 1
                self.stats.last_frame_mono = frame.mono
                self.stats.camera_fps.tick(frame.mono)
                classified_only = self.stage.shows_classified_frames
                if not classified_only:  # else shown once classified (see below)
                    self.hub.publish_frame(frame)
                elif not self.batch and self.slot.waiting:
                    # cell mode: detection and crops cost ~10 ms; a frame prepared while the
                    # last one still waits would only replace it, so it is not prepared
                    self.slot.skip()
                    continue
                if not self.slot.put(self.prepare(frame)):
                    break
        except Exception as exc:  # SourceError and anything unexpected
            self._fail(exc)
        finally:
            self.slot.close()
            with contextlib.suppress(Exception):
                self.source.close()

    def _reconnect(self, reason: str, delay: float) -> None:
        """Close the lost source, wait, and try to reopen it once."""
        self.stats.camera_ok = False
        self.stats.camera_message = f"{reason}; retrying in {delay:g} s"
        log.warning("camera lost: %s; retrying in %g s", reason, delay)
        with contextlib.suppress(Exception):
            self.source.close()
        if self._stop.wait(delay):
            return
        try:
            self.source.open()
        except Exception as exc:  # stays lost; the next read() raises CameraLost again
            self.stats.camera_message = f"reconnect failed: {str(exc)[:120]}"
            log.warning("camera reconnect failed: %s", exc)
            return
        self.stats.reconnects += 1
        self.stats.camera_ok = True
        self.stats.camera_message = ""
        log.warning("camera %s is back (reconnect #%d)", self.source.name, self.stats.reconnects)

    # -- inference -----------------------------------------------------------------------------

    def _inference_loop(self) -> None:
        try:
            while not self._stop.is_set():
                self.heartbeat = time.monotonic()
                prepared = self.slot.get(timeout=0.2)
                if prepared is None:
                    if self.slot.closed:
                        break
                    continue
                result = self.classify(prepared)
                self.hub.publish_result(result)
                if self.stage.shows_classified_frames:  # boxes on their own frame, not a later
                    self.hub.publish_frame(prepared.frame)
                for listener in self.listeners:
                    listener(result)
                self._results += 1
                if self.settings.frames and self._results >= self.settings.frames:
                    break
        except Exception as exc:
            self._fail(exc)
        finally:
            self.heartbeat = time.monotonic()
            self._stop.set()
            self.slot.close()
            self.hub.wake()
            self.finished.set()

    def prepare(self, frame: Frame) -> Prepared:
        """Quality gate and preprocessing for one frame (runs on the capture thread)."""
        t0 = time.perf_counter()
        region = self.region_for(frame.image.shape)
        crop = crop_region(frame, region, use_lores=self.stage.use_lores)
        cal = self.calibration
        if cal is not None and cal.state == "ok" and cal.calibration is not None:
            crop = cal.calibration.correct(crop, region, frame.image.shape)
        quality, payload = self.stage.prepare(frame, crop, assess(crop, self.settings.trust))
        return Prepared(frame, region, quality, payload, time.perf_counter() - t0)

    def process(self, frame: Frame) -> Result:
        """Quality gate, preprocessing, classification and smoothing of one frame, in sequence."""
        return self.classify(self.prepare(frame))

    def classify(self, prepared: Prepared) -> Result:
        """Classification and smoothing of a prepared frame (runs on the inference thread)."""
        t0 = time.perf_counter()
        frame, quality = prepared.frame, prepared.quality
        outcome = self.stage.classify(frame, quality, prepared.payload)
        state, label = outcome.state, outcome.label
        latency = prepared.seconds + time.perf_counter() - t0
        now = time.monotonic()
        stats = self.stats
        stats.results += 1
        stats.states[state] = stats.states.get(state, 0) + 1
        if label is not None:
            stats.classes[label] = stats.classes.get(label, 0) + 1
        stats.latency.observe(latency)
        stats.inference_fps.tick(now)
        stats.last_latency_ms = latency * 1000
        stats.last_e2e_ms = (now - frame.mono) * 1000
        return Result(
            seq=stats.results,
            frame=frame.index,
            time=frame.time,
            source=self.source.name,
            mode=self.settings.mode,
            model=self.model_name,
            state=state,
            label=label,
            confidence=outcome.confidence,
            probabilities=outcome.probabilities,
            instant=outcome.instant,
            latency_ms=latency * 1000,
            e2e_ms=stats.last_e2e_ms,
            quality=quality,
            region=prepared.region,
            window=self.stage.window,
            name=frame.name,
            cells=outcome.cells,
            session=None if self.cells is None else self.cells.id,
            timing=outcome.timing,
        )

    # -- reporting -----------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """The run's counters, rates and latest result now (see lgld.runtime.stats)."""
        _, _, result = self.hub.latest()
        return self.stats.snapshot(self.model_name, self.source.name, self.settings.mode,
                                   self.slot.dropped, result,
                                   None if self.cells is None else self.cells.count(),
                                   self.calibration.to_dict() if self.calibration else None)
