"""A short supervised fine-tune on a few reviewed cells of a new microscope (``lgld-adapt
--reviewed``), with crops of the model's own training data mixed in.

With tens of cells only the classifier layer learns: the pooled features of each cell (four
quarter turns of it: cells have no orientation) are computed once with the (adapted) network,
and the last linear layer is fitted on them, starting from its trained weights and pulled back
towards them (an L2 anchor), so a handful of cells cannot drag the whole network to them. It
takes seconds on a CPU after one forward pass per view. :func:`refit_head` is the
alternative measured beside it: the same layer refitted as a regularised logistic regression
(deterministic L-BFGS), classes without reviewed cells kept. Measured in docs/lab-loop.md.
"""

from __future__ import annotations

import torch
from torch import nn

from lgld.models.lgld_net import LGLDNet


@torch.no_grad()
def pooled_features(model: LGLDNet, x: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """(N, C) inputs of the model's last linear layer (eval mode)."""
    model.eval()
    head = model.head[:-2]  # conv, norm, activation, pool, flatten (dropout and linear left)
    out = []
    for i in range(0, len(x), batch_size):
        chunk = x[i : i + batch_size]
        local = model.lfa(model.local_stem(chunk))
        out.append(head(model.lgfm(local, model.gce(model.global_stem(chunk)))))
    return torch.cat(out) if out else torch.zeros((0, model.head[-1].in_features))


def quarter_turns(x: torch.Tensor, turns: int = 4) -> torch.Tensor:
    """The images and their quarter turns, view-major: (turns * N, ...)."""
    return torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(turns)])


def fit_classifier(linear: nn.Linear, feats: torch.Tensor, y: torch.Tensor,
                   steps: int = 300, lr: float = 1e-2, anchor: float = 1e-2,
                   label_smoothing: float = 0.05) -> list[float]:
    """Fit a model's last linear layer on features (in place): cross-entropy plus ``anchor``
    times the squared distance to its trained weights. The loss every 50 steps."""
    w0, b0 = linear.weight.detach().clone(), linear.bias.detach().clone()
    opt = torch.optim.Adam([linear.weight, linear.bias], lr=lr)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    history = []
    for step in range(steps):
        loss = loss_fn(linear(feats), y.long())
        loss = loss + anchor * (((linear.weight - w0) ** 2).sum() + ((linear.bias - b0) ** 2).sum())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            history.append(float(loss.detach()))
    return history


def finetune(model: LGLDNet, x: torch.Tensor, y: torch.Tensor,
             mix_x: torch.Tensor | None = None, mix_y: torch.Tensor | None = None,
             turns: int = 4, **fit: float) -> list[float]:
    """Fine-tune the classifier layer on reviewed cells (x, y), every quarter turn of them,
    plus mixed-in training images (mix_x, mix_y, one view each)."""
    if not len(x):
        return []
    feats = pooled_features(model, quarter_turns(x, turns))
    labels = y.repeat(turns)
    if mix_x is not None and len(mix_x):
        # the mixed images weigh as their number, not their number of views
        mix_f = pooled_features(model, mix_x)
        feats = torch.cat([feats, mix_f.repeat(turns, 1)])
        labels = torch.cat([labels, mix_y.repeat(turns)])
    return fit_classifier(model.head[-1], feats, labels, **fit)


def refit_head(linear: nn.Linear, feats: torch.Tensor, y: torch.Tensor, l2: float = 0.1,
               balanced: bool = True, max_iter: int = 200) -> dict:
    """Refit a model's last linear layer on frozen features (in place): class-balanced
    logistic regression pulled towards the trained weights, ``l2 / 2`` times the squared
    distance of each refitted class's row (weights and bias) to its trained one. Only the rows
    of classes with at least one labelled feature move; the others keep the trained rows, so a
    lab that reviewed no basophil keeps the model's basophils. Deterministic (full-batch
    L-BFGS). Returns the classes refitted and the loss before and after."""
    y = y.long()
    n_classes = linear.out_features
    if not len(y) or int(y.min()) < 0 or int(y.max()) >= n_classes:
        raise ValueError(f"labels must be class indices in [0, {n_classes})")
    if l2 <= 0:
        raise ValueError(f"l2 must be > 0, got {l2}")
    counts = torch.bincount(y, minlength=n_classes).float()
    present = counts > 0
    weight = (counts.sum() / (present.sum() * counts.clamp(min=1))) * present if balanced \
        else present.float()
    w0, b0 = linear.weight.detach().clone(), linear.bias.detach().clone()
    dw = torch.zeros_like(w0, requires_grad=True)
    db = torch.zeros_like(b0, requires_grad=True)
    mask = present.float()
    feats = feats.detach()

    def loss_of(dw_: torch.Tensor, db_: torch.Tensor) -> torch.Tensor:
        dw_m, db_m = dw_ * mask[:, None], db_ * mask
        logits = feats @ (w0 + dw_m).T + (b0 + db_m)
        ce = nn.functional.cross_entropy(logits, y, weight=weight)
        return ce + l2 / 2 * ((dw_m ** 2).sum() + (db_m ** 2).sum())

    opt = torch.optim.LBFGS([dw, db], lr=1.0, max_iter=max_iter,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_of(dw, db)
        loss.backward()
        return loss

    with torch.no_grad():
        before = float(loss_of(torch.zeros_like(dw), torch.zeros_like(db)))
    opt.step(closure)
    with torch.no_grad():
        linear.weight.copy_(w0 + dw * mask[:, None])
        linear.bias.copy_(b0 + db * mask)
        after = float(loss_of(dw, db))
    return {"refitted": present.nonzero().flatten().tolist(), "loss_before": before,
            "loss_after": after}
