"""Unsupervised adaptation of a trained model to a new microscope (``lgld-adapt``'s methods).

* :func:`adabn` re-estimates every BatchNorm layer's running statistics on the new
  microscope's cells (Li et al., AdaBN, 2016) and blends them with the source statistics:
  ``blend`` 1.0 is plain AdaBN, 0.0 leaves the model as it was. With a few dozen cells the
  full swap is noisy; a blend keeps what the source statistics know.
* :func:`tent` then minimises the entropy of the model's predictions on those cells (Wang et
  al., TENT, 2021), changing only the BatchNorm affine parameters (scale and shift), with
  the (adapted) running statistics fixed, so the result exports like any model.

Inputs are the cells a count session saved (:func:`session_crops`): no labels.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lgld.runtime.core.jsonlog import read_records
from lgld.runtime.core.preprocess import PreprocessSpec, preprocess_batch, read_image


class AdaptError(ValueError):
    """A log, session or crop folder that cannot feed an adaptation."""


@dataclass
class SessionCells:
    """A count session's counted cells with a saved crop, and their reviewed labels."""

    session: str
    crops: list[Path]
    labels: list[str | None]  # after review: the class; None = unreviewed

    def reviewed(self) -> list[tuple[Path, str]]:
        return [(c, k) for c, k in zip(self.crops, self.labels, strict=True) if k]


def session_cells(log_path: str | os.PathLike, session: str | None = None,
                  crops_dir: str | os.PathLike | None = None) -> SessionCells:
    """The counted cells of a session (the last one by default) with their crops. Crop paths
    are logged relative to the log's folder; ``crops_dir`` stands in for that folder when the
    crops were copied elsewhere. Rejected cells (not white cells) are left out."""
    log_path = Path(log_path)
    if not log_path.is_file():
        raise AdaptError(f"log not found: {log_path}")
    base = Path(crops_dir) if crops_dir else log_path.resolve().parent
    cells: dict[str, list[dict]] = {}
    reviews: dict[str, dict] = {}
    for r in read_records(log_path):
        sid = r.get("session")
        if not isinstance(sid, str):
            continue
        if r.get("event") == "cell" and isinstance(r.get("crop"), str):
            cells.setdefault(sid, []).append(r)
        elif r.get("event") == "review":
            reviews.setdefault(sid, {})[str(r.get("track"))] = r
    if not cells:
        raise AdaptError(f"{log_path}: no counted cell with a saved crop (count with "
                         "[http] snapshot_dir set)")
    sid = session or list(cells)[-1]
    if sid not in cells:
        raise AdaptError(f"{log_path}: no session {sid[:40]!r} with saved crops")
    out = SessionCells(sid, [], [])
    for cell in cells[sid]:
        review = reviews.get(sid, {}).get(str(cell.get("track")))
        action = review.get("action") if review else None
        if action == "reject":
            continue
        out.crops.append(base / cell["crop"])
        out.labels.append(str(cell.get("class")) if action == "confirm" else
                          str(review.get("class")) if action == "reclassify" else None)
    missing = [p for p in out.crops if not p.is_file()]
    if missing:
        raise AdaptError(f"{len(missing)} of {len(out.crops)} crops of session {sid} not "
                         f"found, e.g. {missing[0]} (pass the folder the crops were copied to "
                         "as --crops)")
    return out


def load_inputs(paths: Sequence[Path], spec: PreprocessSpec) -> torch.Tensor:
    """Image files -> the model's (N, 3, S, S) input tensor."""
    return torch.from_numpy(preprocess_batch([read_image(p) for p in paths], spec))


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def norm_layers(model: nn.Module) -> list[nn.Module]:
    """The normalisation layers whose scale and shift TENT adapts: BatchNorm or GroupNorm."""
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm | nn.GroupNorm)]


@torch.no_grad()
def adabn(model: nn.Module, inputs: torch.Tensor, blend: float = 0.5,
          batch_size: int = 64) -> nn.Module:
    """Blend every BatchNorm's running statistics towards those of ``inputs`` (in place)."""
    if not 0.0 <= blend <= 1.0:
        raise AdaptError(f"blend must be in [0, 1], got {blend}")
    if blend == 0.0:  # the statistics stay the model's: no forward pass needed (and a
        return model.eval()  # GroupNorm model, with none to re-estimate, passes)
    norms = batch_norms(model)
    if not norms:
        raise AdaptError("the model has no BatchNorm layers: nothing to re-estimate")
    source = [(bn.running_mean.clone(), bn.running_var.clone(), bn.momentum) for bn in norms]
    model.eval()
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over all batches
        bn.train()
    for i in range(0, len(inputs), batch_size):
        chunk = inputs[i : i + batch_size]
        if len(chunk) > 1:  # one sample gives no variance
            model(chunk)
    for bn, (mean, var, momentum) in zip(norms, source, strict=True):
        bn.running_mean.mul_(blend).add_(mean, alpha=1 - blend)
        bn.running_var.mul_(blend).add_(var, alpha=1 - blend)
        bn.momentum = momentum
    return model.eval()


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean Shannon entropy of the softmax of each row."""
    logp = logits.log_softmax(dim=1)
    return -(logp.exp() * logp).sum(dim=1).mean()


def tent(model: nn.Module, inputs: torch.Tensor, steps: int = 10, lr: float = 1e-3,
         batch_size: int = 32, seed: int = 0) -> list[float]:
    """Entropy minimisation on the normalisation scales and shifts only (in place; BatchNorm
    or GroupNorm); the mean entropy before each step."""
    norms = norm_layers(model)
    if not norms:
        raise AdaptError("the model has no normalisation layers: nothing to adapt")
    model.eval()  # running statistics stay fixed: the result exports as it was trained
    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for bn in norms for p in (bn.weight, bn.bias) if p is not None]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    rng = np.random.default_rng(seed)
    history = []
    for _ in range(steps):
        pick = torch.from_numpy(rng.choice(len(inputs), min(batch_size, len(inputs)),
                                           replace=False))
        loss = entropy(model(inputs[pick]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
    for p in model.parameters():
        p.requires_grad_(True)
    return history
