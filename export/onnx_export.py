"""LGLD-Net -> simplified, verified, self-describing ONNX.

Pipeline: eval-mode model -> :class:`~lgld.export.rewrites.ExportLGLDNet` (exact algebraic
rewrites) -> torch's TorchScript-based ONNX exporter -> onnxsim -> forbidden-op check ->
metadata -> temporary file beside the target -> ONNX Runtime vs PyTorch verification (through
the runtime's own OnnxClassifier) -> atomic rename. On any failure nothing is left behind.

Exporter choice: ``torch.onnx.export(..., dynamo=False)``. The export form is a plain traceable
module, so the TorchScript exporter gives a small, deterministic graph in well under a second
and needs no extra packages. The dynamo exporter (tried with onnxscript 0.7.2, torch 2.13) needs
``onnxscript`` + ``onnx-ir`` (not dependencies), took ~6 s instead of ~0.4 s and, after onnxsim,
gave the same graph with ReduceMean in place of GlobalAveragePool plus a Reshape. onnxslim
(0.1.98) was measured too: after onnxsim it changes nothing, alone it gives the same 82 nodes, so
it is not used. The choice is pinned here, in :func:`torch_to_onnx`.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from lgld.export import ExportError
from lgld.export.rewrites import ExportLGLDNet
from lgld.export.verify import ImageSource, VerifyReport, check_graph, op_histogram, verify_onnx
from lgld.models.checkpoint import file_sha256, load_checkpoint
from lgld.models.lgld_net import LGLDNet, count_parameters
from lgld.models.macs import MacReport, count_macs
from lgld.runtime.core.cliutil import first_line
from lgld.runtime.core.files import atomic_path
from lgld.runtime.core.modelinfo import PREFIX, ModelInfo, lgld_version
from lgld.runtime.core.preprocess import PreprocessSpec

DEFAULT_OPSET = 17  # read by every onnxruntime >= 1.13 (pyproject asks for >= 1.17)
_OPSETS = getattr(torch.onnx, "_constants", None)
MIN_OPSET = int(getattr(_OPSETS, "ONNX_MIN_OPSET", 7))
MAX_OPSET = int(getattr(_OPSETS, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20))
INPUT_NAME, OUTPUT_NAME = "input", "logits"

REWRITES = (
    "batchnorm folded into convolutions",
    "involution kernel generator merged into the stem conv",
    "FFM positional channels, bias, real/imag scales and BN folded into conv + bias map",
    "GCE 1x1 compress merged into the dilated convs",
    "LGFM softmax over two logits as a sigmoid gate on pooled streams",
)


@dataclass
class ExportReport:
    """What was written and how it was checked."""

    path: Path
    opset: int
    dynamic_batch: bool
    simplified: bool
    rewritten: bool
    op_histogram: dict[str, int]
    node_count: int
    graph_parameters: int  # elements in initializers and Constant nodes
    torch_parameters: int  # trainable parameters of the PyTorch model
    macs: MacReport  # of the PyTorch model
    export_macs: int  # of what the graph computes (after the rewrites)
    file_bytes: int
    verification: VerifyReport
    info: ModelInfo

    def summary(self) -> str:
        ops = ", ".join(f"{op} {n}" for op, n in self.op_histogram.items())
        batch = "dynamic" if self.dynamic_batch else "1"
        lines = [
            f"wrote {self.path} ({self.file_bytes / 1024:.1f} KiB, opset {self.opset}, "
            f"batch {batch}, {self.info.quantization}, variant {self.info.variant}, "
            f"{len(self.info.classes)} classes, input {self.info.input_size}px)",
            f"verified on {self.verification.summary()}",
            f"nodes: {self.node_count}",
            f"ops: {ops}",
            f"parameters: {self.graph_parameters:,} in the graph, "
            f"{self.torch_parameters:,} trainable in PyTorch",
            f"MACs: {self.export_macs / 1e9:.3f} G in the graph; PyTorch model "
            f"{self.macs.summary()}",
        ]
        return "\n".join(lines)


def graph_parameter_count(model: onnx.ModelProto) -> int:
    """Elements held by initializers and Constant nodes (the exported parameter count)."""
    total = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    total += int(np.prod(attr.t.dims))
    return total


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run torch with ``threads`` intra-op threads (None: leave as is), then restore."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def check_opset(opset: int) -> None:
    """Raise ExportError for an opset the installed exporter (or this graph) cannot produce."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(
            f"opset {opset} is not supported: the installed exporter (torch {torch.__version__}, "
            f"TorchScript-based) produces opsets {MIN_OPSET}..{MAX_OPSET}"
        )


def torch_to_onnx(
    module: torch.nn.Module, input_size: int, opset: int, dynamic_batch: bool
) -> onnx.ModelProto:
    """Trace ``module`` with the TorchScript-based exporter into an in-memory ModelProto."""
    check_opset(opset)
    dummy = torch.zeros(1, 3, input_size, input_size)
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation notes
            torch.onnx.export(
                module, (dummy,), buf, dynamo=False, opset_version=opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_axes=axes,
                do_constant_folding=True,
            )
    except Exception as exc:  # the exporter raises many types
        raise ExportError(
            f"torch ONNX export failed at opset {opset}: {first_line(exc)}"
        ) from None
    return onnx.load_from_string(buf.getvalue())


def simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    """Run onnxsim (constant folding, shape inference, dead-code removal)."""
    import onnxsim

    try:
        simplified, ok = onnxsim.simplify(model)
    except Exception as exc:
        raise ExportError(f"onnxsim failed: {first_line(exc)}") from None
    if not ok:
        raise ExportError("onnxsim could not validate the simplified model")
    return simplified


def _jsonable(value: Any) -> Any:
    """Plain-JSON copy of a (training summary) dict; unknown objects become strings."""
    return json.loads(json.dumps(value, default=str))


def _apply_metadata(
    model: onnx.ModelProto, info: ModelInfo, extra: dict[str, str] | None
) -> None:
    props = info.to_metadata()
    props.update(extra or {})
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    model.producer_name = "lgld-export"
    model.producer_version = info.lgld_version
    model.doc_string = (
        f"LGLD-Net ({info.variant}) blood-cell classifier; classes: {', '.join(info.classes)}"
    )
    model.graph.name = f"lgld_{info.variant}"


def check_writable(target: str | os.PathLike) -> None:
    """Raise ExportError unless a file can be created at ``target`` (nothing is left behind)."""
    target = Path(target)
    if target.is_dir():
        raise ExportError(f"output path is a directory: {target}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(prefix=f".{target.name}.", suffix=".tmp",
                                         dir=target.parent):
            pass
    except OSError as exc:
        raise ExportError(f"cannot write to {target.parent}: {exc.strerror or exc}") from None


def save_atomically(model: onnx.ModelProto, target: Path, check=None) -> Any:
    """Save ``model`` to a temporary file beside ``target``, run ``check(tmp_path)``, then move
    it into place (:func:`~lgld.runtime.core.files.atomic_path`).

    ``check`` may raise (nothing is written) and its return value is passed through.
    """
    target = Path(target)
    if target.is_dir():
        raise ExportError(f"output path is a directory: {target}")
    checking = False
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            onnx.save(model, str(tmp))
            checking = True
            result = check(tmp) if check is not None else None
            checking = False
    except OSError as exc:
        if checking:  # the check's own error, not the file's
            raise
        raise ExportError(f"cannot write {target}: {exc.strerror or exc}") from None
    return result


def build_graph(
    model: LGLDNet,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = False,
    simplify_graph: bool = True,
    rewrite: bool = True,
) -> tuple[onnx.ModelProto, torch.nn.Module]:
    """The ONNX graph (no metadata yet) and the torch module it was traced from."""
    model = copy.deepcopy(model).float().cpu().eval()
    form = ExportLGLDNet.from_model(model) if rewrite else model
    graph = torch_to_onnx(form, model.config.input_size, opset, dynamic_batch)
    if simplify_graph:
        graph = simplify(graph)
    if rewrite:
        try:
            check_graph(graph)
        except ExportError as exc:
            hint = "" if simplify_graph else " (onnxsim removes them: drop --no-simplify)"
            raise ExportError(f"{exc}{hint}") from None
    try:
        onnx.checker.check_model(graph, full_check=True)
    except Exception as exc:
        raise ExportError(f"exported graph is not valid ONNX: {first_line(exc)}") from None
    return graph, form


def write_onnx(
    model: LGLDNet,
    info: ModelInfo,
    out_path: str | os.PathLike,
    opset: int | None = None,
    dynamic_batch: bool = False,
    simplify: bool = True,
    verify_images: ImageSource = None,
    *,
    rewrite: bool = True,
    verify_limit: int | None = None,
    threads: int | None = None,
    extra_metadata: dict[str, str] | None = None,
) -> ExportReport:
    """Export ``model`` (any mode; an eval-mode copy is used) with ``info`` as its metadata.

    ``verify_images``: None (fixed synthetic images), a folder, or a list of paths/BGR arrays.
    ``rewrite=False`` exports the model as written (for comparisons only: forbidden ops such
    as BatchNormalization may remain and are not checked). Raises ExportError; on failure
    nothing is written.
    """
    cfg = model.config
    if len(info.classes) != cfg.num_classes:
        raise ExportError(f"{len(info.classes)} class names for a model with {cfg.num_classes} "
                          "outputs")
    if info.input_size != cfg.input_size:
        raise ExportError(f"preprocessing input size {info.input_size} != model input size "
                          f"{cfg.input_size}")
    if info.variant != cfg.variant:
        raise ExportError(f"metadata variant {info.variant!r} != model variant {cfg.variant!r}")
    opset = DEFAULT_OPSET if opset is None else int(opset)
    info = copy.deepcopy(info)
    info.training = _jsonable(info.training)
    reference = copy.deepcopy(model).float().cpu().eval()
    with torch_threads(threads):
        graph, form = build_graph(reference, opset, dynamic_batch, simplify, rewrite)
    export_meta = {
        "opset": opset,
        "exporter": f"torch {torch.__version__} (TorchScript)",
        "onnx": onnx.__version__,
        "simplified": bool(simplify),
        "dynamic_batch": bool(dynamic_batch),
        "rewrites": list(REWRITES) if rewrite else [],
    }
    extra = {PREFIX + "export": json.dumps(export_meta), **(extra_metadata or {})}
    _apply_metadata(graph, info, extra)

    def verify(tmp: Path) -> VerifyReport:
        report = verify_onnx(tmp, reference, verify_images, threads=threads, limit=verify_limit)
        if not report.ok:
            raise ExportError(f"verification failed, nothing written: {report.summary()}")
        return report

    target = Path(out_path)
    with torch_threads(threads):
        verification = save_atomically(graph, target, verify)
        macs, form_macs = count_macs(reference), count_macs(form)
    return ExportReport(
        path=target,
        opset=opset,
        dynamic_batch=dynamic_batch,
        simplified=simplify,
        rewritten=rewrite,
        op_histogram=op_histogram(graph),
        node_count=len(graph.graph.node),
        graph_parameters=graph_parameter_count(graph),
        torch_parameters=count_parameters(reference),
        macs=macs,
        # the export form's convs/linears plus the (unchanged) involution weighted sum
        export_macs=form_macs.conv_linear + macs.involution if rewrite else macs.total,
        file_bytes=target.stat().st_size,
        verification=verification,
        info=info,
    )


def export_model(
    model: LGLDNet,
    classes: list[str],
    preprocess: PreprocessSpec | None,
    out_path: str | os.PathLike,
    *,
    name: str = "lgld",
    training: dict[str, Any] | None = None,
    **kwargs: Any,
) -> ExportReport:
    """Export an in-memory model (e.g. an untrained one in tests); kwargs go to write_onnx."""
    spec = preprocess or PreprocessSpec(input_size=model.config.input_size)
    info = ModelInfo(
        classes=list(classes), preprocess=spec, variant=model.config.variant, name=name,
        training=training or {}, lgld_version=lgld_version(),
    )
    return write_onnx(model, info, out_path, **kwargs)


def export_checkpoint(
    ckpt_path: str | os.PathLike,
    out_path: str | os.PathLike,
    opset: int | None = None,
    dynamic_batch: bool = False,
    simplify: bool = True,
    verify_images: ImageSource = None,
    **kwargs: Any,
) -> ExportReport:
    """Export an ``lgld-train`` checkpoint. Raises CheckpointError or ExportError.

    Extra kwargs (``name``, ``rewrite``, ``verify_limit``, ``threads``, ``extra_metadata``) go
    to :func:`write_onnx`; ``name`` defaults to the training summary's data set name.
    """
    ckpt = load_checkpoint(ckpt_path)
    model = ckpt.build_model()
    training = _jsonable(ckpt.training)
    info = ModelInfo(
        classes=ckpt.classes,
        preprocess=ckpt.preprocess,
        variant=ckpt.config.variant,
        name=kwargs.pop("name", None) or str(training.get("dataset") or "lgld"),
        training=training,
        checkpoint_sha256=file_sha256(ckpt_path),
        lgld_version=lgld_version(),
    )
    return write_onnx(
        model, info, out_path, opset=opset, dynamic_batch=dynamic_batch, simplify=simplify,
        verify_images=verify_images, **kwargs,
    )
