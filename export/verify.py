"""Export-time checks: the graph holds no forbidden ops, and ONNX Runtime matches PyTorch.

The ONNX side runs through the runtime's own
:class:`~lgld.runtime.core.classifier.OnnxClassifier` and preprocessing (the model's embedded
metadata), so what is verified is what the Pi will run.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from lgld.export import ExportError
from lgld.runtime.core.classifier import ModelLoadError, OnnxClassifier
from lgld.runtime.core.files import IMAGE_SUFFIXES
from lgld.runtime.core.preprocess import preprocess_batch, read_image

# im2col (Unfold) Gather chains, run-time positional encodings and unfolded BN are not allowed.
FORBIDDEN_OPS = frozenset(
    {"BatchNormalization", "Gather", "GatherElements", "GatherND", "Col2Im", "Sin", "Cos",
     "Range", "Loop", "If"}
)

ATOL = 1e-4  # max |logit difference| between ONNX Runtime and PyTorch, per unit of logit scale
TIE = 1e-6  # a top-1 "mismatch" between logits tied to within this is not a mismatch


def op_histogram(model: onnx.ModelProto) -> dict[str, int]:
    """Node count per op type (including any nested graphs), most frequent first."""
    counts: Counter[str] = Counter()

    def visit(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            counts[node.op_type] += 1
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g)
                for sub in attr.graphs:
                    visit(sub)

    visit(model.graph)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def check_graph(model: onnx.ModelProto) -> None:
    """Raise ExportError if the graph holds an op from :data:`FORBIDDEN_OPS`."""
    found = sorted(set(op_histogram(model)) & FORBIDDEN_OPS)
    if found:
        raise ExportError(f"exported graph contains forbidden ops: {', '.join(found)}")


def find_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ExportError(f"image folder not found: {folder}")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def synthetic_images(size: int, count: int = 8, seed: int = 0) -> list[np.ndarray]:
    """A fixed set of BGR uint8 test images: noise, gradients, stripes, flat colours, blobs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    images = [
        rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        np.stack([xx, yy, 1 - xx], axis=-1) * 255,
        np.stack([np.sin(12 * xx) * 0.5 + 0.5] * 3, axis=-1) * 255,
        np.full((size, size, 3), (200, 160, 220), np.float32),
        np.zeros((size, size, 3), np.float32),
    ]
    while len(images) < count:  # smooth random blobs, roughly cell-like
        canvas = np.full((size, size, 3), rng.uniform(150, 240, 3), np.float32)
        for _ in range(4):
            cy, cx, r = rng.uniform(0, 1, 2).tolist() + [rng.uniform(0.05, 0.3)]
            mask = ((yy - cy) ** 2 + (xx - cx) ** 2) < r * r
            canvas[mask] = rng.uniform(40, 200, 3)
        images.append(canvas)
    return [np.clip(im, 0, 255).astype(np.uint8) for im in images[:count]]


ImageSource = str | os.PathLike | Sequence[str | os.PathLike | np.ndarray] | None


def verify_items(
    source: ImageSource, size: int, limit: int | None = None
) -> tuple[list[Path | np.ndarray], str]:
    """Images (paths or BGR arrays) for verification and a short description of their origin.

    ``source``: None (synthetic images), a folder (every image under it, or ``limit`` of them
    evenly spread), or a sequence of paths and/or BGR uint8 arrays.
    """
    if source is None:
        items: list[Path | np.ndarray] = list(synthetic_images(size))
        return items, f"{len(items)} synthetic images"
    if isinstance(source, str | os.PathLike):
        items = list(find_images(source))
        if not items:
            raise ExportError(f"no images found in {source}")
        if limit and len(items) > limit:
            items = [items[i] for i in np.linspace(0, len(items) - 1, limit).round().astype(int)]
        return items, f"{len(items)} images from {source}"
    items = [im if isinstance(im, np.ndarray) else Path(im) for im in source]
    if not items:
        raise ExportError("no verification images given")
    return items, f"{len(items)} given images"


def _as_bgr(item: Path | np.ndarray) -> np.ndarray:
    return item if isinstance(item, np.ndarray) else read_image(item)


@dataclass(frozen=True)
class VerifyReport:
    """ONNX Runtime vs PyTorch on the same preprocessed inputs."""

    source: str
    images: int
    max_abs_diff: float
    top1_mismatches: int
    atol: float = ATOL
    scale: float = 1.0  # max(1, largest |reference logit|): float32 error grows with it

    @property
    def limit(self) -> float:
        return self.atol * self.scale

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.limit and self.top1_mismatches == 0

    def summary(self) -> str:
        same = self.images - self.top1_mismatches
        scaled = f" = {self.atol:.0e} x max |logit| {self.scale:.1f}" if self.scale > 1 else ""
        return (
            f"{self.source}: max |logit diff| {self.max_abs_diff:.2e} (limit "
            f"{self.limit:.2e}{scaled}), top-1 identical on {same}/{self.images}"
        )


def compare_logits(
    reference: np.ndarray, candidate: np.ndarray, source: str, atol: float = ATOL
) -> VerifyReport:
    """Compare two (N, classes) logit arrays."""
    if reference.shape != candidate.shape:
        raise ExportError(f"output shapes differ: {reference.shape} vs {candidate.shape}")
    diff = float(np.max(np.abs(reference - candidate))) if reference.size else 0.0
    if not np.isfinite(diff):
        diff = float("inf")
    ref_top = reference.argmax(axis=1)
    cand_top = candidate.argmax(axis=1)
    rows = np.arange(len(reference))
    tied = reference[rows, ref_top] - reference[rows, cand_top] <= TIE
    mismatches = int(np.sum((ref_top != cand_top) & ~tied))
    scale = max(1.0, float(np.max(np.abs(reference)))) if reference.size else 1.0
    if not np.isfinite(scale):
        scale = 1.0
    return VerifyReport(source, len(reference), diff, mismatches, atol, scale)


def torch_logits(model: torch.nn.Module, batch: np.ndarray) -> np.ndarray:
    """Eval-mode PyTorch logits for a preprocessed (N, 3, S, S) batch."""
    with torch.inference_mode():
        return model(torch.from_numpy(batch)).float().numpy()


def verify_onnx(
    onnx_path: str | os.PathLike,
    model: torch.nn.Module,
    images: ImageSource = None,
    threads: int | None = None,
    atol: float = ATOL,
    limit: int | None = None,
    chunk: int = 16,
) -> VerifyReport:
    """Run ``images`` through ONNX Runtime (via OnnxClassifier) and ``model``; compare logits.

    Inputs are preprocessed with the ONNX model's *embedded* preprocessing spec and fed to
    both, so the comparison isolates the network. Does not raise on a mismatch: see ``.ok``.
    """
    try:
        clf = OnnxClassifier(onnx_path, threads=threads)
    except ModelLoadError as exc:
        raise ExportError(f"ONNX Runtime cannot load the export: {exc}") from None
    items, source = verify_items(images, clf.info.input_size, limit)
    model = model.eval()
    reference, candidate = [], []
    for i in range(0, len(items), chunk):
        batch = preprocess_batch([_as_bgr(it) for it in items[i : i + chunk]], clf.info.preprocess)
        reference.append(torch_logits(model, batch))
        candidate.append(clf.logits(batch))
    return compare_logits(np.concatenate(reference), np.concatenate(candidate), source, atol)
