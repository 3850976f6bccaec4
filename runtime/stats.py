"""Run statistics: the live counters, and ONE snapshot every report is derived from.

The pipeline updates :class:`Stats`; :class:`Snapshot` freezes it (with the model, source,
mode and the latest result) at one moment. The overlay's status bar, ``/api/latest``,
``/metrics``, the systemd STATUS line and the end-of-run summary are all projections of a
snapshot, so they cannot disagree on what a number means.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from lgld.runtime.core.modelinfo import lgld_version
from lgld.runtime.meters import Histogram, RateMeter
from lgld.runtime.results import Result
from lgld.runtime.trust import STATES


@dataclass
class Stats:
    """Counters and rates, updated by the pipeline's threads."""

    started: float = field(default_factory=time.monotonic)
    frames: int = 0
    results: int = 0
    reconnects: int = 0
    camera_ok: bool = True
    camera_message: str = ""
    last_frame_mono: float = 0.0
    last_latency_ms: float = 0.0
    last_e2e_ms: float = 0.0
    camera_fps: RateMeter = field(default_factory=RateMeter)
    inference_fps: RateMeter = field(default_factory=RateMeter)
    latency: Histogram = field(default_factory=Histogram)
    states: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATES, 0))
    classes: dict[str, int] = field(default_factory=dict)

    def uptime(self) -> float:
        return time.monotonic() - self.started

    def snapshot(self, model: str, source: str, mode: str, dropped: int,
                 result: Result | None, cell_count: dict[str, Any] | None = None,
                 calibration: dict[str, Any] | None = None) -> Snapshot:
        """The counters and rates now, with what they are about."""
        return Snapshot(
            model=model, source=source, mode=mode, result=result,
            uptime_s=self.uptime(), frames=self.frames, results=self.results, dropped=dropped,
            camera_fps=self.camera_fps.rate(), inference_fps=self.inference_fps.rate(),
            latency_ms=self.last_latency_ms, e2e_ms=self.last_e2e_ms,
            camera_ok=self.camera_ok, camera_message=self.camera_message,
            reconnects=self.reconnects, states=dict(self.states), classes=dict(self.classes),
            latency=self.latency.cumulative(), cell_count=cell_count,
            calibration=dict(calibration or {}),
        )


@dataclass(frozen=True)
class Snapshot:
    """The state of a run at one moment (raw values; each projection rounds for itself)."""

    model: str
    source: str
    mode: str
    result: Result | None
    uptime_s: float
    frames: int
    results: int
    dropped: int
    camera_fps: float
    inference_fps: float
    latency_ms: float
    e2e_ms: float
    camera_ok: bool
    camera_message: str
    reconnects: int
    states: dict[str, int]
    classes: dict[str, int]
    latency: tuple[list[tuple[str, int]], float, int]  # Histogram.cumulative()
    cell_count: dict[str, Any] | None = None  # cell mode: CountSession.count()
    calibration: dict[str, Any] = field(default_factory=dict)  # CalibrationState.to_dict()

    def counts(self) -> dict[str, Any]:
        """Counts and rates (the ``stats`` object of /api/latest)."""
        return {
            "uptime_s": round(self.uptime_s, 1),
            "frames": self.frames,
            "results": self.results,
            "dropped": self.dropped,
            "camera_fps": round(self.camera_fps, 2),
            "inference_fps": round(self.inference_fps, 2),
            "latency_ms": round(self.latency_ms, 2),
            "e2e_ms": round(self.e2e_ms, 2),
            "camera_ok": self.camera_ok,
            "camera_message": self.camera_message,
            "reconnects": self.reconnects,
            "states": dict(self.states),
            "classes": dict(self.classes),
        }

    def status_line(self) -> str:
        """The systemd STATUS= text."""
        r = self.result
        state = "starting" if r is None else (r.label or r.state)
        if not self.camera_ok:
            state = f"camera lost ({self.camera_message})"
        return f"{self.source}: {state}, {self.inference_fps:.1f} results/s"

    def summary_line(self) -> str:
        """The end-of-run line."""
        return (f"{self.results} results from {self.frames} frames in {self.uptime_s:.1f} s "
                f"({self.dropped} dropped)")

    def prometheus(self) -> str:
        """All metrics in the Prometheus text exposition format (version 0.0.4)."""
        out: list[str] = []

        def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]):
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(f"{name}{labels} {_number(value)}" for labels, value in samples)

        info = (f'{{model="{_label(self.model)}",source="{_label(self.source)}",'
                f'mode="{_label(self.mode)}",version="{_label(lgld_version())}"}}')
        metric("lgld_info", "gauge", "Model, source and mode in use (value is always 1).",
               [(info, 1)])
        metric("lgld_uptime_seconds", "gauge", "Seconds since the pipeline started.",
               [("", round(self.uptime_s, 3))])
        metric("lgld_camera_fps", "gauge", "Frames per second delivered by the source (last 2 s).",
               [("", round(self.camera_fps, 3))])
        metric("lgld_inference_fps", "gauge", "Frames classified per second (last 2 s).",
               [("", round(self.inference_fps, 3))])
        metric("lgld_frames_total", "counter", "Frames captured.", [("", self.frames)])
        metric("lgld_dropped_frames_total", "counter",
               "Frames replaced by a newer one before inference took them.",
               [("", self.dropped)])
        metric("lgld_results_total", "counter", "Results by state.",
               [(f'{{state="{_label(k)}"}}', v) for k, v in self.states.items()])
        if self.cell_count is None:  # cell mode counts cells, not frames: lgld_cells_counted_total
            metric("lgld_class_results_total", "counter", "Confident results by class.",
                   [(f'{{class="{_label(k)}"}}', v) for k, v in self.classes.items()])
        metric("lgld_camera_up", "gauge", "1 while the camera delivers frames, 0 while it is lost.",
               [("", 1 if self.camera_ok else 0)])
        metric("lgld_camera_reconnects_total", "counter", "Successful camera reconnections.",
               [("", self.reconnects)])
        if self.cell_count is not None:
            c = self.cell_count
            metric("lgld_cells_counted_total", "counter",
                   "White cells counted in the current count session, by class.",
                   [(f'{{class="{_label(k)}"}}', v) for k, v in c["counts"].items()])
            metric("lgld_cells_count_target", "gauge", "Cells per differential count.",
                   [("", c["target"])])
            metric("lgld_cells_count_complete", "gauge", "1 when the count reached its target.",
                   [("", 1 if c["complete"] else 0)])
        buckets, total, count = self.latency
        name = "lgld_inference_latency_seconds"
        out.append(f"# HELP {name} Quality check, preprocessing and inference time per frame.")
        out.append(f"# TYPE {name} histogram")
        out += [f'{name}_bucket{{le="{le}"}} {n}' for le, n in buckets]
        out += [f"{name}_sum {total:.6f}", f"{name}_count {count}"]
        return "\n".join(out) + "\n"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:.6g}"
