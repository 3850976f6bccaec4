"""Which model is timed and which PyTorch weights match it.

The timed model is resolved exactly as ``lgld-run --model`` resolves it. Rows 1-2 need the
PyTorch checkpoint with the same weights: ``--checkpoint``, else the ``.pt`` next to the model
(a dev checkout's ``zoo/``; the runtime install ships no checkpoints), accepted only when
its sha256 matches the model's metadata.
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lgld.bench import BenchError
from lgld.bench.machine import torch_or_none
from lgld.bench.onnx_macs import onnx_macs
from lgld.runtime.core.classifier import OnnxClassifier
from lgld.runtime.core.files import file_sha256
from lgld.runtime.core.modelinfo import ModelInfo
from lgld.runtime.core.zoo import ZOO, resolve_model, zoo_dir


@dataclass
class Models:
    onnx_path: Path  # timed in row 3
    info: ModelInfo
    input_size: int
    torch_model: Any = None  # LGLDNet, eval mode
    reference: Any = None  # ReferenceLGLDNet, same weights
    parity_onnx: Path | None = None  # ONNX with torch_model's weights, for the output check
    int8_path: Path | None = None
    weights: str = ""
    macs: int | None = None
    macs_source: str = "unknown"
    notes: list[str] = field(default_factory=list)
    torch_skip: str = ""  # why rows 1-2 are skipped ("" when they run)


def find_int8(onnx_path: Path, explicit: str | None) -> Path | None:
    """The INT8 model: --int8 PATH, else <stem>.int8.onnx / -int8 / _int8 next to the model."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise BenchError(f"INT8 model not found: {path}")
        return path
    for suffix in (".int8.onnx", "-int8.onnx", "_int8.onnx"):
        candidate = onnx_path.with_name(onnx_path.stem + suffix)
        if candidate.is_file():
            return candidate
    return None


def is_shipped(spec: str, path: Path) -> bool:
    """True for a zoo model (by name, or a path into the installed zoo)."""
    return spec.strip().lower() in ZOO or path.parent == zoo_dir()


def checkpoint_candidates(path: Path, shipped: bool) -> list[Path]:
    """Where the .pt of a model may lie: next to it; for a shipped model also in the dev
    checkout the command runs in (``./zoo``), since installs carry no checkpoints."""
    candidates = [path.with_suffix(".pt")]
    checkout = Path.cwd() / "zoo" / path.with_suffix(".pt").name
    if shipped and checkout.resolve() != candidates[0].resolve():
        candidates.append(checkout)
    return candidates


def export_onnx(model: Any, info: ModelInfo, size: int, out: Path) -> Path:
    """``model`` exported with ``info``'s classes and preprocessing at ``size`` px."""
    from lgld.export.onnx_export import export_model

    spec = replace(info.preprocess, input_size=size)
    export_model(model, info.classes, spec, out, name=info.name)
    return out


def export_at_size(m: Models, size: int, tmp: Path) -> tuple[Path, int]:
    """m's PyTorch weights exported at ``size`` px; (path, MACs at that size)."""
    from lgld.models.macs import count_macs

    model = copy.deepcopy(m.torch_model)
    model.set_input_size(size)
    return export_onnx(model, m.info, size, tmp / f"menu-{size}.onnx"), count_macs(model).total


def _without_torch_rows(m: Models, clf: OnnxClassifier, reason: str, weights: str,
                        needs: str = "torch + onnx to re-export (pip install 'lgld[train]')"
                        ) -> Models:
    """Rows 1-2 skipped for ``reason``: MACs from the ONNX model, no re-export possible."""
    if m.input_size != m.info.input_size:
        raise BenchError(
            f"--input-size {m.input_size} differs from the model's {m.info.input_size} px and "
            f"needs {needs}, or pass a model exported at {m.input_size} px"
        )
    m.notes.append(f"rows 1-2 skipped: {reason}")
    m.torch_skip, m.weights = reason, weights
    m.macs, m.macs_source = onnx_macs(clf)
    return m


def _matching_checkpoint(args: argparse.Namespace, path: Path, info: ModelInfo,
                         notes: list[str]) -> tuple[Path | None, bool, bool]:
    """(checkpoint, its sha256 matches the ONNX, a shipped model's checkpoint is missing)."""
    shipped = not args.checkpoint and is_shipped(args.model, path)
    candidates = ([Path(args.checkpoint)] if args.checkpoint
                  else checkpoint_candidates(path, shipped))
    for candidate in candidates:
        if not candidate.is_file():
            continue
        sha = file_sha256(candidate)
        if info.checkpoint_sha256 and sha != info.checkpoint_sha256:
            message = (f"checkpoint {candidate} does not match the model (sha256 "
                       f"{sha[:12]} != metadata {info.checkpoint_sha256[:12]})")
            if args.checkpoint:
                raise BenchError(message)
            notes.append(message + "; not used")
            continue
        return candidate, bool(info.checkpoint_sha256), False
    if args.checkpoint:
        raise BenchError(f"checkpoint not found: {candidates[0]}")
    return None, False, shipped


def prepare_models(args: argparse.Namespace, tmp: Path) -> Models:
    """Resolve the model, find matching weights and build what every row needs."""
    torch = torch_or_none()
    path = resolve_model(args.model)
    if path.suffix == ".pt":
        if torch is None:
            raise BenchError(f"{path} is a PyTorch checkpoint: that needs torch (lgld[train])")
        from lgld.export.onnx_export import export_checkpoint

        exported = tmp / f"{path.stem}.onnx"
        export_checkpoint(path, exported)
        ckpt_path, onnx_path = path, exported
    else:
        ckpt_path, onnx_path = None, path
    clf = OnnxClassifier(onnx_path, threads=1)
    info = clf.info
    m = Models(onnx_path=onnx_path, info=info, input_size=args.input_size or info.input_size)
    m.int8_path = find_int8(path, args.int8) if args.int8 or path.suffix == ".onnx" else None
    if torch is None:
        return _without_torch_rows(m, clf, "torch is not installed (the runtime needs none)",
                                   "n/a (no torch)")

    from lgld.bench.reference import reference_like
    from lgld.models.checkpoint import CheckpointError, load_checkpoint
    from lgld.models.lgld_net import LGLDNet, ModelConfig
    from lgld.models.macs import count_macs

    size, notes = m.input_size, m.notes
    if ckpt_path is None:
        ckpt_path, weights_match_onnx, missing = _matching_checkpoint(args, path, info, notes)
        if missing:
            pt = path.with_suffix(".pt").name
            return _without_torch_rows(
                m, clf, f"no checkpoint {pt} next to {path.parent} or in ./zoo (the "
                "runtime install ships no .pt; run from a dev checkout or pass --checkpoint)",
                "n/a (no checkpoint)", needs=f"its checkpoint {pt} to re-export")
    else:
        weights_match_onnx = True
        if size == info.input_size:
            notes.append(f"row 3 is a temporary export of {path}")
    if ckpt_path is not None:
        try:
            ckpt = load_checkpoint(ckpt_path, expect_classes=info.classes)
        except CheckpointError as exc:
            raise BenchError(str(exc)) from None
        model = ckpt.build_model()
        verified = ("row 3 exported from it in this run" if path.suffix == ".pt" else
                    "sha256 verified" if weights_match_onnx else "no sha256 in the model to check")
        m.weights = f"checkpoint {ckpt_path} ({verified})"
    else:
        torch.manual_seed(0)
        config = ModelConfig(num_classes=len(info.classes), input_size=info.input_size,
                             variant=info.variant)
        model = LGLDNet(config).eval()
        m.weights = "random (no checkpoint next to the model)"
        notes.append(
            "rows 1-2 use random weights with the model's config (classes, input size, variant, "
            "base width 64): latency does not depend on weight values"
        )
    if size != model.config.input_size:
        model.set_input_size(size)
    m.torch_model = model.eval()
    m.reference = reference_like(m.torch_model)
    m.macs, m.macs_source = count_macs(m.torch_model).total, "lgld.models.macs.count_macs"
    _choose_parity_onnx(m, info, weights_match_onnx, tmp)
    return m


def _choose_parity_onnx(m: Models, info: ModelInfo, weights_match_onnx: bool, tmp: Path) -> None:
    """The ONNX file row 3 times and the one the outputs are checked on (temporary exports of
    the torch weights where the given model is another size or other weights)."""
    size, notes = m.input_size, m.notes
    try:
        if size != info.input_size:
            m.onnx_path = export_onnx(m.torch_model, info, size, tmp / f"model-{size}.onnx")
            m.parity_onnx = m.onnx_path
            m.int8_path = None
            notes.append(f"row 3 is a temporary export at {size} px of the same weights")
        elif weights_match_onnx:
            m.parity_onnx = m.onnx_path
        else:
            m.parity_onnx = export_onnx(m.torch_model, info, size, tmp / "parity.onnx")
            notes.append("outputs checked on a temporary export of the same weights as rows "
                         "1-2; row 3 times the given model")
    except ImportError as exc:
        if size != info.input_size:
            raise BenchError(f"--input-size {size} needs lgld.export (onnx, onnxsim): "
                             f"{exc}") from None
        notes.append(f"output check skipped: lgld.export unavailable ({exc})")
