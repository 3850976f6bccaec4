"""The paper-style reference LGLD-Net: eager PyTorch written the way the authors' code does it.

This is the benchmark's row 1, the baseline every speed-up is measured against. It follows the
authors' published notebook (github.com/arkodasgupta0412/LGLD-Net, ``src/ALL_model.ipynb``):

* the involution gathers its 3x3 neighbourhoods with ``nn.Unfold`` (im2col: a (B, C*9, H*W)
  copy of the feature map, which ONNX exports as chains of ``Gather``);
* the FFM recomputes its positional channels on every call (``arange``, ``sin``, ``cos``);
* BatchNorm, Dropout, both concatenations and the softmax fusion run as written.

Everything else (LFA, GCE, LGFM, head) is already written that way in
:class:`lgld.models.lgld_net.LGLDNet` (lgld's rewrites happen at export), so the reference is
that model with its two stems replaced. Parameter and buffer names are the same, so
``ReferenceLGLDNet(cfg).load_state_dict(LGLDNet(cfg).state_dict())`` works (strictly) and both
compute the same logits. All four ablation variants are supported.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from lgld.models.lgld_net import IPS, VARIANTS, LGLDNet, ModelConfig


class UnfoldInvolution(nn.Module):
    """Involution through ``nn.Unfold``: per-pixel 3x3 kernels times unfolded patches."""

    def __init__(self, channels: int, kernel_size: int = 3, reduction: int = 4) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        mid = channels // reduction
        self.reduce = nn.Conv2d(channels, mid, 1)
        self.shared_mlp = nn.Sequential(
            nn.Conv2d(mid, mid, 1), nn.SiLU(), nn.Conv2d(mid, kernel_size * kernel_size, 1)
        )
        self.unfold = nn.Unfold(kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.size()
        kk = self.kernel_size * self.kernel_size
        kernels = self.shared_mlp(self.reduce(x)).view(b, 1, kk, h * w)
        patches = self.unfold(x).view(b, c, kk, h * w)
        return (kernels * patches).sum(dim=2).view(b, c, h, w)


class ReferenceIPS(IPS):
    """lgld's patch stem with the ``nn.Unfold`` involution."""

    def __init__(self, in_channels: int, channels: int, involution: bool) -> None:
        super().__init__(in_channels, channels, involution)
        if involution:
            self.invo = UnfoldInvolution(channels)


class ReferenceFFM(nn.Module):
    """FFM with the positional channels rebuilt from ``arange`` on every forward pass."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels + 4, channels, 1, stride=2)
        self.fourier_weight_real = nn.Parameter(torch.randn(channels // 2))
        self.fourier_weight_imag = nn.Parameter(torch.randn(channels // 2))
        self.bn = nn.BatchNorm2d(channels)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.size()
        i = torch.arange(h, device=x.device).view(1, 1, h, 1).expand(b, 1, h, w)
        j = torch.arange(w, device=x.device).view(1, 1, 1, w).expand(b, 1, h, w)
        pe = torch.cat(
            [
                torch.sin(2 * torch.pi * i / h),
                torch.cos(2 * torch.pi * i / h),
                torch.sin(2 * torch.pi * j / w),
                torch.cos(2 * torch.pi * j / w),
            ],
            dim=1,
        )
        real, imag = torch.chunk(self.proj(torch.cat([x, pe], dim=1)), 2, dim=1)
        real = real * self.fourier_weight_real.view(1, -1, 1, 1)
        imag = imag * self.fourier_weight_imag.view(1, -1, 1, 1)
        return self.act(self.bn(torch.cat([real, imag], dim=1)))


class ReferenceLGLDNet(LGLDNet):
    """Paper-style LGLD-Net: lgld's model with the Unfold involution and per-call positions."""

    def __init__(self, config: ModelConfig | None = None, **kwargs) -> None:
        super().__init__(config, **kwargs)
        c, cfg = self.config.base_channels, self.config
        self.local_stem = ReferenceIPS(cfg.in_channels, c, VARIANTS[cfg.variant][0])
        self.global_stem = ReferenceFFM(cfg.in_channels, c)

    def set_input_size(self, size: int) -> None:
        """Only the config changes: the positional channels are computed on every call."""
        self.config = replace(self.config, input_size=size)


def reference_like(model: nn.Module) -> ReferenceLGLDNet:
    """A reference model in eval mode with ``model``'s config and weights (strict load)."""
    ref = ReferenceLGLDNet(model.config)
    ref.load_state_dict(model.state_dict(), strict=True)
    return ref.eval()
