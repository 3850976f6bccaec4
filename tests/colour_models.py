"""Models whose answers are known exactly, for lgld-eval and its --compare: a hand-made lgld
ONNX model that names an image's dominant colour, and folders of solid-colour images."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from lgld.runtime.core.modelinfo import ModelInfo
from lgld.runtime.core.preprocess import PreprocessSpec

BGR = {"red": (0, 0, 200), "green": (0, 200, 0), "blue": (200, 0, 0), "purple": (200, 0, 200)}
RGB = ["red", "green", "blue"]


def colour_model(path: Path, classes: list[str], size: int = 8) -> Path:
    """logits = mean R, G, B (fixed batch 1): with classes [red, green, blue] it names an
    image's dominant colour; with the names permuted it is wrong in a known way."""
    import onnx  # only the tests that build one need onnx
    from onnx import TensorProto, helper

    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])
    node = helper.make_node("ReduceMean", ["input"], ["logits"], axes=[2, 3], keepdims=0)
    model = helper.make_model(helper.make_graph([node], "colour", [inp], [out]),
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    meta = ModelInfo(classes=classes, preprocess=PreprocessSpec(input_size=size)).to_metadata()
    for k, v in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(model, str(path))
    return path


def colour_folder(root: Path, names: list[str], n: int = 3) -> Path:
    """``n`` noisy solid-colour images per named colour, one class folder each."""
    rng = np.random.default_rng(0)
    for name in names:
        (root / name).mkdir(parents=True)
        for i in range(n):
            img = np.clip(np.array(BGR[name]) + rng.integers(0, 40, (12, 14, 3)), 0, 255)
            cv2.imwrite(str(root / name / f"{i}.png"), img.astype(np.uint8))
    return root
