"""Static post-training INT8 quantization (QDQ), judged by measured numbers.

Calibrates on an image folder with one sub-folder per class (the model's class names), then
reports the top-1 accuracy of fp32 and INT8 on those images and both models' latency on this
machine, measured in the same run through the runtime's OnnxClassifier. Refuses (writes
nothing) when accuracy drops by more than ``max_accuracy_drop``. Needs no torch.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import onnx

from lgld.export import ExportError
from lgld.runtime.core.files import IMAGE_SUFFIXES
from lgld.runtime.core.modelinfo import PREFIX
from lgld.runtime.core.preprocess import PreprocessSpec, preprocess, preprocess_batch, read_image
from lgld.runtime.core.session import ModelLoadError, OnnxClassifier

QUANTIZATION = "int8-qdq"


@dataclass(frozen=True)
class Int8Report:
    """Accuracy on the calibration labels and latency, fp32 vs INT8, from one run."""

    images: int
    fp32_accuracy: float
    int8_accuracy: float
    fp32_ms: float  # median latency, batch 1
    int8_ms: float
    runs: int
    threads: int
    max_accuracy_drop: float

    @property
    def accuracy_drop(self) -> float:
        return self.fp32_accuracy - self.int8_accuracy

    @property
    def faster(self) -> bool:
        return self.int8_ms < self.fp32_ms

    def summary(self) -> str:
        acc = (
            f"INT8 accuracy on {self.images} calibration images: {self.int8_accuracy:.4f} vs fp32 "
            f"{self.fp32_accuracy:.4f} (drop {self.accuracy_drop:+.4f}, limit "
            f"{self.max_accuracy_drop:.4f})"
        )
        plural = "s" if self.threads != 1 else ""
        timing = f"median of {self.runs} runs, batch 1, {self.threads} thread{plural}, this machine"
        if self.faster:
            speed = (
                f"INT8 latency {self.int8_ms:.2f} ms vs fp32 {self.fp32_ms:.2f} ms: "
                f"{self.fp32_ms / self.int8_ms:.2f}x faster ({timing})"
            )
        else:
            speed = (
                f"INT8 is NOT faster than fp32 here: {self.int8_ms:.2f} ms vs "
                f"{self.fp32_ms:.2f} ms ({timing})"
            )
        return f"{acc}\n{speed}"


def labelled_images(folder: str | os.PathLike, classes: Sequence[str]) -> list[tuple[Path, int]]:
    """(image, class index) pairs from a folder with one sub-folder per model class."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ExportError(f"calibration folder not found: {folder}")
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    names = [p.name for p in subdirs]
    if set(names) != set(classes):
        missing, unexpected = sorted(set(classes) - set(names)), sorted(set(names) - set(classes))
        raise ExportError(
            f"calibration classes in {folder} do not match the model's classes "
            f"{list(classes)}: missing {missing}, unexpected {unexpected}"
        )
    items = []
    for sub in subdirs:
        label = list(classes).index(sub.name)
        items += [
            (p, label) for p in sorted(sub.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES
        ]
    if not items:
        raise ExportError(f"no images found under {folder}")
    return items


def _spread(items: list, limit: int | None) -> list:
    if not limit or len(items) <= limit:
        return items
    return [items[i] for i in np.linspace(0, len(items) - 1, limit).round().astype(int)]


def _reader(paths: Sequence[Path], spec: PreprocessSpec, input_name: str):
    """A CalibrationDataReader feeding one preprocessed image at a time."""
    from onnxruntime.quantization import CalibrationDataReader

    class ImageReader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(paths)

        def get_next(self) -> dict[str, np.ndarray] | None:
            path = next(self._it, None)
            return None if path is None else {input_name: preprocess(read_image(path), spec)}

        def rewind(self) -> None:
            self._it = iter(paths)

    return ImageReader()


def accuracies(
    models: Sequence[OnnxClassifier], items: Sequence[tuple[Path, int]], chunk: int = 32
) -> list[float]:
    """Top-1 accuracy of each model on labelled image files (each image read once)."""
    correct = [0] * len(models)
    spec = models[0].info.preprocess
    for i in range(0, len(items), chunk):
        part = items[i : i + chunk]
        batch = preprocess_batch([read_image(p) for p, _ in part], spec)
        labels = np.array([label for _, label in part])
        for k, clf in enumerate(models):
            correct[k] += int(np.sum(clf.logits(batch).argmax(axis=1) == labels))
    return [c / len(items) for c in correct]


def latencies(
    models: Sequence[OnnxClassifier], x: np.ndarray, runs: int, warmup: int = 5
) -> list[float]:
    """Median batch-1 latency (ms) of each model, runs interleaved so drift hits all alike."""
    for clf in models:
        for _ in range(warmup):
            clf.logits(x)
    times: list[list[float]] = [[] for _ in models]
    for _ in range(runs):
        for clf, bucket in zip(models, times, strict=True):
            t0 = time.perf_counter()
            clf.logits(x)
            bucket.append((time.perf_counter() - t0) * 1e3)
    return [statistics.median(t) for t in times]


def _load(path: Path, what: str, threads: int | None) -> OnnxClassifier:
    try:
        return OnnxClassifier(path, threads=threads)
    except ModelLoadError as exc:
        raise ExportError(f"cannot load the {what} model: {exc}") from None


def quantize_int8(
    fp32_path: str | os.PathLike,
    out_path: str | os.PathLike,
    calib_dir: str | os.PathLike,
    max_accuracy_drop: float = 0.005,
    threads: int | None = None,
    calib_limit: int | None = None,
    latency_runs: int = 30,
    per_channel: bool = True,
    activations: str = "u8",
) -> Int8Report:
    """Quantize an lgld fp32 ONNX model to INT8 QDQ at ``out_path`` (atomically).

    Weights are int8 per channel, MinMax calibration. Activations are uint8 (``"u8"``) or
    int8 (``"s8"``): on the x86 workstation (AVX-512 VNNI) u8 ran ~1.9x faster than fp32 and
    s8 ran slower than fp32; s8 is the safe choice on x86 CPUs without VNNI, where u8 x s8
    products can saturate. ARM64 (the Pi) has kernels for both; measure there with lgld-bench.
    Raises ExportError (nothing written) on bad input or an accuracy drop above the limit.
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    from lgld.export.onnx_export import save_atomically

    if activations not in ("u8", "s8"):
        raise ExportError(f"activations must be 'u8' or 's8', got {activations!r}")
    if not 0 <= max_accuracy_drop <= 1:
        raise ExportError(f"--max-accuracy-drop must be in [0, 1], got {max_accuracy_drop}")
    fp32 = _load(Path(fp32_path), "fp32", threads)
    if fp32.info.quantization != "fp32":
        raise ExportError(f"{fp32_path} is already quantized ({fp32.info.quantization})")
    items = _spread(labelled_images(calib_dir, fp32.classes), calib_limit)
    with tempfile.TemporaryDirectory(prefix="lgld-int8-") as tmpdir:
        pre, raw = Path(tmpdir) / "pre.onnx", Path(tmpdir) / "int8.onnx"
        try:
            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        except Exception:  # pre-processing is an optimisation; quantize the export as is
            pre = Path(fp32_path)
        try:
            quantize_static(
                str(pre), str(raw),
                _reader([p for p, _ in items], fp32.info.preprocess, fp32.input_name),
                quant_format=QuantFormat.QDQ, per_channel=per_channel,
                activation_type=QuantType.QUInt8 if activations == "u8" else QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
            )
        except (ExportError, ValueError) as exc:  # ImageError is a ValueError
            raise ExportError(f"INT8 calibration failed: {exc}") from None
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise ExportError(f"INT8 quantization failed: {first}") from None
        model = onnx.load(str(raw))
    props = dict(fp32.session.get_modelmeta().custom_metadata_map)  # keeps lgld.export etc.
    props.update(replace(fp32.info, quantization=QUANTIZATION).to_metadata())
    onnx.helper.set_model_props(model, props)

    def judge(tmp: Path) -> Int8Report:
        int8 = _load(tmp, "INT8", threads)
        acc32, acc8 = accuracies([fp32, int8], items)
        x = preprocess(read_image(items[0][0]), fp32.info.preprocess)
        ms32, ms8 = latencies([fp32, int8], x, latency_runs)
        report = Int8Report(
            len(items), acc32, acc8, ms32, ms8, latency_runs, fp32.threads, max_accuracy_drop
        )
        if report.accuracy_drop > max_accuracy_drop + 1e-12:
            raise ExportError(
                f"INT8 refused, nothing written: accuracy {acc32:.4f} -> {acc8:.4f} on "
                f"{len(items)} calibration images (drop {report.accuracy_drop:.4f} > "
                f"{max_accuracy_drop:.4f})"
            )
        record = {k: round(v, 6) if isinstance(v, float) else v for k, v in asdict(report).items()}
        record.update(activations=activations, weights="s8", per_channel=per_channel,
                      calibration="minmax")
        onnx.helper.set_model_props(model, {**props, PREFIX + "int8": json.dumps(record)})
        onnx.save(model, str(tmp))
        return report

    return save_atomically(model, Path(out_path), judge)
