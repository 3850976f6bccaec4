"""Multiply-accumulate (MAC) counter for LGLD-Net, counted the usual way.

Conv2d and Linear layers count ``output elements x (input channels / groups) x kernel area``
multiply-adds (this is what the paper and tools such as thop/ptflops report as "FLOPs").
The involution's own weighted sum (``C x K*K`` multiply-adds per output pixel) is not a conv
and is reported separately; its kernel generator convs count as convs. Elementwise ops,
BatchNorm, activations and pooling are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lgld.models.lgld_net import Involution, LGLDNet


@dataclass(frozen=True)
class MacReport:
    conv_linear: int  # Conv2d + Linear multiply-adds
    involution: int  # the involution's weighted sum over K*K neighbours

    @property
    def total(self) -> int:
        return self.conv_linear + self.involution

    def summary(self) -> str:
        return (
            f"{self.total / 1e9:.3f} GMACs total = {self.conv_linear / 1e9:.3f} conv+linear "
            f"+ {self.involution / 1e9:.4f} involution"
        )


def count_macs(model: LGLDNet, input_size: int | None = None) -> MacReport:
    """Count MACs of one forward pass at batch size 1."""
    size = input_size or model.config.input_size
    counts = {"conv_linear": 0, "involution": 0}

    def conv_hook(m: nn.Conv2d, _inp, out: torch.Tensor) -> None:
        kh, kw = m.kernel_size
        counts["conv_linear"] += out.numel() * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m: nn.Linear, _inp, out: torch.Tensor) -> None:
        counts["conv_linear"] += out.numel() * m.in_features

    def invo_hook(m: Involution, _inp, out: torch.Tensor) -> None:
        counts["involution"] += out.numel() * m.kernel_size * m.kernel_size

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
        elif isinstance(module, Involution):
            handles.append(module.register_forward_hook(invo_hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, model.config.in_channels, size, size))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return MacReport(**counts)
