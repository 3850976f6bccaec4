"""The classifier: the ONNX Runtime session every consumer (runtime, lgld-eval, export checks,
bench) runs a model through."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from lgld.runtime.core.cliutil import first_line
from lgld.runtime.core.cpu import CpuFeatures, cpu_features
from lgld.runtime.core.modelinfo import ModelInfo, ModelInfoError
from lgld.runtime.core.preprocess import preprocess_batch


class ModelLoadError(ValueError):
    """The model file is missing, not ONNX, not an lgld model, or inconsistent."""


def default_threads() -> int:
    """Leave one core for capture and encoding (at least one thread)."""
    return max(1, (os.cpu_count() or 2) - 1)


def needs_exact_int8_kernels(cpu: CpuFeatures | None = None) -> bool:
    """True on x86 CPUs without VNNI, where ONNX Runtime's default u8 x s8 int8 kernels add
    pairs of products in saturating 16-bit lanes and full-range INT8 models give wrong answers.

    There ``session.x64quantprecision`` switches them to exact u8 x u8 kernels. It is not set
    elsewhere: on VNNI CPUs it would halve INT8 speed for nothing; it never touches fp32 models,
    and arm64 has no such kernels. lgld's own INT8 models use 7-bit weights (reduce_range), which
    cannot saturate, so this guards INT8 models made elsewhere or by older lgld versions.
    """
    cpu = cpu or cpu_features()
    return cpu.is_x86 and not cpu.fast_int8


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """Options tuned for a small ARM board: fixed threads, full graph optimization.

    With more than one thread, the pool's workers spin between operators while a run lasts
    and stop the moment it returns (``force_spinning_stop``), so they never take CPU from the
    capture thread between frames. Waking sleeping workers for each of the graph's ~80 small
    nodes costs more than a second core gives. Measured on 2 x86 cores at 128 px, back to
    back: 13.1 ms on 1 thread; 9.0 ms on 2 without spinning, 7.9 ms with it.
    """
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or default_threads()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    spin = "1" if so.intra_op_num_threads > 1 else "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", spin)
    so.add_session_config_entry("session.force_spinning_stop", "1")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if needs_exact_int8_kernels():
        so.add_session_config_entry("session.x64quantprecision", "1")
    so.log_severity_level = 3
    return so


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 for stability, returned as float32."""
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


class OnnxClassifier:
    """An lgld ONNX model plus its self-description (classes, preprocessing)."""

    def __init__(
        self,
        path: str | os.PathLike,
        threads: int | None = None,
        providers: Sequence[str] = ("CPUExecutionProvider",),
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelLoadError(f"model not found: {self.path}")
        self.threads = threads or default_threads()
        try:
            self.session = ort.InferenceSession(
                str(self.path),
                sess_options=session_options(self.threads),
                providers=list(providers),
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelLoadError(
                f"cannot load ONNX model {self.path}: {first_line(exc, 200)}"
            ) from None
        props = self.session.get_modelmeta().custom_metadata_map
        try:
            self.info = ModelInfo.from_metadata(props, source=str(self.path))
        except ModelInfoError as exc:
            raise ModelLoadError(str(exc)) from None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.output_name = self.session.get_outputs()[0].name
        self._check_io(inp, self.session.get_outputs()[0])
        self.fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None

    def _check_io(self, inp: ort.NodeArg, out: ort.NodeArg) -> None:
        """Refuse at load what would only fail at the first frame: the input must be float32
        (N, 3, S, S) with S the metadata's input size, the output (N, classes) float."""
        shape, size, n = list(inp.shape), self.info.input_size, len(self.info.classes)
        if inp.type != "tensor(float)":
            raise ModelLoadError(f"{self.path}: input is {inp.type}, not a float tensor")
        if len(shape) != 4 or shape[2:] != [size, size]:
            raise ModelLoadError(
                f"{self.path}: input shape {shape} does not match metadata input size {size}"
            )
        if shape[1] != 3:
            raise ModelLoadError(f"{self.path}: input has {shape[1]} channels, not 3 (BGR/RGB)")
        if out.type not in ("tensor(float)", "tensor(float16)", "tensor(double)"):
            raise ModelLoadError(f"{self.path}: output is {out.type}, not a float tensor")
        if len(out.shape) != 2:
            raise ModelLoadError(f"{self.path}: output shape {list(out.shape)} is not "
                                 f"(batch, {n} classes)")
        if isinstance(out.shape[-1], int) and out.shape[-1] != n:
            raise ModelLoadError(f"{self.path}: {out.shape[-1]} outputs but {n} class names")

    @property
    def classes(self) -> list[str]:
        return self.info.classes

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Run preprocessed (N, 3, S, S) float32 inputs; returns (N, classes) logits."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if self.fixed_batch is not None and batch.shape[0] != self.fixed_batch:
            step = self.fixed_batch
            return np.concatenate(
                [self.logits(batch[i : i + step]) for i in range(0, batch.shape[0], step)]
            )
        return self.session.run([self.output_name], {self.input_name: batch})[0]

    def prepare(self, images_bgr: Sequence[np.ndarray]) -> np.ndarray:
        """BGR uint8 images -> the model's (N, 3, S, S) input, with the model's own spec."""
        return preprocess_batch(images_bgr, self.info.preprocess)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities of a prepared batch (see :meth:`prepare`)."""
        return softmax(self.logits(batch))

    def probabilities(self, images_bgr: Sequence[np.ndarray]) -> np.ndarray:
        """Preprocess BGR uint8 images with the model's own spec and return class probabilities."""
        return self.predict(self.prepare(images_bgr))
