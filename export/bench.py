"""``lgld-bench``: how fast is lgld, measured against the paper's implementation in one run.

For every thread count asked for, one table, all rows measured in the same process on the same
machine, batch 1, with the same thread count for every row:

1. the reference: the paper-style eager PyTorch LGLD-Net (``nn.Unfold`` involution, positional
   channels recomputed per call; :mod:`lgld.export.reference`), with the same weights as row 2;
2. lgld's PyTorch model, eager;
3. lgld's ONNX model through the runtime's own ``OnnxClassifier`` (and its INT8 version, if
   one is given or lies next to the model);
4. the end-to-end live pipeline: the runtime's demo source at 640x480, its ``Pipeline``
   (capture thread: capture, quality gate, preprocessing; inference thread: inference,
   smoothing) and one MJPEG viewer
   (overlay + JPEG encode at <= 30 fps), in results per second; plus the time per stage with
   every stage called in sequence;
5. the machine's fp32 multiply-add peak (SGEMM, :mod:`lgld.export.peak`) and each row's
   achieved GMAC/s as a fraction of it.

Model rows 1-3 are timed interleaved (one call of each row per round) after a warm-up, so a
change in background load hits every row alike and the ratios stay meaningful on a busy
machine. torch is optional: without it (e.g. on a Raspberry Pi) rows 1-2 are skipped with a
note. ``--profile`` adds an ONNX Runtime profile by op type; ``--study`` exports and times the
paper-style model and each of lgld's export rewrites in turn; ``--rss-frames N`` runs the real
``lgld-run --source demo --frames N`` and watches its resident memory; ``--menu`` times models
at several input sizes with their validation accuracy (:mod:`lgld.export.menu`).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort

from lgld.export import ExportError
from lgld.export.measure import (
    in_fresh_process,
    median_ci,
    onnx_macs,
    percentile,
    sample_images,
    time_interleaved,
)
from lgld.export.menu import (
    MenuError,
    format_menu,
    parse_menu,
    run_menu,
    run_menu_isolated,
)
from lgld.runtime.core.cliutil import run_cli
from lgld.runtime.core.modelinfo import ModelInfo
from lgld.runtime.core.preprocess import preprocess
from lgld.runtime.core.session import OnnxClassifier, default_threads, session_options

PROG = "lgld-bench"
ATOL = 1e-4  # max |logit difference| for "outputs unchanged"
SPEEDUP_TARGET = 3.0  # row 1 / row 3
PIPELINE_TARGET = 0.90  # pipeline FPS / model-only FPS
RSS_LIMIT_MB = 250.0
RSS_FLAT_MB = 5.0  # steady-state growth allowed over the whole run
FRAME_SIZE = (640, 480)
STREAM_MAX_FPS = 30.0  # one MJPEG viewer, capped like lgld-run's http.stream_max_fps default
MAX_CAMERA_FPS = 120.0


class BenchError(RuntimeError):
    """A benchmark input is unusable (one-line reason)."""


# ---------------------------------------------------------------------------------------------
# Timing


@dataclass
class Row:
    """One line of the table."""

    id: str
    key: str
    name: str
    samples_ms: list[float] = field(default_factory=list)
    note: str = ""
    skipped: bool = False
    gmacs: float | None = None  # achieved GMAC/s (peak row: the peak)

    @property
    def median_ms(self) -> float | None:
        return statistics.median(self.samples_ms) if self.samples_ms else None

    @property
    def p90_ms(self) -> float | None:
        return percentile(self.samples_ms, 90) if self.samples_ms else None

    @property
    def fps(self) -> float | None:
        return 1000.0 / self.median_ms if self.median_ms else None


# ---------------------------------------------------------------------------------------------
# Machine


def machine_info() -> dict[str, Any]:
    """CPU model, cores, load and library versions (recorded with every result)."""
    cpu, flags = platform.processor() or platform.machine(), []
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("model name", "hardware", "model") and value.strip():
                cpu = value.strip()
            if key in ("flags", "features") and not flags:
                wanted = {"avx2", "fma", "avx512f", "asimd", "fphp", "asimddp", "neon"}
                flags = sorted(set(value.split()) & wanted)
    except OSError:
        pass
    board = Path("/sys/firmware/devicetree/base/model")
    info: dict[str, Any] = {
        "cpu": cpu,
        "board": board.read_text().strip("\x00\n") if board.is_file() else None,
        "cpu_flags": flags,
        "logical_cores": os.cpu_count(),
        "machine": platform.machine(),
        "system": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": ort.__version__,
        "opencv": cv2.__version__,
        "torch": None,
        "loadavg_start": _loadavg(),
    }
    torch = _torch()
    if torch is not None:
        info["torch"] = torch.__version__
    return info


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _torch() -> Any | None:
    """torch and lgld.models, or None when torch is not installed (the Pi runtime)."""
    try:
        import torch

        import lgld.models.lgld_net  # noqa: F401 - needs torch too
    except ImportError:
        return None
    return torch


# ---------------------------------------------------------------------------------------------
# Models: the timed ONNX file and the PyTorch models with the same weights


@dataclass
class Models:
    onnx_path: Path  # timed in row 3
    info: ModelInfo
    input_size: int
    torch_model: Any = None  # LGLDNet, eval mode
    reference: Any = None  # ReferenceLGLDNet, same weights
    parity_onnx: Path | None = None  # ONNX with torch_model's weights, for the output check
    int8_path: Path | None = None
    weights: str = ""
    macs: int | None = None
    macs_source: str = "unknown"
    notes: list[str] = field(default_factory=list)


def resolve_model_path(spec: str) -> Path:
    """``all``/``wbc5``/a path, resolved exactly as lgld-run resolves ``--model``."""
    try:
        from lgld.runtime.core.zoo import resolve_model
    except ImportError:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise BenchError(f"model not found: {path} (the runtime's zoo resolution is not "
                             "available; pass --model PATH)") from None
        return path
    return resolve_model(spec)


def find_int8(onnx_path: Path, explicit: str | None) -> Path | None:
    """The INT8 model: --int8 PATH, else <stem>.int8.onnx / -int8 / _int8 next to the model."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise BenchError(f"INT8 model not found: {path}")
        return path
    for suffix in (".int8.onnx", "-int8.onnx", "_int8.onnx"):
        candidate = onnx_path.with_name(onnx_path.stem + suffix)
        if candidate.is_file():
            return candidate
    return None


def _export(model: Any, info: ModelInfo, size: int, out: Path) -> Path:
    from lgld.export.onnx_export import export_model

    spec = replace(info.preprocess, input_size=size)
    export_model(model, info.classes, spec, out, name=info.name)
    return out


def _export_size(m: Models, size: int, tmp: Path) -> tuple[Path, int]:
    """m's PyTorch weights exported at ``size`` px; (path, MACs at that size)."""
    from lgld.models.macs import count_macs

    model = copy.deepcopy(m.torch_model)
    model.set_input_size(size)
    return _export(model, m.info, size, tmp / f"menu-{size}.onnx"), count_macs(model).total


def prepare_models(args: argparse.Namespace, tmp: Path) -> Models:
    """Resolve the model, find matching weights and build what every row needs."""
    torch = _torch()
    path = resolve_model_path(args.model)
    notes: list[str] = []
    if path.suffix == ".pt":
        if torch is None:
            raise BenchError(f"{path} is a PyTorch checkpoint: that needs torch (lgld[train])")
        from lgld.export.onnx_export import export_checkpoint

        exported = tmp / f"{path.stem}.onnx"
        export_checkpoint(path, exported)
        ckpt_path, onnx_path = path, exported
    else:
        ckpt_path, onnx_path = None, path
    clf = OnnxClassifier(onnx_path, threads=1)
    info = clf.info
    size = args.input_size or info.input_size
    m = Models(onnx_path=onnx_path, info=info, input_size=size)
    m.int8_path = find_int8(path, args.int8) if args.int8 or path.suffix == ".onnx" else None
    if torch is None:
        if size != info.input_size:
            raise BenchError(
                f"--input-size {size} differs from the model's {info.input_size} px and needs "
                "torch + onnx to re-export (pip install 'lgld[train]'), or pass a model "
                f"exported at {size} px"
            )
        notes.append("rows 1-2 skipped: torch is not installed (the runtime needs none)")
        m.weights = "n/a (no torch)"
        m.macs, m.macs_source = onnx_macs(clf)
        m.notes = notes
        return m

    from lgld.export.reference import reference_like
    from lgld.models.checkpoint import CheckpointError, file_sha256, load_checkpoint
    from lgld.models.lgld_net import LGLDNet, ModelConfig
    from lgld.models.macs import count_macs

    weights_match_onnx = False
    if ckpt_path is None:
        candidate = Path(args.checkpoint) if args.checkpoint else path.with_suffix(".pt")
        if candidate.is_file():
            sha = file_sha256(candidate)
            if info.checkpoint_sha256 and sha != info.checkpoint_sha256:
                message = (f"checkpoint {candidate} does not match the model (sha256 "
                           f"{sha[:12]} != metadata {info.checkpoint_sha256[:12]})")
                if args.checkpoint:
                    raise BenchError(message)
                notes.append(message + "; not used")
            else:
                ckpt_path = candidate
                weights_match_onnx = bool(info.checkpoint_sha256)
        elif args.checkpoint:
            raise BenchError(f"checkpoint not found: {candidate}")
    else:
        weights_match_onnx = True
        if size == info.input_size:
            notes.append(f"row 3 is a temporary export of {path}")
    if ckpt_path is not None:
        try:
            ckpt = load_checkpoint(ckpt_path, expect_classes=info.classes)
        except CheckpointError as exc:
            raise BenchError(str(exc)) from None
        model = ckpt.build_model()
        verified = ("row 3 exported from it in this run" if path.suffix == ".pt" else
                    "sha256 verified" if weights_match_onnx else "no sha256 in the model to check")
        m.weights = f"checkpoint {ckpt_path} ({verified})"
    else:
        torch.manual_seed(0)
        config = ModelConfig(num_classes=len(info.classes), input_size=info.input_size,
                             variant=info.variant)
        model = LGLDNet(config).eval()
        m.weights = "random (no checkpoint next to the model)"
        notes.append(
            "rows 1-2 use random weights with the model's config (classes, input size, variant, "
            "base width 64): latency does not depend on weight values"
        )
    if size != model.config.input_size:
        model.set_input_size(size)
    m.torch_model = model.eval()
    m.reference = reference_like(m.torch_model)
    m.macs, m.macs_source = count_macs(m.torch_model).total, "lgld.models.macs.count_macs"

    try:
        if size != info.input_size:
            m.onnx_path = _export(m.torch_model, info, size, tmp / f"model-{size}.onnx")
            m.parity_onnx = m.onnx_path
            m.int8_path = None
            notes.append(f"row 3 is a temporary export at {size} px of the same weights")
        elif weights_match_onnx:
            m.parity_onnx = m.onnx_path
        else:
            m.parity_onnx = _export(m.torch_model, info, size, tmp / "parity.onnx")
            notes.append("outputs checked on a temporary export of the same weights as rows "
                         "1-2; row 3 times the given model")
    except ImportError as exc:
        if size != info.input_size:
            raise BenchError(f"--input-size {size} needs lgld.export (onnx, onnxsim): "
                             f"{exc}") from None
        notes.append(f"output check skipped: lgld.export unavailable ({exc})")
    m.notes = notes
    return m


# ---------------------------------------------------------------------------------------------
# Output check (ONNX Runtime vs PyTorch, same weights, same inputs)


def check_outputs(m: Models, threads: int) -> dict[str, Any]:
    """Max |logit diff| of the parity ONNX vs lgld eager and vs the reference, per image."""
    if m.torch_model is None or m.parity_onnx is None:
        return {"checked": False, "reason": "needs torch and an ONNX file with the same weights"}
    torch = _torch()
    clf = OnnxClassifier(m.parity_onnx, threads=threads)
    spec = replace(clf.info.preprocess, input_size=m.input_size)
    diffs_lgld, diffs_ref, top1 = [], [], 0
    for image in sample_images(m.input_size):
        x = preprocess(image, spec)
        onnx_logits = clf.logits(x)
        with torch.inference_mode():
            ours = m.torch_model(torch.from_numpy(x)).numpy()
            ref = m.reference(torch.from_numpy(x)).numpy()
        diffs_lgld.append(float(np.abs(onnx_logits - ours).max()))
        diffs_ref.append(float(np.abs(onnx_logits - ref).max()))
        top1 += int(onnx_logits.argmax() == ref.argmax())
    worst = max(max(diffs_lgld), max(diffs_ref))
    return {
        "checked": True,
        "onnx": str(m.parity_onnx),
        "images": len(diffs_lgld),
        "max_abs_diff_vs_lgld_torch": max(diffs_lgld),
        "max_abs_diff_vs_reference": max(diffs_ref),
        "top1_identical": top1,
        "ok": worst <= ATOL and top1 == len(diffs_ref),
    }


# ---------------------------------------------------------------------------------------------
# The pipeline (row 4)


def _bench_settings() -> Any:
    """Pipeline settings with the quality gate open, so every frame is classified."""
    from lgld.runtime.config import TrustSection
    from lgld.runtime.pipeline import PipelineSettings

    return PipelineSettings(
        mode="field",
        trust=TrustSection(min_focus=0.0, dark_level=0, bright_level=255,
                           max_dark_fraction=1.0, max_bright_fraction=1.0),
    )


def pipeline_stages(clf: OnnxClassifier, warmup: int, repeats: int) -> dict[str, list[float]]:
    """Time each stage of one frame by calling the runtime's components in sequence (ms)."""
    from lgld.runtime.core.session import softmax
    from lgld.runtime.geometry import crop_region
    from lgld.runtime.pipeline import Pipeline
    from lgld.runtime.render import Renderer
    from lgld.runtime.sources.demo import DemoSource
    from lgld.runtime.trust import Smoother, assess, decide

    source = DemoSource(scene="all", size=FRAME_SIZE, fps=30.0, realtime=False)
    source.open()
    settings = _bench_settings()
    pipe = Pipeline(source, clf, settings, clf.info.name)
    renderer = Renderer(pipe)
    smoother = Smoother(settings.trust.window)
    result = pipe.process(source.read())  # a real result to draw
    names = ("capture", "quality gate", "preprocess", "inference", "smoothing", "overlay",
             "JPEG encode")
    stages: dict[str, list[float]] = {name: [] for name in names}
    quality = [cv2.IMWRITE_JPEG_QUALITY, renderer.jpeg_quality]
    try:
        for i in range(warmup + repeats):
            t = [time.perf_counter()]
            frame = source.read()
            t.append(time.perf_counter())
            region = pipe.region_for(frame.image.shape)
            crop = crop_region(frame, region, use_lores=True)
            assess(crop, settings.trust)
            t.append(time.perf_counter())
            x = preprocess(crop, clf.info.preprocess)
            t.append(time.perf_counter())
            logits = clf.logits(x)
            t.append(time.perf_counter())
            decide(smoother.update(softmax(logits)[0]), clf.classes, settings.trust.min_confidence)
            t.append(time.perf_counter())
            image = renderer.overlay(frame, result)
            t.append(time.perf_counter())
            ok, _ = cv2.imencode(".jpg", image, quality)
            t.append(time.perf_counter())
            if i >= warmup:
                for name, a, b in zip(names, t, t[1:], strict=False):
                    stages[name].append((b - a) * 1e3)
    finally:
        source.close()
    return stages


def run_pipeline(
    clf: OnnxClassifier, seconds: float, camera_fps: float, warmup_results: int = 5
) -> dict[str, Any]:
    """Run the real Pipeline on the demo source plus one MJPEG viewer; results per second."""
    from lgld.runtime.pipeline import Pipeline
    from lgld.runtime.render import Renderer
    from lgld.runtime.sources.demo import DemoSource

    source = DemoSource(scene="all", size=FRAME_SIZE, fps=camera_fps, realtime=True)
    source.open()
    stamps: list[float] = []
    latencies: list[float] = []

    def on_result(result: Any) -> None:
        stamps.append(time.perf_counter())
        latencies.append(result.latency_ms)

    pipe = Pipeline(source, clf, _bench_settings(), clf.info.name, [on_result])
    renderer = Renderer(pipe)
    stop = threading.Event()
    sent = [0]

    def viewer() -> None:  # what one /stream.mjpg client costs
        seq, last = 0, 0.0
        while not stop.is_set():
            seq, frame, result = pipe.hub.wait_frame(seq, timeout=0.5)
            if frame is None:
                continue
            wait = last + 1.0 / STREAM_MAX_FPS - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            renderer.jpeg(frame, result)
            sent[0] += 1
            last = time.monotonic()

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


# ---------------------------------------------------------------------------------------------
# ONNX Runtime profile by op type


def aggregate_profile(events: list[dict], skip_runs: int = 0) -> dict[str, Any]:
    """Sum ONNX Runtime node kernel times by op type, ignoring the first ``skip_runs`` runs."""
    runs = sorted(e["ts"] for e in events if e.get("cat") == "Session"
                  and e.get("name") == "model_run")
    start = runs[skip_runs] if len(runs) > skip_runs else 0
    counted = max(1, len(runs) - skip_runs)
    totals: dict[str, list[float]] = {}
    for e in events:
        if e.get("cat") != "Node" or e.get("ts", 0) < start:
            continue
        if not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        op = e.get("args", {}).get("op_name", "?")
        entry = totals.setdefault(op, [0.0, 0])
        entry[0] += float(e.get("dur", 0))
        entry[1] += 1
    total_us = sum(v[0] for v in totals.values()) or 1.0
    ops = [
        {"op": op, "ms_per_run": us / counted / 1e3, "share": us / total_us,
         "nodes_per_run": n / counted}
        for op, (us, n) in sorted(totals.items(), key=lambda kv: -kv[1][0])
    ]
    return {"runs": counted, "kernel_ms_per_run": total_us / counted / 1e3, "ops": ops}


def profile_onnx(path: Path, threads: int, runs: int, warmup: int, tmp: Path) -> dict[str, Any]:
    """Run ``path`` with ONNX Runtime profiling on and aggregate the profile by op type."""
    so = session_options(threads)
    so.enable_profiling = True
    so.profile_file_prefix = str(tmp / f"ort-profile-{path.stem}")
    sess = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    for _ in range(warmup + runs):
        sess.run(None, {inp.name: x})
    prof = Path(sess.end_profiling())
    try:
        report = aggregate_profile(json.loads(prof.read_text()), skip_runs=warmup)
    finally:
        prof.unlink(missing_ok=True)
    report["model"] = str(path)
    report["threads"] = threads
    return report


def format_profile(report: dict[str, Any], title: str) -> str:
    lines = [f"{title}: {report['kernel_ms_per_run']:.2f} ms of kernels per run "
             f"({report['runs']} runs, {report['threads']} threads)",
             f"  {'op':<22}{'ms/run':>9}{'share':>8}{'nodes':>7}"]
    for op in report["ops"]:
        lines.append(f"  {op['op']:<22}{op['ms_per_run']:>9.2f}{100 * op['share']:>7.1f}%"
                     f"{op['nodes_per_run']:>7.0f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The study: what each export step buys (needs torch, onnx, onnxsim)


def study_forms(model: Any, reference: Any) -> list[tuple[str, Any, bool]]:
    """(label, torch module, simplify) from the paper-style export to lgld's full export form."""
    from torch import nn

    from lgld.export import rewrites as rw
    from lgld.models.lgld_net import GCE

    def form(**blocks: Any) -> nn.Module:
        parts = {
            "local_stem": copy.deepcopy(model.local_stem),
            "global_stem": copy.deepcopy(model.global_stem),
            "lfa": copy.deepcopy(model.lfa),
            "gce": copy.deepcopy(model.gce),
            "lgfm": copy.deepcopy(model.lgfm),
            "head": copy.deepcopy(model.head),
        }
        parts.update(blocks)
        return rw.ExportLGLDNet(model.config, **parts).eval()

    steps: dict[str, Any] = {}
    forms = [
        ("reference (Unfold, sin/cos per call), plain torch.onnx export", reference, False),
        ("reference, + onnxsim", reference, True),
        ("lgld model as written (shifted slices, cached positions), + onnxsim", model, True),
    ]
    for label, key, build in (
        ("+ head BN folded", "head", lambda: rw.export_head(model.head)),
        ("+ stem BN folded, involution kernel generator merged", "local_stem",
         lambda: rw.export_ips(model.local_stem)),
        ("+ FFM positions/scales/BN folded into conv + bias", "global_stem",
         lambda: rw.export_ffm(model.global_stem)),
        ("+ GCE 1x1 compress merged into dilated convs", "gce",
         lambda: rw.export_gce(model.gce) if isinstance(model.gce, GCE) else nn.Identity()),
        ("+ LGFM softmax as sigmoid gate (= lgld-export)", "lgfm",
         lambda: rw.export_lgfm(model.lgfm)),
    ):
        steps[key] = build()
        forms.append((label, form(**steps), True))
    return forms


def run_study(m: Models, threads: int, warmup: int, repeats: int, tmp: Path) -> dict[str, Any]:
    """Export every study form, check its outputs, and time all of them interleaved."""
    import onnx
    import torch

    from lgld.export.onnx_export import DEFAULT_OPSET, simplify, torch_to_onnx
    from lgld.export.verify import op_histogram

    torch.set_num_threads(threads)
    x = preprocess(sample_images(m.input_size)[0],
                   replace(m.info.preprocess, input_size=m.input_size))
    with torch.inference_mode():
        expected = m.torch_model(torch.from_numpy(x)).numpy()
    entries, fns = [], {}
    for i, (label, module, simplify_graph) in enumerate(study_forms(m.torch_model, m.reference)):
        graph = torch_to_onnx(module, m.input_size, DEFAULT_OPSET, False)
        if simplify_graph:
            with quiet_stderr():  # onnxsim's C++ warns about the ops it cannot fold
                graph = simplify(graph)
        path = tmp / f"study-{i}.onnx"
        onnx.save(graph, str(path))
        sess = ort.InferenceSession(str(path), sess_options=session_options(threads),
                                    providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        diff = float(np.abs(sess.run(None, {name: x})[0] - expected).max())
        hist = op_histogram(graph)
        entries.append({"label": label, "path": str(path), "nodes": sum(hist.values()),
                        "ops": hist, "max_abs_diff": diff})
        fns[str(i)] = (lambda s=sess, n=name: s.run(None, {n: x}))
    samples = time_interleaved(fns, warmup, repeats)
    for i, entry in enumerate(entries):
        entry["median_ms"] = statistics.median(samples[str(i)])
        entry["p90_ms"] = percentile(samples[str(i)], 90)
    base = entries[0]["median_ms"]
    for entry in entries:
        entry["speedup_vs_plain_reference"] = base / entry["median_ms"]
    return {"threads": threads, "forms": entries}


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (native libraries' warnings) for the duration."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def format_study(study: dict[str, Any]) -> str:
    lines = [f"export study ({study['threads']} threads; ONNX Runtime, same session options as "
             "the runtime; speed-up vs the first line)",
             f"  {'form':<72}{'nodes':>6}{'median':>9}{'p90':>9}{'x':>7}{'|diff|':>9}"]
    for e in study["forms"]:
        lines.append(f"  {e['label'][:71]:<72}{e['nodes']:>6}{e['median_ms']:>9.2f}"
                     f"{e['p90_ms']:>9.2f}{e['speedup_vs_plain_reference']:>7.2f}"
                     f"{e['max_abs_diff']:>9.1e}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Resident memory of the real lgld-run


def read_rss_mb(pid: int) -> float | None:
    """VmRSS of a process in MB (from /proc), or None when it has gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_check(model: Path, frames: int, threads: int, interval: float = 0.5) -> dict[str, Any]:
    """Run ``lgld-run --source demo --frames N`` and sample its resident memory."""
    if not Path("/proc/self/status").is_file():
        raise BenchError("--rss-frames needs /proc (Linux)")
    cmd = [sys.executable, "-m", "lgld.runtime.cli", "--source", "demo", "--frames",
           str(frames), "--model", str(model), "--threads", str(threads), "--preview", "off"]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    samples: list[tuple[float, float]] = []
    while proc.poll() is None:
        rss = read_rss_mb(proc.pid)
        if rss is not None:
            samples.append((time.monotonic() - t0, rss))
        time.sleep(interval)
    err = proc.stderr.read() if proc.stderr else ""
    if proc.returncode != 0:
        last = (err.strip().splitlines() or ["no message"])[-1]
        raise BenchError(f"lgld-run exited with {proc.returncode}: {last[:200]}")
    return summarize_rss(samples, frames, " ".join(cmd[3:]))


def summarize_rss(samples: list[tuple[float, float]], frames: int, command: str) -> dict:
    """Start/end/max and the least-squares slope of the steady state (after the first 20%)."""
    if len(samples) < 5:
        raise BenchError(f"lgld-run ended after {len(samples)} memory samples; use more frames")
    steady = samples[len(samples) // 5:]
    t = np.array([s[0] for s in steady])
    r = np.array([s[1] for s in steady])
    slope = float(np.polyfit(t, r, 1)[0]) if np.ptp(t) > 0 else 0.0  # MB per second
    growth = slope * float(np.ptp(t))
    peak = max(s[1] for s in steady)
    return {
        "command": f"lgld-run {command}",
        "frames": frames,
        "seconds": samples[-1][0],
        "samples": len(samples),
        "start_mb": steady[0][1],
        "end_mb": steady[-1][1],
        "max_mb": peak,
        "max_mb_overall": max(s[1] for s in samples),
        "slope_mb_per_min": slope * 60,
        "steady_growth_mb": growth,
        "under_limit": peak < RSS_LIMIT_MB,
        "flat": abs(growth) <= RSS_FLAT_MB,
    }


# ---------------------------------------------------------------------------------------------
# One table


def run_table(m: Models, threads: int, args: argparse.Namespace) -> dict[str, Any]:
    """Every row at one thread count."""
    torch = _torch() if m.torch_model is not None else None
    rows = [
        Row("1", "reference", "reference: paper-style PyTorch eager"),
        Row("2", "torch", "lgld PyTorch eager"),
        Row("3", "onnx", "lgld ONNX fp32 (runtime session)"),
    ]
    if m.int8_path is not None:
        rows.append(Row("3i", "int8", "lgld ONNX INT8 (runtime session)"))
    rows += [Row("4", "pipeline", f"pipeline: demo {FRAME_SIZE[0]}x{FRAME_SIZE[1]}, per result"),
             Row("5", "peak", "SGEMM fp32 peak")]
    by_key = {r.key: r for r in rows}
    clf = OnnxClassifier(m.onnx_path, threads=threads)
    x = preprocess(sample_images(m.input_size)[0], clf.info.preprocess)
    fns: dict[str, Callable[[], Any]] = {}
    if torch is not None:
        torch.set_num_threads(threads)
        xt = torch.from_numpy(x)

        def eager(model: Any) -> Callable[[], Any]:
            def call() -> Any:
                with torch.inference_mode():
                    return model(xt)
            return call

        fns["reference"], fns["torch"] = eager(m.reference), eager(m.torch_model)
    else:
        for key in ("reference", "torch"):
            by_key[key].skipped, by_key[key].note = True, "skipped: torch is not installed"
    fns["onnx"] = lambda: clf.logits(x)
    if m.int8_path is not None:
        int8 = OnnxClassifier(m.int8_path, threads=threads)
        x8 = preprocess(sample_images(m.input_size)[0], int8.info.preprocess)
        fns["int8"] = lambda: int8.logits(x8)
        by_key["int8"].note = f"{m.int8_path.name} ({int8.info.quantization})"
    for key, samples in time_interleaved(fns, args.warmup, args.repeats).items():
        by_key[key].samples_ms = samples
    model_fps = by_key["onnx"].fps or 0.0

    stages: dict[str, Any] = {}
    pipe = by_key["pipeline"]
    if args.pipeline_seconds > 0:
        stage_samples = pipeline_stages(clf, args.warmup, args.repeats)
        stages = {name: {"median_ms": statistics.median(v), "p90_ms": percentile(v, 90)}
                  for name, v in stage_samples.items()}
        seq_ms = sum(s["median_ms"] for s in stages.values())
        camera = args.camera_fps or min(MAX_CAMERA_FPS, max(30.0, 1.25 * model_fps))
        stages_info = {"stages": stages, "sequential_ms": seq_ms,
                       "sequential_fps": 1000.0 / seq_ms, "live": None}
        try:
            live = run_pipeline(clf, args.pipeline_seconds, camera)
        except BenchError as exc:
            pipe.skipped, pipe.note = True, f"failed: {exc}"
        else:
            pipe.samples_ms = live.pop("intervals_ms")
            pipe.note = (f"{live['throughput_fps']:.1f} results/s sustained; camera "
                         f"{live['camera_fps']:.1f} fps, stream {live['stream_fps']:.1f} fps, "
                         f"{live['dropped']} frames dropped")
            stages_info["live"] = live
    else:
        pipe.skipped, pipe.note = True, "skipped (--pipeline-seconds 0)"
        stages_info = {}

    peak_info: dict[str, Any] | None = None
    peak_row = by_key["peak"]
    if args.peak_size > 0:
        from lgld.export.peak import PeakError, measure_peak

        try:
            peak = measure_peak(threads, n=args.peak_size)
            peak_info = peak.to_dict()
            peak_row.samples_ms = [t * 1e3 for t in peak.times_s]
            peak_row.gmacs = peak.best_gmacs
            peak_row.name = f"SGEMM fp32 peak ({peak.n}x{peak.n}, {peak.blas})"
            peak_row.note = "peak = fastest of the repeats; model rows use their median"
        except PeakError as exc:
            peak_row.skipped, peak_row.note = True, f"skipped: {exc}"
    else:
        peak_row.skipped, peak_row.note = True, "skipped (--peak-size 0)"

    row1 = by_key["reference"].median_ms
    out_rows = []
    for r in rows:
        if r.key != "peak" and m.macs and r.fps:
            r.gmacs = m.macs * r.fps / 1e9
        ratio = row1 / r.median_ms if row1 and r.median_ms and r.key != "peak" else None
        pct = (100.0 * r.gmacs / peak_row.gmacs
               if r.gmacs and peak_row.gmacs and not peak_row.skipped else None)
        entry = {
            "id": r.id, "key": r.key, "name": r.name, "skipped": r.skipped, "note": r.note,
            "median_ms": r.median_ms, "p90_ms": r.p90_ms,
            "fps": r.fps if r.key != "peak" else None,
            "ratio_vs_row1": ratio, "gmacs": r.gmacs, "pct_of_peak": pct, "n": len(r.samples_ms),
            "median_ci_ms": list(median_ci(r.samples_ms)) if r.samples_ms else None,
            "samples_ms": [round(v, 4) for v in r.samples_ms],
        }
        out_rows.append(entry)

    parity = check_outputs(m, threads)
    table = {"threads": threads, "rows": out_rows, "pipeline": stages_info, "peak": peak_info,
             "outputs": parity, "loadavg_end": _loadavg()}
    table["targets"] = targets(table)
    return table


def _child_table(args: argparse.Namespace, threads: int) -> dict[str, Any]:
    torch = _torch()
    if torch is not None:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="lgld-bench-") as tmpdir:
        return run_table(prepare_models(args, Path(tmpdir)), threads, args)


def run_table_isolated(args: argparse.Namespace, threads: int) -> dict[str, Any]:
    """:func:`run_table` in a fresh process, so no thread pool of an earlier table leaks in."""
    return in_fresh_process(_child_table, args, threads)


def targets(table: dict[str, Any]) -> list[dict[str, Any]]:
    """PASS/FAIL/SKIP lines for the issue's targets."""
    rows = {r["key"]: r for r in table["rows"]}
    out = []
    ratio = rows["onnx"]["ratio_vs_row1"]
    parity = table["outputs"]
    if ratio is None:
        out.append({"target": "speedup", "status": "SKIP",
                    "text": "row1/row3 >= 3.0: no reference row (needs torch)"})
    else:
        same = parity.get("ok")
        diff = max(parity.get("max_abs_diff_vs_lgld_torch", 0),
                   parity.get("max_abs_diff_vs_reference", 0)) if parity.get("checked") else None
        status = "PASS" if ratio >= SPEEDUP_TARGET and same else "FAIL"
        detail = (f"max |logit diff| {diff:.1e} <= {ATOL:.0e}, top-1 identical "
                  f"{parity['top1_identical']}/{parity['images']}" if diff is not None
                  else "outputs not checked: " + parity.get("reason", ""))
        out.append({"target": "speedup", "status": status, "value": ratio,
                    "text": f"row1/row3 = {ratio:.2f} (target >= {SPEEDUP_TARGET:.1f}); {detail}"})
    pipe, model = rows["pipeline"], rows["onnx"]
    if pipe["skipped"] or not pipe["fps"] or not table["pipeline"].get("live"):
        out.append({"target": "pipeline", "status": "SKIP", "text": "pipeline not measured"})
    else:
        live = table["pipeline"]["live"]
        bound = min(model["fps"], live["camera_fps"])
        share = pipe["fps"] / bound
        limited = " (camera-limited)" if live["camera_fps"] < model["fps"] else ""
        model_mean = 1000.0 / statistics.fmean(model["samples_ms"])
        out.append({
            "target": "pipeline", "status": "PASS" if share >= PIPELINE_TARGET else "FAIL",
            "value": share,
            "value_sustained": live["throughput_fps"] / min(model_mean, live["camera_fps"]),
            "text": f"pipeline {pipe['fps']:.1f} FPS = {100 * share:.1f}% of model-only "
                    f"{bound:.1f} FPS{limited} (medians; target >= "
                    f"{100 * PIPELINE_TARGET:.0f}%); sustained (means): "
                    f"{live['throughput_fps']:.1f} vs {model_mean:.1f} results/s",
        })
    return out


def _fmt(value: float | None, spec: str, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}{spec}}"


def format_table(table: dict[str, Any], m: Models, args: argparse.Namespace) -> str:
    head = (f"{m.onnx_path.name}: {m.info.variant}, {len(m.info.classes)} classes, "
            f"{m.input_size} px, batch 1, {table['threads']} thread(s), {args.repeats} repeats "
            f"after {args.warmup} warm-up (rows 1-3 interleaved); MACs "
            + (f"{m.macs / 1e9:.3f} G ({m.macs_source})" if m.macs else m.macs_source))
    lines = [head, f"{'row':<4}{'':<44}{'median ms':>10}{'p90 ms':>9}{'FPS':>8}{'x row1':>8}"
                   f"{'GMAC/s':>8}{'% peak':>8}"]
    for r in table["rows"]:
        lines.append(
            f"{r['id']:<4}{r['name'][:43]:<44}{_fmt(r['median_ms'], '.2f', 10)}"
            f"{_fmt(r['p90_ms'], '.2f', 9)}{_fmt(r['fps'], '.1f', 8)}"
            f"{_fmt(r['ratio_vs_row1'], '.2f', 8)}{_fmt(r['gmacs'], '.1f', 8)}"
            f"{_fmt(r['pct_of_peak'], '.0f', 7)}{'%' if r['pct_of_peak'] is not None else ''}"
            + (f"  [{r['note']}]" if r["note"] else "")
        )
    pipe = table["pipeline"]
    if pipe:
        parts = " | ".join(f"{k} {v['median_ms']:.2f}" for k, v in pipe["stages"].items())
        lines.append(f"stages (ms, median, one frame in sequence): {parts} | total "
                     f"{pipe['sequential_ms']:.2f} -> {pipe['sequential_fps']:.1f} FPS on one "
                     "thread"
                     + (f"; live pipeline latency (gate+preprocess+inference) "
                        f"{pipe['live']['latency_ms_median']:.2f} ms" if pipe["live"] else ""))
    lines += [f"{t['status']} {t['text']}" for t in table["targets"]]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# CLI


def parse_threads(text: str | None) -> list[int]:
    if not text:
        return [default_threads()]
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise BenchError(f"--threads wants comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise BenchError(f"--threads values must be >= 1, got {text!r}")
    return values


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage block
        self.exit(2, f"{PROG}: error: {message} (see {PROG} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Benchmark lgld against the paper-style PyTorch model on this machine: "
        "median/p90 latency, FPS, ratios, GMAC/s vs the SGEMM peak, the live pipeline, "
        "targets as PASS/FAIL lines.",
    )
    p.add_argument("--model", default="all", metavar="all|wbc5|PATH",
                   help="lgld ONNX model (or a .pt checkpoint, exported on the fly); default all")
    p.add_argument("--checkpoint", metavar="PT",
                   help="weights for rows 1-2 (default: the .pt next to the model, if its sha256 "
                   "matches the model's metadata; else random weights)")
    p.add_argument("--int8", metavar="PATH", help="INT8 model (default: <model>.int8.onnx "
                   "next to the model, if present)")
    p.add_argument("--threads", metavar="1,2,...",
                   help=f"thread counts, one table each (default {default_threads()})")
    p.add_argument("--input-size", type=int, metavar="N",
                   help="build the models at N px (re-exports the ONNX; needs torch)")
    p.add_argument("--repeats", type=int, default=30, help="timed calls per row (default 30)")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls per row (default 5)")
    p.add_argument("--pipeline-seconds", type=float, default=10.0,
                   help="length of the live pipeline run (0 = skip; default 10)")
    p.add_argument("--camera-fps", type=float, default=None,
                   help="demo camera rate (default max(30, 1.25 x model FPS), at most 120)")
    p.add_argument("--peak-size", type=int, default=2048,
                   help="SGEMM matrix size for the peak (0 = skip; default 2048)")
    p.add_argument("--profile", action="store_true",
                   help="add an ONNX Runtime profile of the model by op type")
    p.add_argument("--study", action="store_true",
                   help="export and time the paper-style model and each export rewrite in turn "
                   "(needs torch, onnx, onnxsim)")
    p.add_argument("--menu", metavar="all,all-160,...|224,...",
                   help="also time these models (zoo names or .onnx paths; with the validation "
                   "accuracy recorded in each) interleaved; a number N re-exports the model's "
                   "weights at N px instead (speed only; needs torch)")
    p.add_argument("--rss-frames", type=int, default=0, metavar="N",
                   help="run lgld-run --source demo --frames N and check its resident memory "
                   "(0 = off; the issue's check is 10000)")
    p.add_argument("--json", metavar="OUT", help="write everything measured to this JSON file")
    return p


def run(args: argparse.Namespace) -> int:
    threads = parse_threads(args.threads)
    try:
        menu_items = parse_menu(args.menu, resolve_model_path)
    except MenuError as exc:
        raise BenchError(str(exc)) from None
    for flag, value, low in (("--repeats", args.repeats, 1), ("--warmup", args.warmup, 0),
                             ("--peak-size", args.peak_size, 0),
                             ("--rss-frames", args.rss_frames, 0)):
        if value < low:
            raise BenchError(f"{flag} must be >= {low}, got {value}")
    if args.input_size is not None and (args.input_size < 16 or args.input_size % 2):
        raise BenchError(f"--input-size must be an even number >= 16, got {args.input_size}")
    if args.pipeline_seconds < 0:
        raise BenchError("--pipeline-seconds must be >= 0")
    if args.json:
        out = Path(args.json)
        if out.is_dir() or not out.parent.is_dir():
            raise BenchError(f"cannot write JSON to {out}")
    report: dict[str, Any] = {"tool": PROG, "machine": machine_info()}
    with tempfile.TemporaryDirectory(prefix="lgld-bench-") as tmpdir:
        tmp = Path(tmpdir)
        m = prepare_models(args, tmp)
        report["settings"] = {
            "model": str(m.onnx_path), "input_size": m.input_size, "variant": m.info.variant,
            "classes": m.info.classes, "weights": m.weights, "int8": str(m.int8_path or ""),
            "threads": threads, "repeats": args.repeats, "warmup": args.warmup,
            "batch": 1, "macs": m.macs, "macs_source": m.macs_source, "notes": m.notes,
            "command": " ".join([PROG, *args.argv]),
        }
        print(f"{PROG}: {m.info.name} model {m.onnx_path} | weights for rows 1-2: {m.weights}")
        for note in m.notes:
            print(f"note: {note}")
        report["tables"] = []
        for n in threads:
            table = run_table(m, n, args) if len(threads) == 1 else run_table_isolated(args, n)
            report["tables"].append(table)
            print(format_table(table, m, args), flush=True)
        if args.profile:
            report["profile"] = profile_onnx(m.onnx_path, threads[0], args.repeats,
                                             args.warmup, tmp)
            print(format_profile(report["profile"], f"ONNX Runtime profile of {m.onnx_path.name}"))
        if args.study:
            if m.torch_model is None:
                report["study"] = {"skipped": "needs torch"}
                print("note: --study skipped: needs torch, onnx and onnxsim")
            else:
                report["study"] = []
                for n in threads:
                    study = run_study(m, n, args.warmup, args.repeats, tmp)
                    report["study"].append(study)
                    print(format_study(study), flush=True)
                if args.profile:
                    plain = Path(report["study"][0]["forms"][0]["path"])
                    prof = profile_onnx(plain, threads[0], args.repeats, args.warmup, tmp)
                    report["profile_reference_plain_export"] = prof
                    print(format_profile(prof, "ONNX Runtime profile of the plain export of the "
                                               "paper-style reference"))
        if menu_items:
            export_at = None
            if m.torch_model is not None:
                def export_at(size: int) -> tuple[Path, int]:
                    return _export_size(m, size, tmp)
            isolate = len(threads) > 1 and all(item.size is None for item in menu_items)
            try:
                report["menu"] = [
                    run_menu_isolated(menu_items, n, args.warmup, args.repeats) if isolate
                    else run_menu(menu_items, n, args.warmup, args.repeats, export_at)
                    for n in threads]
            except MenuError as exc:
                raise BenchError(str(exc)) from None
            for menu in report["menu"]:
                print(format_menu(menu), flush=True)
        if args.rss_frames:
            rss = rss_check(m.onnx_path, args.rss_frames, threads[0])
            report["rss"] = rss
            ok = rss["under_limit"] and rss["flat"]
            print(f"{'PASS' if ok else 'FAIL'} lgld-run RSS over {rss['frames']} demo frames: "
                  f"start {rss['start_mb']:.1f} MB, end {rss['end_mb']:.1f} MB, max "
                  f"{rss['max_mb']:.1f} MB (limit {RSS_LIMIT_MB:.0f}), slope "
                  f"{rss['slope_mb_per_min']:+.2f} MB/min, steady growth "
                  f"{rss['steady_growth_mb']:+.1f} MB (flat if within {RSS_FLAT_MB:.0f})")
    report["machine"]["loadavg_end"] = _loadavg()
    if args.json:
        try:
            Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
        except OSError as exc:
            raise BenchError(f"cannot write {args.json}: {exc.strerror or exc}") from None
        print(f"wrote {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed on one line
        return exc.code if isinstance(exc.code, int) else 2
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return run_cli(PROG, run, args, (ExportError, ValueError, OSError, BenchError))


if __name__ == "__main__":
    sys.exit(main())
