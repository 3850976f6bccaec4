"""LGLD-Net: a lightweight dual-stream (local + global) CNN for blood-cell images.

One readable file with every block of the paper (Das Gupta et al., "LGLD-Net") and the
authors' published ALL implementation (base width 64):

* Local stream: IPS (3x3 s2 conv -> involution -> BN -> SiLU) then LFA.
* Global stream: FFM (sin/cos positional channels, 1x1 s2 conv, real/imag scales, BN, SiLU)
  then GCE (dilated 3x3 convs d=2,4,8, 1x1 compress, SiLU, squeeze-excitation).
* LGFM fuses both streams with softmax weights; a small head classifies.

Two deliberate, output-preserving differences from the authors' code make the model
export-friendly: the involution uses nine shifted slices of a padded tensor instead of
``nn.Unfold`` (no im2col Gather chains in ONNX), and the FFM positional channels are a
precomputed buffer instead of ``sin``/``cos`` of ``arange`` on every call.

Ablation variants (paper Table 3), named by what they keep:

========== ============ ===== ===== ==================================================
variant    involution   LFA   GCE   what is removed
========== ============ ===== ===== ==================================================
``full``   yes          yes   yes   nothing (Invo+LFA+GCE, the paper's model)
``lfa_gce`` no          yes   yes   the involution (IPS is conv -> BN -> SiLU)
``lfa``    no           yes   no    involution and GCE (global stream is the FFM alone)
``gce``    no           no    yes   involution and LFA (local stream is the plain stem)
========== ============ ===== ===== ==================================================

Normalisation (``norm``): ``batch`` (the paper's BatchNorm, the default) or ``group``
(GroupNorm, :data:`GROUPS` groups, in the same three places). GroupNorm normalises each image
with its own statistics, so nothing learned from the training microscope's batch statistics is
frozen into the model (Tsutsui et al. 2023 found BatchNorm the main culprit under domain shift
for ResNets); docs/performance.md measures it for LGLD-Net.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

VARIANTS: dict[str, tuple[bool, bool, bool]] = {
    # variant: (involution, lfa, gce)
    "full": (True, True, True),
    "lfa_gce": (False, True, True),
    "lfa": (False, True, False),
    "gce": (False, False, True),
}
NORMS = ("batch", "group")
GROUPS = 8  # GroupNorm groups (8 channels each at base width 64)


def norm_layer(kind: str, channels: int) -> nn.Module:
    """The normalisation layer of a ``norm`` kind: BatchNorm2d or GroupNorm."""
    if kind == "group":
        return nn.GroupNorm(math.gcd(GROUPS, channels), channels)
    return nn.BatchNorm2d(channels)


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild an LGLD-Net (stored in checkpoints)."""

    num_classes: int = 4
    input_size: int = 224
    variant: str = "full"
    base_channels: int = 64
    in_channels: int = 3
    norm: str = "batch"

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; choose one of {sorted(VARIANTS)}")
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; choose one of {list(NORMS)}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if self.input_size < 16 or self.input_size % 2:
            raise ValueError(f"input_size must be an even number >= 16, got {self.input_size}")
        if self.base_channels % 4:
            raise ValueError(f"base_channels must be a multiple of 4, got {self.base_channels}")

    def to_dict(self) -> dict:
        return asdict(self)


class Involution(nn.Module):
    """Involution (Li et al., CVPR 2021): a spatially adaptive, channel-agnostic KxK filter.

    A per-pixel KxK kernel is generated from the input (1x1 reduce, 1x1, SiLU, 1x1 -> K*K)
    and shared by all channels. Computed as a sum over K*K shifted views of the padded input,
    which exports to plain Pad/Slice/Mul/Add ONNX ops.
    """

    def __init__(self, channels: int, kernel_size: int = 3, reduction: int = 4) -> None:
        super().__init__()
        mid = channels // reduction
        self.kernel_size = kernel_size
        self.reduce = nn.Conv2d(channels, mid, 1)
        self.shared_mlp = nn.Sequential(
            nn.Conv2d(mid, mid, 1), nn.SiLU(), nn.Conv2d(mid, kernel_size * kernel_size, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size
        h, w = x.shape[-2:]
        kernels = self.shared_mlp(self.reduce(x))  # (B, K*K, H, W)
        padded = F.pad(x, (k // 2,) * 4)
        out = None
        for idx in range(k * k):
            dy, dx = divmod(idx, k)
            term = padded[:, :, dy : dy + h, dx : dx + w] * kernels[:, idx : idx + 1]
            out = term if out is None else out + term
        return out


class IPS(nn.Module):
    """Involution-based patch stem: 3x3 stride-2 conv, involution, BN, SiLU."""

    def __init__(self, in_channels: int, channels: int, involution: bool = True,
                 norm: str = "batch") -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, 3, stride=2, padding=1)
        self.invo = Involution(channels) if involution else nn.Identity()
        self.bn = norm_layer(norm, channels)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.invo(self.conv(x))))


class LFA(nn.Module):
    """Local Feature Aggregator: depthwise 3x3 and 5x5 paths, 1x1 projection, residual, SiLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()

        def path(k: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(channels, channels, k, padding=k // 2, groups=channels),
                nn.Conv2d(channels, channels, 1),
                nn.SiLU(),
            )

        self.dw3 = path(3)
        self.dw5 = path(5)
        self.project = nn.Conv2d(2 * channels, channels, 1, bias=False)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.project(torch.cat([self.dw3(x), self.dw5(x)], dim=1)))


def positional_channels(height: int, width: int) -> torch.Tensor:
    """The FFM's four positional channels sin/cos(2*pi*i/H), sin/cos(2*pi*j/W): (1, 4, H, W)."""
    i = torch.arange(height, dtype=torch.float64).view(height, 1).expand(height, width)
    j = torch.arange(width, dtype=torch.float64).view(1, width).expand(height, width)
    ai, aj = 2 * math.pi * i / height, 2 * math.pi * j / width
    pe = torch.stack([torch.sin(ai), torch.cos(ai), torch.sin(aj), torch.cos(aj)])
    return pe.unsqueeze(0).to(torch.float32)


class FFM(nn.Module):
    """Fourier Feature Mixer: positional channels, 1x1 s2 conv, real/imag scales, BN, SiLU."""

    def __init__(self, in_channels: int, channels: int, input_size: int,
                 norm: str = "batch") -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels + 4, channels, 1, stride=2)
        self.fourier_weight_real = nn.Parameter(torch.randn(channels // 2))
        self.fourier_weight_imag = nn.Parameter(torch.randn(channels // 2))
        self.bn = norm_layer(norm, channels)
        self.act = nn.SiLU()
        # Precomputed, not saved in the state dict: rebuilt from the input size.
        self.register_buffer("pos", positional_channels(input_size, input_size), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != self.pos.shape[-2:]:
            raise ValueError(
                f"input is {tuple(x.shape[-2:])}, model was built for {tuple(self.pos.shape[-2:])}"
            )
        pos = self.pos.expand(x.shape[0], -1, -1, -1)
        f = self.proj(torch.cat([x, pos], dim=1))
        real, imag = torch.chunk(f, 2, dim=1)
        real = real * self.fourier_weight_real.view(1, -1, 1, 1)
        imag = imag * self.fourier_weight_imag.view(1, -1, 1, 1)
        return self.act(self.bn(torch.cat([real, imag], dim=1)))


class GCE(nn.Module):
    """Global Context Extractor: dilated 3x3 convs (d=2,4,8), 1x1 compress, SiLU, SE gate."""

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
        p = torch.cat([self.dil2(x), self.dil4(x), self.dil8(x)], dim=1)
        p = F.silu(self.compress(p))
        return p * self.se(p)


class LGFM(nn.Module):
    """Local-Global Feature Mixer: softmax weights from pooled statistics blend both streams."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * channels, 2))

    def forward(self, local: torch.Tensor, global_: torch.Tensor) -> torch.Tensor:
        w = F.softmax(self.fc(torch.cat([local, global_], dim=1)), dim=1)
        return w[:, 0].view(-1, 1, 1, 1) * local + w[:, 1].view(-1, 1, 1, 1) * global_


class LGLDNet(nn.Module):
    """The full model. Input: (B, 3, S, S) RGB in [0, 1]; output: (B, num_classes) logits."""

    def __init__(self, config: ModelConfig | None = None, **kwargs) -> None:
        super().__init__()
        self.config = config if config is not None else ModelConfig(**kwargs)
        c, cfg = self.config.base_channels, self.config
        use_invo, use_lfa, use_gce = VARIANTS[cfg.variant]
        self.local_stem = IPS(cfg.in_channels, c, involution=use_invo, norm=cfg.norm)
        self.global_stem = FFM(cfg.in_channels, c, cfg.input_size, norm=cfg.norm)
        self.lfa = LFA(c) if use_lfa else nn.Identity()
        self.gce = GCE(c) if use_gce else nn.Identity()
        self.lgfm = LGFM(c)
        self.head = nn.Sequential(
            nn.Conv2d(c, c, 1),
            norm_layer(cfg.norm, c),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(0.5),
            nn.Linear(c, cfg.num_classes),
        )

    def set_input_size(self, size: int) -> None:
        """Rebuild the size-dependent positional buffer (weights do not depend on the size)."""
        self.config = replace(self.config, input_size=size)
        pos = self.global_stem.pos
        self.global_stem.pos = positional_channels(size, size).to(pos.device, pos.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        local = self.lfa(self.local_stem(x))
        global_ = self.gce(self.global_stem(x))
        return self.head(self.lgfm(local, global_))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
