"""``--study``: what each export step buys. Exports the paper-style model and each of lgld's
export rewrites in turn, checks their outputs and times them interleaved (needs torch, onnx,
onnxsim)."""

from __future__ import annotations

import contextlib
import copy
import os
import statistics
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from lgld.bench.inputs import sample_images
from lgld.bench.models import Models
from lgld.bench.timing import percentile, time_interleaved
from lgld.runtime.core.classifier import session_options
from lgld.runtime.core.preprocess import preprocess


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
