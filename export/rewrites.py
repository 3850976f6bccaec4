"""Output-preserving algebraic rewrites: LGLD-Net -> its "export form".

:class:`ExportLGLDNet` computes the same logits as an eval-mode :class:`LGLDNet` (up to float
rounding) with fewer, simpler ops, so the exported ONNX graph holds no ``BatchNormalization``,
no positional-encoding arithmetic and no redundant linear layers. Every rewrite is exact algebra
on the trained weights (composed in float64, stored as float32):

* **BN folding.** Every ``BatchNorm2d`` becomes a per-channel affine map folded into the
  preceding convolution (head, stem). In the involution stem the BN scale moves into the stem
  conv (the involution is linear in its input for fixed kernels) and its shift stays one ``Add``.
* **Involution kernel generator.** ``reduce`` and the first ``shared_mlp`` conv are linear 1x1
  convs applied to the linear stem conv; all three compose into one 3x3 stride-2 conv of the
  *image*, computed together with the stem conv (one ``Conv``, one ``Split``).
* **FFM positional channels.** The positional channels are constant for a given input size, so
  their share of the 1x1 conv, the conv bias, the real/imag scales and the BN fold into the
  3-channel conv's weights plus a constant bias map of shape (1, C, S/2, S/2).
* **GCE compress.** ``compress(cat(d2, d4, d8)) = sum_i W_i d_i(x) + b``: each 64x64 slice
  ``W_i`` composes into its dilated conv, so the three convs are summed and the 1x1 goes away.
* **LGFM gate.** A softmax over two logits is ``sigmoid(z0 - z1)``: the Linear becomes one 1x1
  conv on the two pooled streams (no ``Concat`` of full feature maps, no ``Gather``/``Reshape``)
  and the blend is ``g + w * (l - g)``.

A GroupNorm model (``norm="group"``) keeps its three GroupNorm layers (per-image statistics
cannot be folded into weights; ONNX has them as InstanceNormalization plus an affine map);
every other rewrite applies unchanged, with the scales that BN folding would carry left at 1.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from lgld.models.lgld_net import FFM, GCE, IPS, LFA, LGFM, Involution, LGLDNet

__all__ = [
    "ExportFFM",
    "ExportGCE",
    "ExportIPS",
    "ExportLGFM",
    "ExportLGLDNet",
    "export_ffm",
    "export_gce",
    "export_head",
    "export_ips",
    "export_lgfm",
    "fold_bn",
]


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BN as ``scale * x + shift`` (float64, per channel)."""
    var = bn.running_var.double()
    scale = (bn.weight.double() if bn.affine else torch.ones_like(var)) / torch.sqrt(var + bn.eps)
    bias = bn.bias.double() if bn.affine else torch.zeros_like(var)
    return scale, bias - bn.running_mean.double() * scale


def _conv_like(
    conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor | None, **overrides
) -> nn.Conv2d:
    """A new Conv2d with ``conv``'s geometry (unless overridden) and the given float64 weights."""
    geometry = dict(
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
    )
    geometry.update(overrides)
    out_ch, in_per_group = weight.shape[:2]
    new = nn.Conv2d(
        in_per_group * geometry["groups"], out_ch, bias=bias is not None, **geometry
    )
    with torch.no_grad():
        new.weight.copy_(weight.to(torch.float32))
        if bias is not None:
            new.bias.copy_(bias.to(torch.float32))
    return new


def _conv_params(conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor]:
    weight = conv.weight.detach().double()
    bias = conv.bias.detach().double() if conv.bias is not None else weight.new_zeros(len(weight))
    return weight, bias


def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """``bn(conv(x))`` as one Conv2d (eval mode)."""
    weight, bias = _conv_params(conv)
    scale, shift = _bn_affine(bn)
    return _conv_like(conv, weight * scale.view(-1, 1, 1, 1), bias * scale + shift)


def _compose_1x1(outer: nn.Conv2d, w_in: torch.Tensor, b_in: torch.Tensor):
    """Weights of ``outer(inner(x))`` where ``outer`` is a 1x1 conv and inner has (w_in, b_in)."""
    w_out, b_out = _conv_params(outer)
    mat = w_out[:, :, 0, 0]  # (out, mid)
    return torch.einsum("om,mikl->oikl", mat, w_in), mat @ b_in + b_out


# --------------------------------------------------------------------------- local stem (IPS)


class ExportIPS(nn.Module):
    """IPS in export form. Without involution: ``silu(conv(x))`` with BN folded.

    With involution: one conv yields the BN-scaled stem features ``y`` and the kernel generator's
    pre-activation; ``silu(sum_k shift_k(y) * kernel_k + shift)``.
    """

    def __init__(
        self,
        conv: nn.Conv2d,
        channels: int,
        kernel_conv: nn.Conv2d | None = None,
        shift: torch.Tensor | None = None,
        kernel_size: int = 3,
        norm: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv = conv
        self.channels = channels
        self.kernel_conv = kernel_conv
        self.kernel_size = kernel_size
        self.norm = norm  # a GroupNorm model's norm (then nothing is folded: no shift)
        if kernel_conv is not None and norm is None:
            self.register_buffer("shift", shift.to(torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel_conv is None:
            y = self.conv(x)
            return F.silu(y if self.norm is None else self.norm(y))
        k = self.kernel_size
        mid = self.conv.out_channels - self.channels
        y, pre = torch.split(self.conv(x), [self.channels, mid], dim=1)
        kernels = torch.split(self.kernel_conv(F.silu(pre)), 1, dim=1)
        padded = F.pad(y, (k // 2,) * 4)
        out = None
        for idx in range(k * k):
            dy, dx = divmod(idx, k)
            # window [d, d + size) of the padded map, written with size-free (negative) ends
            ey, ex = dy - (k - 1) or None, dx - (k - 1) or None
            term = padded[:, :, dy:ey, dx:ex] * kernels[idx]
            out = term if out is None else out + term
        if self.norm is not None:
            return F.silu(self.norm(out))
        return F.silu(out + self.shift)


def _norm_parts(norm: nn.Module, channels: int):
    """(BN scale, BN shift, kept norm): BN folds; GroupNorm is kept with scale 1, shift 0."""
    if isinstance(norm, nn.BatchNorm2d):
        return (*_bn_affine(norm), None)
    ones = torch.ones(channels, dtype=torch.float64)
    return ones, torch.zeros_like(ones), copy.deepcopy(norm)


def export_ips(ips: IPS) -> ExportIPS:
    """Fold IPS's BN; with an involution also merge the kernel generator's linear part."""
    channels = ips.conv.out_channels
    scale, shift, kept = _norm_parts(ips.bn, channels)
    if not isinstance(ips.invo, Involution):
        conv = fold_bn(ips.conv, ips.bn) if kept is None else copy.deepcopy(ips.conv)
        return ExportIPS(conv, channels, norm=kept)
    invo = ips.invo
    w, b = _conv_params(ips.conv)
    # BN after the involution: bn(invo(y)) = invo(scale * y) + shift, because the kernels are
    # shared by all channels and computed below from the *unscaled* y (so no division by scale).
    w_main, b_main = w * scale.view(-1, 1, 1, 1), b * scale
    # Kernel generator: shared_mlp[0](reduce(conv(x))) is linear in x -> one 3x3 conv of x.
    w_k, b_k = _compose_1x1(invo.reduce, w, b)
    w_k, b_k = _compose_1x1(invo.shared_mlp[0], w_k, b_k)
    conv = _conv_like(ips.conv, torch.cat([w_main, w_k]), torch.cat([b_main, b_k]))
    kernel_conv = copy.deepcopy(invo.shared_mlp[2])
    folded_shift = shift if kept is None else None  # a kept GroupNorm has no shift to add
    return ExportIPS(conv, channels, kernel_conv, folded_shift, invo.kernel_size, kept)


# ------------------------------------------------------------------------- global stem (FFM)


class ExportFFM(nn.Module):
    """FFM in export form: ``silu(conv(x) + row + col)`` with a 3-channel 1x1 stride-2 conv.

    ``row + col`` is the constant bias map; it is stored as its (1, C, S/2, 1) and (1, C, 1, S/2)
    parts because the positional channels depend on the row or on the column only (a full map
    would add C*S*S/4 floats, 3.2 MB at 224, to the file for no measurable speed gain). A
    ``col`` of None means ``row`` is the full map.
    """

    def __init__(self, conv: nn.Conv2d, row: torch.Tensor, col: torch.Tensor | None = None,
                 norm: nn.Module | None = None) -> None:
        super().__init__()
        self.conv = conv
        self.norm = norm  # a GroupNorm model's norm, applied before SiLU
        self.register_buffer("row", row.to(torch.float32))
        self.register_buffer("col", col.to(torch.float32) if col is not None else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x) + self.row
        if self.col is not None:
            y = y + self.col
        return F.silu(y if self.norm is None else self.norm(y))


def export_ffm(ffm: FFM, separable: bool = True) -> ExportFFM:
    """Fold the positional channels, conv bias, real/imag scales and BN into conv + bias map."""
    w, b = _conv_params(ffm.proj)  # (C, in + 4, 1, 1)
    n_pos = ffm.pos.shape[1]
    w_img, w_pos = w[:, :-n_pos], w[:, -n_pos:, 0, 0]
    bn_scale, bn_shift, kept = _norm_parts(ffm.bn, w.shape[0])
    fourier = torch.cat([ffm.fourier_weight_real, ffm.fourier_weight_imag]).detach().double()
    scale = (bn_scale * fourier).view(-1, 1, 1)  # real/imag scale then BN, per output channel
    conv = _conv_like(ffm.proj, w_img * scale.unsqueeze(1), None)
    stride = ffm.proj.stride
    pos = ffm.pos[0, :, :: stride[0], :: stride[1]].double()  # what the 1x1 strided conv sees
    bias = b.view(-1, 1, 1)
    shift = bn_shift.view(-1, 1, 1)
    by_row = (pos == pos[:, :, :1]).all(dim=(1, 2))  # channels constant along each row
    by_col = (pos == pos[:, :1, :]).all(dim=(1, 2))
    if separable and bool((by_row | by_col).all()):
        rows, cols = torch.nonzero(by_row).flatten(), torch.nonzero(~by_row).flatten()
        row = torch.einsum("cp,phw->chw", w_pos[:, rows], pos[rows][:, :, :1])
        col = torch.einsum("cp,phw->chw", w_pos[:, cols], pos[cols][:, :1, :])
        return ExportFFM(conv, (scale * (row + bias) + shift)[None], (scale * col)[None], kept)
    full = torch.einsum("cp,phw->chw", w_pos, pos) + bias
    return ExportFFM(conv, (scale * full + shift)[None], norm=kept)


# ------------------------------------------------------------------------------------- GCE


class ExportGCE(nn.Module):
    """GCE in export form: ``p = silu(d2(x) + d4(x) + d8(x))``, then the unchanged SE gate."""

    def __init__(self, dilated: list[nn.Conv2d], se: nn.Module) -> None:
        super().__init__()
        self.dilated = nn.ModuleList(dilated)
        self.se = se

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = None
        for conv in self.dilated:
            out = conv(x) if out is None else out + conv(x)
        p = F.silu(out)
        return p * self.se(p)


def export_gce(gce: GCE) -> ExportGCE:
    """Compose each 64x64 slice of the 1x1 compress into its dilated conv."""
    wc, bc = _conv_params(gce.compress)
    convs = [gce.dil2, gce.dil4, gce.dil8]
    c = convs[0].out_channels
    total_bias = bc.clone()
    dilated = []
    for i, conv in enumerate(convs):
        w, b = _conv_params(conv)
        mat = wc[:, i * c : (i + 1) * c, 0, 0]
        total_bias += mat @ b
        dilated.append(_conv_like(conv, torch.einsum("om,mikl->oikl", mat, w), None))
    dilated[0] = _conv_like(convs[0], dilated[0].weight.double(), total_bias)  # carries the bias
    return ExportGCE(dilated, copy.deepcopy(gce.se))


# ------------------------------------------------------------------------------------ LGFM


class ExportLGFM(nn.Module):
    """LGFM in export form: ``w = sigmoid(gate(pool(l), pool(g)))``; ``g + w * (l - g)``."""

    def __init__(self, gate: nn.Conv2d) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.gate = gate

    def forward(self, local: torch.Tensor, global_: torch.Tensor) -> torch.Tensor:
        w = torch.sigmoid(self.gate(torch.cat([self.pool(local), self.pool(global_)], dim=1)))
        return global_ + w * (local - global_)


def export_lgfm(lgfm: LGFM) -> ExportLGFM:
    """softmax([z0, z1])[0] == sigmoid(z0 - z1): the 2-way Linear becomes a 1-output 1x1 conv."""
    linear = lgfm.fc[-1]
    w, b = linear.weight.detach().double(), linear.bias.detach().double()
    gate = nn.Conv2d(linear.in_features, 1, 1)
    with torch.no_grad():
        gate.weight.copy_((w[0] - w[1]).view(1, -1, 1, 1).float())
        gate.bias.copy_((b[0] - b[1]).view(1).float())
    return ExportLGFM(gate)


# ------------------------------------------------------------------------------------ head


def export_head(head: nn.Sequential) -> nn.Sequential:
    """conv -> BN -> SiLU -> pool -> flatten -> dropout -> linear, with BN folded, no dropout
    (a GroupNorm stays after the conv)."""
    conv, bn, act, pool, flatten, _dropout, linear = head
    normed = (fold_bn(conv, bn),) if isinstance(bn, nn.BatchNorm2d) else (
        copy.deepcopy(conv), copy.deepcopy(bn))
    return nn.Sequential(
        *normed, copy.deepcopy(act), copy.deepcopy(pool), copy.deepcopy(flatten),
        copy.deepcopy(linear),
    )


# ------------------------------------------------------------------------------ whole model


class ExportLGLDNet(nn.Module):
    """An eval-only LGLD-Net equal to the original's eval-mode outputs, built for export."""

    def __init__(
        self,
        config,
        local_stem: nn.Module,
        global_stem: nn.Module,
        lfa: nn.Module,
        gce: nn.Module,
        lgfm: nn.Module,
        head: nn.Module,
    ) -> None:
        super().__init__()
        self.config = config
        self.local_stem, self.global_stem = local_stem, global_stem
        self.lfa, self.gce, self.lgfm, self.head = lfa, gce, lgfm, head

    @classmethod
    @torch.no_grad()
    def from_model(cls, model: LGLDNet) -> ExportLGLDNet:
        """Apply every rewrite to (copies of) ``model``'s weights; ``model`` is not modified."""
        lfa = copy.deepcopy(model.lfa) if isinstance(model.lfa, LFA) else nn.Identity()
        gce = export_gce(model.gce) if isinstance(model.gce, GCE) else nn.Identity()
        new = cls(
            model.config,
            export_ips(model.local_stem),
            export_ffm(model.global_stem),
            lfa,
            gce,
            export_lgfm(model.lgfm),
            export_head(model.head),
        )
        for p in new.parameters():
            p.requires_grad_(False)
        return new.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        local = self.lfa(self.local_stem(x))
        global_ = self.gce(self.global_stem(x))
        return self.head(self.lgfm(local, global_))
