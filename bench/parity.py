"""The output check: ONNX Runtime vs PyTorch, same weights, same inputs."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from lgld.bench.inputs import sample_images
from lgld.bench.machine import torch_or_none
from lgld.bench.models import Models
from lgld.runtime.core.classifier import OnnxClassifier
from lgld.runtime.core.preprocess import preprocess

ATOL = 1e-4  # max |logit difference| for "outputs unchanged"


def check_outputs(m: Models, threads: int) -> dict[str, Any]:
    """Max |logit diff| of the parity ONNX vs lgld eager and vs the reference, per image."""
    if m.torch_model is None or m.parity_onnx is None:
        return {"checked": False, "reason": "needs torch and an ONNX file with the same weights"}
    torch = torch_or_none()
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
