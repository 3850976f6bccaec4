"""Static post-training INT8 quantization (QDQ), judged by measured numbers.

Calibrates on labelled images: an image folder with one sub-folder per class (the model's class
names), or the train part of the model's own split file, then reports top-1 accuracy and macro
F1 of fp32 and INT8 on the gate images (that folder, or the split's val part) and both models'
latency on this machine, measured in the same run through the runtime's OnnxClassifier (so with
the runtime's session options). Refuses (writes nothing) when accuracy or macro F1 drops by more
than ``max_accuracy_drop``. Needs no torch.

The recipe (scope ``gce``): only the GCE's three dilated 3x3 convolutions are quantized, which
hold about four fifths of LGLD-Net's MACs at every input size; the local stream (involution,
depthwise convolutions) and the small 1x1 convolutions stay fp32, because quantizing them is
what cost the 160 px models their accuracy (docs/performance.md). Weights are int8 per output
channel with 7 bits of range (``reduce_range``): a u8 x s7 pair sum cannot saturate the 16-bit
lanes of x86 kernels without VNNI, so the INT8 answers are the same on AVX2, AVX-512 VNNI and
arm64 without any session option.
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
from lgld.runtime.core.classifier import ModelLoadError, OnnxClassifier
from lgld.runtime.core.files import IMAGE_SUFFIXES
from lgld.runtime.core.modelinfo import PREFIX
from lgld.runtime.core.preprocess import PreprocessSpec, preprocess, preprocess_batch, read_image

QUANTIZATION = "int8-qdq"
# Name prefixes of the nodes each scope quantizes (empty: every node ONNX Runtime can quantize).
SCOPES: dict[str, tuple[str, ...]] = {"gce": ("/gce/dilated",), "all": ()}
DEFAULT_CALIB_IMAGES = 256


@dataclass(frozen=True)
class Int8Report:
    """Accuracy on the calibration labels and latency, fp32 vs INT8, from one run."""

    images: int
    fp32_accuracy: float
    int8_accuracy: float
    fp32_macro_f1: float
    int8_macro_f1: float
    fp32_ms: float  # median latency, batch 1
    int8_ms: float
    runs: int
    threads: int
    max_accuracy_drop: float
    gate: str = "calibration images"  # what the accuracy was measured on

    @property
    def accuracy_drop(self) -> float:
        return self.fp32_accuracy - self.int8_accuracy

    @property
    def macro_f1_drop(self) -> float:
        return self.fp32_macro_f1 - self.int8_macro_f1

    @property
    def passed(self) -> bool:
        return max(self.accuracy_drop, self.macro_f1_drop) <= self.max_accuracy_drop + 1e-12

    @property
    def faster(self) -> bool:
        return self.int8_ms < self.fp32_ms

    def summary(self) -> str:
        acc = (
            f"INT8 accuracy on {self.images} {self.gate}: {self.int8_accuracy:.4f} vs fp32 "
            f"{self.fp32_accuracy:.4f} (drop {self.accuracy_drop:+.4f}), macro F1 "
            f"{self.int8_macro_f1:.4f} vs {self.fp32_macro_f1:.4f} (drop "
            f"{self.macro_f1_drop:+.4f}); limit {self.max_accuracy_drop:.4f}"
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


def scores(
    models: Sequence[OnnxClassifier], items: Sequence[tuple[Path, int]], chunk: int = 32
) -> list[tuple[float, float]]:
    """(top-1 accuracy, macro F1) of each model on labelled image files (each image read once)."""
    from lgld.training.metrics import compute_metrics

    labels = [label for _, label in items]
    predicted: list[list[int]] = [[] for _ in models]
    spec = models[0].info.preprocess
    for i in range(0, len(items), chunk):
        part = items[i : i + chunk]
        batch = preprocess_batch([read_image(p) for p, _ in part], spec)
        for k, clf in enumerate(models):
            predicted[k] += clf.logits(batch).argmax(axis=1).tolist()
    results = []
    for pred in predicted:
        m = compute_metrics(labels, pred, models[0].classes)
        results.append((m["accuracy"], m["macro_f1"]))
    return results


def split_items(
    split_file: str | os.PathLike, classes: Sequence[str], root: str | os.PathLike | None = None,
    expect_counts: dict[str, int] | None = None,
) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]]]:
    """(train, val) labelled images of an lgld-train split file, checked against the model.

    ``expect_counts`` (the checkpoint's recorded split sizes) guards against gating on another
    validation split than the one the model was selected on (val and test sizes must match).
    """
    from lgld.training.data import DataError, load_split

    try:
        split = load_split(split_file, root=root)
    except DataError as exc:
        raise ExportError(str(exc)) from None
    if sorted(split.classes) != sorted(classes):
        raise ExportError(f"split file {split_file} has classes {split.classes}, the model "
                          f"{list(classes)}")
    for part in ("train", "val"):
        if not split.parts.get(part):
            raise ExportError(f"split file {split_file} has no {part!r} part")
    if expect_counts:  # val and test decide (a fine-tuning run may train on a subset)
        counts = {k: len(v) for k, v in split.parts.items()}
        if any(counts.get(k) != n for k, n in expect_counts.items() if k != "train"):
            raise ExportError(f"split file {split_file} has parts {counts}, but the model was "
                              f"trained on a split with {expect_counts}")
    pairs = {
        part: [(split.root / it.path, list(classes).index(it.label)) for it in split.parts[part]]
        for part in ("train", "val")
    }
    missing = [str(p) for p, _ in pairs["train"] + pairs["val"] if not p.is_file()]
    if missing:
        raise ExportError(f"{len(missing)} images of split file {split_file} not found, e.g. "
                          f"{missing[0]} (pass the data folder as --calib-data)")
    return pairs["train"], pairs["val"]


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


def _calibration_sets(
    fp32: OnnxClassifier, calib_dir: str | os.PathLike | None,
    split_file: str | os.PathLike | None, calib_limit: int | None,
) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]], str]:
    """(calibration images, gate images, what the gate images are)."""
    if split_file is not None:
        train, gate_items = split_items(split_file, fp32.classes, root=calib_dir,
                                        expect_counts=fp32.info.training.get("split_counts"))
        calib = _spread(train, calib_limit or DEFAULT_CALIB_IMAGES)
        return calib, gate_items, f"val images (split {Path(split_file).name})"
    if calib_dir is not None:
        calib = _spread(labelled_images(calib_dir, fp32.classes), calib_limit)
        return calib, calib, "calibration images"
    raise ExportError("INT8 needs calibration images: a folder or a split file")


def _quantized_graph(
    fp32_path: Path, fp32: OnnxClassifier, calib: Sequence[tuple[Path, int]], scope: str,
    per_channel: bool, reduce_range: bool, activations: str,
) -> tuple[onnx.ModelProto, list[str] | None]:
    """The INT8 QDQ graph (MinMax calibration) and the Conv nodes quantized (None: all)."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    with tempfile.TemporaryDirectory(prefix="lgld-int8-") as tmpdir:
        pre, raw = Path(tmpdir) / "pre.onnx", Path(tmpdir) / "int8.onnx"
        try:
            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        except Exception:  # pre-processing is an optimisation; quantize the export as is
            pre = fp32_path
        prefixes = SCOPES[scope]
        nodes = None
        if prefixes:
            nodes = [n.name for n in onnx.load(str(pre)).graph.node
                     if n.op_type == "Conv" and n.name.startswith(prefixes)]
            if not nodes:
                raise ExportError(f"scope {scope!r}: no Conv node named {' or '.join(prefixes)}* "
                                  f"in {fp32_path} (use --int8-scope all)")
        try:
            quantize_static(
                str(pre), str(raw),
                _reader([p for p, _ in calib], fp32.info.preprocess, fp32.input_name),
                quant_format=QuantFormat.QDQ, per_channel=per_channel, reduce_range=reduce_range,
                activation_type=QuantType.QUInt8 if activations == "u8" else QuantType.QInt8,
                weight_type=QuantType.QInt8, nodes_to_quantize=nodes,
                calibrate_method=CalibrationMethod.MinMax,
            )
        except (ExportError, ValueError) as exc:  # ImageError is a ValueError
            raise ExportError(f"INT8 calibration failed: {exc}") from None
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise ExportError(f"INT8 quantization failed: {first}") from None
        return onnx.load(str(raw)), nodes


def quantize_int8(
    fp32_path: str | os.PathLike,
    out_path: str | os.PathLike,
    calib_dir: str | os.PathLike | None,
    max_accuracy_drop: float = 0.005,
    threads: int | None = None,
    calib_limit: int | None = None,
    latency_runs: int = 30,
    per_channel: bool = True,
    activations: str = "u8",
    scope: str = "gce",
    reduce_range: bool = True,
    split_file: str | os.PathLike | None = None,
) -> Int8Report:
    """Quantize an lgld fp32 ONNX model to INT8 QDQ at ``out_path`` (atomically).

    With ``split_file`` it calibrates on (at most ``calib_limit``, default 256, evenly spread)
    images of the split's train part and gates on its val part (``calib_dir``, if given,
    overrides the split's data folder); without, it calibrates and gates on ``calib_dir``.
    MinMax calibration; weights int8 per channel (7-bit with ``reduce_range``). Activations
    uint8 (``"u8"``) or int8 (``"s8"``, measured slower than fp32 on x86). ``scope`` picks the
    quantized nodes (:data:`SCOPES`). Raises ExportError (nothing written) on bad input or a
    drop of accuracy or macro F1 above the limit.
    """
    from lgld.export.onnx_export import save_atomically
    from lgld.runtime.core.cpu import cpu_features

    if activations not in ("u8", "s8"):
        raise ExportError(f"activations must be 'u8' or 's8', got {activations!r}")
    if scope not in SCOPES:
        raise ExportError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    if not 0 <= max_accuracy_drop <= 1:
        raise ExportError(f"--max-accuracy-drop must be in [0, 1], got {max_accuracy_drop}")
    fp32 = _load(Path(fp32_path), "fp32", threads)
    if fp32.info.quantization != "fp32":
        raise ExportError(f"{fp32_path} is already quantized ({fp32.info.quantization})")
    calib, gate_items, gate = _calibration_sets(fp32, calib_dir, split_file, calib_limit)
    model, nodes = _quantized_graph(Path(fp32_path), fp32, calib, scope, per_channel,
                                    reduce_range, activations)
    props = dict(fp32.session.get_modelmeta().custom_metadata_map)  # keeps lgld.export etc.
    props.update(replace(fp32.info, quantization=QUANTIZATION).to_metadata())
    onnx.helper.set_model_props(model, props)

    def judge(tmp: Path) -> Int8Report:
        int8 = _load(tmp, "INT8", threads)
        (acc32, f132), (acc8, f18) = scores([fp32, int8], gate_items)
        x = preprocess(read_image(gate_items[0][0]), fp32.info.preprocess)
        ms32, ms8 = latencies([fp32, int8], x, latency_runs)
        report = Int8Report(
            len(gate_items), acc32, acc8, f132, f18, ms32, ms8, latency_runs, fp32.threads,
            max_accuracy_drop, gate,
        )
        if not report.passed:
            raise ExportError(
                f"INT8 refused, nothing written: accuracy {acc32:.4f} -> {acc8:.4f}, macro F1 "
                f"{f132:.4f} -> {f18:.4f} on {len(gate_items)} {gate} (drop "
                f"{max(report.accuracy_drop, report.macro_f1_drop):.4f} > "
                f"{max_accuracy_drop:.4f})"
            )
        record = {k: round(v, 6) if isinstance(v, float) else v for k, v in asdict(report).items()}
        record.update(activations=activations, weights="s7" if reduce_range else "s8",
                      per_channel=per_channel, calibration="minmax", calib_images=len(calib),
                      scope=scope, quantized_nodes=nodes or "all", cpu=cpu_features().summary())
        onnx.helper.set_model_props(model, {**props, PREFIX + "int8": json.dumps(record)})
        onnx.save(model, str(tmp))
        return report

    return save_atomically(model, Path(out_path), judge)
