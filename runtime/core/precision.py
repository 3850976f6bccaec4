"""``precision = auto|fp32|int8``: which file of a model runs, its fp32 or its INT8 version.

A model ``NAME.onnx`` may have an INT8 sibling ``NAME.int8.onnx`` written by ``lgld-export
--int8``, which stores the result of its accuracy gate in the model (``lgld.int8``). ``auto``
takes the INT8 file only where it pays and is safe: the CPU has int8 dot products (see
:mod:`lgld.runtime.core.cpu`), the file exists, and it carries a passed accuracy gate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lgld.runtime.core.classifier import ModelLoadError
from lgld.runtime.core.cpu import CpuFeatures, cpu_features
from lgld.runtime.core.modelinfo import PREFIX

PRECISIONS = ("auto", "fp32", "int8")
INT8_SUFFIX = ".int8.onnx"
GATE_KEY = PREFIX + "int8"


@dataclass(frozen=True)
class PrecisionChoice:
    """The file to load, the precision it runs at and why (one line for logs)."""

    path: Path
    precision: str  # "fp32" or "int8"
    reason: str


def int8_sibling(path: Path) -> Path:
    """``lgld-all.onnx`` -> ``lgld-all.int8.onnx`` (same folder)."""
    return path.with_name(path.name.removesuffix(".onnx") + INT8_SUFFIX)


def is_int8_file(path: Path) -> bool:
    return path.name.endswith(INT8_SUFFIX)


def gate_record(path: Path) -> dict | None:
    """The INT8 accuracy-gate record stored in a model, or None (absent, unreadable, damaged)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        record = json.loads(session.get_modelmeta().custom_metadata_map[GATE_KEY])
    except Exception:  # onnxruntime's own exception types, KeyError, JSON errors
        return None
    return record if isinstance(record, dict) else None


def gate_passed(record: dict | None) -> bool:
    """True when the record says INT8 lost no more than its limit (accuracy and macro F1)."""
    if not record:
        return False
    try:
        limit = float(record["max_accuracy_drop"])
        drops = [float(record["fp32_accuracy"]) - float(record["int8_accuracy"])]
        if "fp32_macro_f1" in record:
            drops.append(float(record["fp32_macro_f1"]) - float(record["int8_macro_f1"]))
    except (KeyError, TypeError, ValueError):
        return False
    return all(d <= limit + 1e-9 for d in drops)


def choose_precision(
    model_path: str | Path, precision: str = "auto", cpu: CpuFeatures | None = None
) -> PrecisionChoice:
    """Pick the fp32 file or its INT8 sibling. ModelLoadError when ``int8`` has no INT8 file.

    An explicit ``*.int8.onnx`` path runs as given: the caller chose the file.
    """
    path = Path(model_path)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if is_int8_file(path):
        return PrecisionChoice(path, "int8", "an INT8 model file was given")
    if precision == "fp32":
        return PrecisionChoice(path, "fp32", "precision fp32")
    sibling = int8_sibling(path)
    if precision == "int8":
        if not sibling.is_file():
            raise ModelLoadError(f"precision int8: {path.name} has no INT8 version ({sibling} "
                                 "not found; lgld-export --int8 makes one)")
        return PrecisionChoice(sibling, "int8", "precision int8")
    cpu = cpu or cpu_features()
    if not cpu.fast_int8:
        return PrecisionChoice(path, "fp32", f"auto: fp32, no int8 dot product on this CPU "
                                             f"({cpu.summary()})")
    if not sibling.is_file():
        return PrecisionChoice(path, "fp32", f"auto: fp32, {path.name} has no INT8 version")
    if not gate_passed(gate_record(sibling)):
        return PrecisionChoice(path, "fp32", f"auto: fp32, {sibling.name} has no passed "
                                             "accuracy gate")
    return PrecisionChoice(sibling, "int8", f"auto: INT8 ({cpu.summary()})")


def fp32_file(path: Path) -> Path:
    """``lgld-all.int8.onnx`` -> ``lgld-all.onnx``; an fp32 path as it is."""
    return path.with_name(path.name.removesuffix(INT8_SUFFIX) + ".onnx") if is_int8_file(
        path) else path


def model_card(path: str | Path) -> Path:
    """The model card beside a model file, shared by its fp32 and INT8 files (``NAME.md``)."""
    return fp32_file(Path(path)).with_suffix(".md")


def model_label(path: str | Path, precision: str) -> str:
    """How every output names the model that ran: its file and precision, e.g.
    ``lgld-wbc5.int8.onnx (int8)`` (``int8-qdq`` and other INT8 spellings read ``int8``)."""
    kind = "int8" if str(precision).lower().startswith("int8") else (precision or "fp32")
    return f"{Path(path).name} ({kind})"
