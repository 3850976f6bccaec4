"""The paper-style reference LGLD-Net: eager PyTorch written the way the authors' code does it.

This is the benchmark's row 1, the baseline every speed-up is measured against. It follows the
authors' published notebook (github.com/arkodasgupta0412/LGLD-Net, ``src/ALL_model.ipynb``):

* the involution gathers its 3x3 neighbourhoods with ``nn.Unfold`` (im2col: a (B, C*9, H*W)
  copy of the feature map, which ONNX exports as chains of ``Gather``);
* the FFM recomputes its positional channels on every call (``arange``, ``sin``, ``cos``);
* BatchNorm, Dropout, both concatenations and the softmax fusion run as written.

Parameter and buffer names are those of :class:`lgld.models.lgld_net.LGLDNet`, so
``ReferenceLGLDNet(cfg).load_state_dict(LGLDNet(cfg).state_dict())`` works (strictly) and both
compute the same logits. All four ablation variants are supported.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lgld.models.lgld_net import VARIANTS, ModelConfig


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


class ReferenceIPS(nn.Module):
    def __init__(self, in_channels: int, channels: int, involution: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, 3, stride=2, padding=1)
        self.invo = UnfoldInvolution(channels) if involution else nn.Identity()
        self.bn = nn.BatchNorm2d(channels)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.invo(self.conv(x))))


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


class ReferenceLFA(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.dw3 = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, groups=channels),
            nn.Conv2d(channels, channels, 1),
            nn.SiLU(),
        )
        self.dw5 = nn.Sequential(
            nn.Conv2d(channels, channels, 5, padding=2, groups=channels),
            nn.Conv2d(channels, channels, 1),
            nn.SiLU(),
        )
        self.project = nn.Conv2d(2 * channels, channels, 1, bias=False)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.project(torch.cat([self.dw3(x), self.dw5(x)], dim=1)))


class ReferenceGCE(nn.Module):
    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.dil2 = nn.Conv2d(channels, channels, 3, padding=2, dilation=2)
        self.dil4 = nn.Conv2d(channels, channels, 3, padding=4, dilation=4)
        self.dil8 = nn.Conv2d(channels, channels, 3, padding=8, dilation=8)
        self.compress = nn.Conv2d(3 * channels, channels, 1)
        self.se = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, channels // reduction, 1),
            nn.SiLU(),
            nn.Conv2d(channels // reduction, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = F.silu(self.compress(torch.cat([self.dil2(x), self.dil4(x), self.dil8(x)], dim=1)))
        return p * self.se(p)


class ReferenceLGFM(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * channels, 2))

    def forward(self, local: torch.Tensor, global_: torch.Tensor) -> torch.Tensor:
        w = F.softmax(self.fc(torch.cat([local, global_], dim=1)), dim=1)
        return w[:, 0].view(-1, 1, 1, 1) * local + w[:, 1].view(-1, 1, 1, 1) * global_


class ReferenceLGLDNet(nn.Module):
    """Paper-style LGLD-Net; same state-dict keys as ``LGLDNet(config)``."""

    def __init__(self, config: ModelConfig | None = None, **kwargs) -> None:
        super().__init__()
        self.config = config if config is not None else ModelConfig(**kwargs)
        c, cfg = self.config.base_channels, self.config
        use_invo, use_lfa, use_gce = VARIANTS[cfg.variant]
        self.local_stem = ReferenceIPS(cfg.in_channels, c, use_invo)
        self.global_stem = ReferenceFFM(cfg.in_channels, c)
        self.lfa = ReferenceLFA(c) if use_lfa else nn.Identity()
        self.gce = ReferenceGCE(c) if use_gce else nn.Identity()
        self.lgfm = ReferenceLGFM(c)
        self.head = nn.Sequential(
            nn.Conv2d(c, c, 1),
            nn.BatchNorm2d(c),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(0.5),
            nn.Linear(c, cfg.num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        local = self.lfa(self.local_stem(x))
        global_ = self.gce(self.global_stem(x))
        return self.head(self.lgfm(local, global_))


def reference_like(model: nn.Module) -> ReferenceLGLDNet:
    """A reference model in eval mode with ``model``'s config and weights (strict load)."""
    ref = ReferenceLGLDNet(model.config)
    ref.load_state_dict(model.state_dict(), strict=True)
    return ref.eval()
