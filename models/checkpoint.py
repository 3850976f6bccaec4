"""Checkpoint I/O: weights plus everything needed to use them, loadable without unpickling code.

A checkpoint is a ``torch.save``'d dict of tensors and plain Python values only, read back with
``torch.load(weights_only=True)``::

    {"format": "lgld-checkpoint", "format_version": 1,
     "config": ModelConfig fields, "classes": [names], "preprocess": PreprocessSpec fields,
     "training": {...summary...}, "state_dict": {name: tensor}, "extra": {...}}

``extra`` is free for the trainer (optimizer state, epoch, RNG state for exact resume).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lgld.models.lgld_net import LGLDNet, ModelConfig
from lgld.runtime.core.files import (
    atomic_path,
    file_sha256,  # noqa: F401  (re-exported)
)
from lgld.runtime.core.preprocess import PreprocessSpec

FORMAT = "lgld-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, not an lgld checkpoint, or does not fit."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model's description plus its weights."""

    config: ModelConfig
    classes: list[str]
    preprocess: PreprocessSpec
    state_dict: dict[str, torch.Tensor]
    training: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def build_model(self) -> LGLDNet:
        """A model in eval mode with these weights loaded (strictly)."""
        model = LGLDNet(self.config)
        load_weights(model, self.state_dict)
        return model.eval()


def load_weights(model: LGLDNet, state_dict: dict[str, torch.Tensor]) -> None:
    """Load weights strictly, turning shape/key mismatches into one clear CheckpointError."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"weights do not fit this model (variant {model.config.variant!r}): "
            f"{len(missing)} missing (e.g. {missing[:2]}), {len(unexpected)} unexpected "
            f"(e.g. {unexpected[:2]})"
        )
    for name, tensor in state_dict.items():
        if tuple(tensor.shape) != tuple(own[name].shape):
            raise CheckpointError(
                f"weights do not fit this model: {name} has shape {tuple(tensor.shape)}, "
                f"the model expects {tuple(own[name].shape)} "
                f"(num_classes={model.config.num_classes})"
            )
    model.load_state_dict(state_dict, strict=True)


_NORM_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


def weights_across_norms(model: LGLDNet, state_dict: dict[str, torch.Tensor]
                         ) -> dict[str, torch.Tensor]:
    """``state_dict`` (of a model with another ``norm``) made loadable into ``model``.

    BatchNorm and GroupNorm share their scale and shift (``weight``, ``bias``); only
    BatchNorm's running statistics differ: dropped where ``model`` has none, and ``model``'s own
    (fresh) ones kept where the weights have none. Every other weight must still fit.
    """
    own = model.state_dict()
    kept = {k: v for k, v in state_dict.items()
            if k in own or not k.endswith(_NORM_STATISTICS)}
    fresh = {k: v for k, v in own.items() if k not in kept and k.endswith(_NORM_STATISTICS)}
    return {**kept, **fresh}


def save_checkpoint(
    path: str | os.PathLike,
    model: LGLDNet,
    classes: list[str],
    preprocess: PreprocessSpec,
    training: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically (temporary file, then rename). Returns the path."""
    if len(classes) != model.config.num_classes:
        raise CheckpointError(
            f"{len(classes)} class names for a model with {model.config.num_classes} outputs"
        )
    if preprocess.input_size != model.config.input_size:
        raise CheckpointError(
            f"preprocessing input size {preprocess.input_size} != model input size "
            f"{model.config.input_size}"
        )
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "classes": list(classes),
        "preprocess": preprocess.to_dict(),
        "training": training or {},
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": extra or {},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(
    path: str | os.PathLike,
    expect_classes: list[str] | None = None,
    expect_input_size: int | None = None,
) -> Checkpoint:
    """Read and validate a checkpoint. Raises CheckpointError with a one-line reason."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt zip, truncated file, pickled code, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {first[:200]}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an lgld checkpoint")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {payload.get('format_version')}, "
            f"this lgld reads version {FORMAT_VERSION}"
        )
    try:
        config = ModelConfig(**payload["config"])
        preprocess = PreprocessSpec.from_dict(payload["preprocess"])
        classes = [str(c) for c in payload["classes"]]
        state_dict = payload["state_dict"]
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} is a damaged lgld checkpoint: {exc}") from None
    if len(classes) != config.num_classes:
        raise CheckpointError(f"{path}: {len(classes)} classes but {config.num_classes} outputs")
    if expect_classes is not None and list(expect_classes) != classes:
        raise CheckpointError(
            f"{path} was trained for classes {classes}, expected {list(expect_classes)}"
        )
    if expect_input_size is not None and expect_input_size != config.input_size:
        raise CheckpointError(
            f"{path} was built for input size {config.input_size}, expected {expect_input_size}"
        )
    return Checkpoint(
        config=config,
        classes=classes,
        preprocess=preprocess,
        state_dict=state_dict,
        training=payload.get("training") or {},
        extra=payload.get("extra") or {},
    )


def release_copy(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy a training checkpoint for distribution: weights and description only.

    Drops the optimizer and RNG state (kept for ``--resume``) but keeps the run's identity
    (data, recipe, seed, input size) so the model card can say how it was made.
    """
    ckpt = load_checkpoint(src)
    run = ckpt.extra.get("run", {})
    return save_checkpoint(
        dst, ckpt.build_model(), ckpt.classes, ckpt.preprocess, ckpt.training,
        extra={"run": run, "epoch": ckpt.extra.get("epoch", 0)},
    )
