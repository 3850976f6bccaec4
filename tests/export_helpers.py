"""Shared helpers for tests that need tiny models, checkpoints or ONNX exports.

``export_tiny_onnx`` gives runtime tests a real lgld ONNX model in about a second.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from lgld.models.checkpoint import save_checkpoint
from lgld.models.lgld_net import LGLDNet, ModelConfig
from lgld.runtime.core.preprocess import PreprocessSpec

CLASSES = ["Benign", "Early", "Pre", "Pro"]
DATA = Path(__file__).resolve().parent / "data" / "zoo_samples"  # bundled samples


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BatchNorm non-trivial statistics and affine weights (so folding is tested)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                n = mod.num_features
                mod.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
                mod.running_var.copy_(torch.rand(n, generator=gen) * 2 + 0.1)
                mod.weight.copy_(torch.randn(n, generator=gen))
                mod.bias.copy_(torch.randn(n, generator=gen))
    return model


def make_model(
    size: int = 32, variant: str = "full", num_classes: int = 4, seed: int = 0
) -> LGLDNet:
    """A random eval-mode LGLD-Net with randomized BN statistics."""
    torch.manual_seed(seed)
    model = LGLDNet(ModelConfig(num_classes=num_classes, input_size=size, variant=variant))
    return randomize_bn(model, seed).eval()


def make_checkpoint(
    path: str | os.PathLike,
    size: int = 64,
    variant: str = "full",
    classes: list[str] | None = None,
    training: dict | None = None,
) -> LGLDNet:
    """Write a checkpoint of a random model (randomized BN) and return the model."""
    classes = classes or CLASSES
    model = make_model(size, variant, len(classes))
    summary = training if training is not None else {
        "dataset": "toy", "epochs": 1, "val": {"accuracy": 0.5, "macro_f1": 0.4},
    }
    save_checkpoint(path, model, classes, PreprocessSpec(input_size=size), training=summary)
    return model


def export_tiny_onnx(
    path: str | os.PathLike,
    size: int = 32,
    variant: str = "full",
    classes: list[str] | None = None,
    **kwargs,
) -> Path:
    """Export a tiny random model to ``path`` (verified like any export) and return the path."""
    from lgld.export.onnx_export import export_model

    classes = classes or CLASSES
    model = make_model(size, variant, len(classes))
    kwargs.setdefault("threads", 1)
    export_model(model, classes, PreprocessSpec(input_size=size), path, **kwargs)
    return Path(path)


def sample_folder(dest: Path, per_class: int = 2, dataset: str = "ALL") -> Path | None:
    """Copy a few bundled sample images per class into ``dest`` (None if absent)."""
    root = DATA / dataset
    if not root.is_dir():
        return None
    for cls_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        images = sorted(cls_dir.glob("*.jpg"))[:per_class]
        if not images:
            return None
        (dest / cls_dir.name).mkdir(parents=True, exist_ok=True)
        for img in images:
            shutil.copy(img, dest / cls_dir.name / img.name)
    return dest
