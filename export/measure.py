"""Measurement helpers shared by ``lgld-bench`` and its menu: interleaved timing, robust
statistics, sample inputs and the MACs of an ONNX graph."""

from __future__ import annotations

import json
import math
import multiprocessing
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lgld.runtime.core.modelinfo import PREFIX
from lgld.runtime.core.preprocess import read_image
from lgld.runtime.core.session import OnnxClassifier

ASSETS = Path(__file__).resolve().parents[1] / "runtime" / "assets"


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in 0..100."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def median_ci(values: list[float]) -> tuple[float, float]:
    """Distribution-free ~95% confidence interval of the median (order statistics)."""
    s = sorted(values)
    n = len(s)
    half = 0.98 * math.sqrt(n)
    lo, hi = max(0, math.floor(n / 2 - half)), min(n - 1, math.ceil(n / 2 + half) - 1)
    return s[lo], s[max(lo, hi)]


def time_interleaved(
    fns: dict[str, Callable[[], Any]], warmup: int, repeats: int, block: int = 5
) -> dict[str, list[float]]:
    """Warm every function up, then time them in rounds; ms per call, ``repeats`` each.

    Each round gives every function one untimed call and then up to ``block`` timed calls in
    a row. Rounds spread a change in background load over all functions alike; the untimed
    call lets a multi-threaded runtime wake its thread pool, idle while the others ran (without
    it, a 2-thread ONNX Runtime session measured 13-16 ms instead of 8 ms here, interleaved
    call by call with the other rows).
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {key: [] for key in fns}
    while any(len(v) < repeats for v in samples.values()):
        for key, fn in fns.items():
            n = min(block, repeats - len(samples[key]))
            if n <= 0:
                continue
            fn()
            for _ in range(n):
                t0 = time.perf_counter()
                fn()
                samples[key].append((time.perf_counter() - t0) * 1e3)
    return samples


def onnx_macs(clf: OnnxClassifier) -> tuple[int | None, str]:
    """MACs without torch: from the export metadata, else counted on the graph (needs onnx)."""
    try:
        props = clf.session.get_modelmeta().custom_metadata_map
        export = json.loads(props.get(PREFIX + "export", "{}"))
        if isinstance(export.get("macs"), int | float):
            return int(export["macs"]), "model metadata"
    except (ValueError, TypeError, RuntimeError):
        pass
    try:
        return graph_macs(clf.path), "counted on the ONNX graph (after export rewrites)"
    except ImportError:
        return None, "unknown (no torch, no onnx, none in the metadata)"


def graph_macs(path: Path) -> int:
    """Multiply-adds of Conv/Gemm/MatMul nodes, from ONNX shape inference (batch 1)."""
    import onnx
    from onnx import numpy_helper, shape_inference

    model = shape_inference.infer_shapes(onnx.load(str(path)))
    g = model.graph
    shapes: dict[str, list[int]] = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else 1 for d in dims]
    for init in g.initializer:
        shapes[init.name] = list(numpy_helper.to_array(init).shape)
    total = 0
    for node in g.node:
        out = shapes.get(node.output[0])
        if out is None:
            continue
        if node.op_type == "Conv":
            w = shapes.get(node.input[1])
            if w:
                total += int(np.prod(out)) * int(np.prod(w[1:]))
        elif node.op_type in ("Gemm", "MatMul"):
            a = shapes.get(node.input[0])
            if a:
                trans_a = any(at.name == "transA" and at.i for at in node.attribute)
                total += int(np.prod(out)) * (a[-2] if trans_a else a[-1])
    return total


def sample_images(size: int) -> list[np.ndarray]:
    """The runtime's bundled sample images (BGR), else a fixed random image."""
    files = sorted(ASSETS.glob("*.jpg"))
    if files:
        return [read_image(f) for f in files]
    return [np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)]


def in_fresh_process(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a newly spawned process: no thread pool of earlier work leaks in.

    PyTorch's OpenMP/oneDNN pools keep running with the thread count they first had: measured
    here, a 1-thread table after a 2-thread one in the same process gave the reference 22.6 ms
    instead of 30.9 ms.
    """
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)
