"""Multiply-adds of an ONNX model without torch: from its metadata, else counted on the graph."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lgld.runtime.core.classifier import OnnxClassifier
from lgld.runtime.core.modelinfo import PREFIX


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
