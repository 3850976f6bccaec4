"""LGLD-Net: parameter and MAC counts, equivalence with an Unfold reference, variants."""

from __future__ import annotations

import math

import pytest

pytestmark = pytest.mark.train
torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from lgld.models.lgld_net import VARIANTS, LGLDNet, ModelConfig, count_parameters  # noqa: E402
from lgld.models.macs import count_macs  # noqa: E402

# ---------------------------------------------------------------------------------------------
# An independent reference written the straightforward way the paper describes (nn.Unfold
# involution, sin/cos of arange on every call), with the same parameter names.


class RefInvolution(nn.Module):
    def __init__(self, c: int, k: int = 3, r: int = 4) -> None:
        super().__init__()
        self.k = k
        self.reduce = nn.Conv2d(c, c // r, 1)
        self.shared_mlp = nn.Sequential(
            nn.Conv2d(c // r, c // r, 1), nn.SiLU(), nn.Conv2d(c // r, k * k, 1)
        )
        self.unfold = nn.Unfold(k, padding=k // 2)

    def forward(self, x):
        b, c, h, w = x.shape
        kernels = self.shared_mlp(self.reduce(x)).view(b, 1, self.k * self.k, h * w)
        patches = self.unfold(x).view(b, c, self.k * self.k, h * w)
        return (kernels * patches).sum(dim=2).view(b, c, h, w)


class RefStem(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, c, 3, stride=2, padding=1)
        self.invo = RefInvolution(c)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        return F.silu(self.bn(self.invo(self.conv(x))))


class RefFFM(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(7, c, 1, stride=2)
        self.fourier_weight_real = nn.Parameter(torch.randn(c // 2))
        self.fourier_weight_imag = nn.Parameter(torch.randn(c // 2))
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        b, _, h, w = x.shape
        i = torch.arange(h).view(1, 1, h, 1).expand(b, 1, h, w).float()
        j = torch.arange(w).view(1, 1, 1, w).expand(b, 1, h, w).float()
        pe = torch.cat(
            [torch.sin(2 * math.pi * i / h), torch.cos(2 * math.pi * i / h),
             torch.sin(2 * math.pi * j / w), torch.cos(2 * math.pi * j / w)], dim=1)
        real, imag = torch.chunk(self.proj(torch.cat([x, pe], 1)), 2, dim=1)
        real = real * self.fourier_weight_real.view(1, -1, 1, 1)
        imag = imag * self.fourier_weight_imag.view(1, -1, 1, 1)
        return F.silu(self.bn(torch.cat([real, imag], 1)))


class RefLFA(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.dw3 = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, groups=c), nn.Conv2d(c, c, 1),
                                 nn.SiLU())
        self.dw5 = nn.Sequential(nn.Conv2d(c, c, 5, padding=2, groups=c), nn.Conv2d(c, c, 1),
                                 nn.SiLU())
        self.project = nn.Conv2d(2 * c, c, 1, bias=False)

    def forward(self, x):
        return F.silu(x + self.project(torch.cat([self.dw3(x), self.dw5(x)], 1)))


class RefGCE(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.dil2 = nn.Conv2d(c, c, 3, padding=2, dilation=2)
        self.dil4 = nn.Conv2d(c, c, 3, padding=4, dilation=4)
        self.dil8 = nn.Conv2d(c, c, 3, padding=8, dilation=8)
        self.compress = nn.Conv2d(3 * c, c, 1)
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c // 4, 1), nn.SiLU(),
                                nn.Conv2d(c // 4, c, 1), nn.Sigmoid())

    def forward(self, x):
        p = F.silu(self.compress(torch.cat([self.dil2(x), self.dil4(x), self.dil8(x)], 1)))
        return p * self.se(p)


class RefNet(nn.Module):
    def __init__(self, num_classes: int, c: int = 64) -> None:
        super().__init__()
        self.local_stem, self.global_stem = RefStem(c), RefFFM(c)
        self.lfa, self.gce = RefLFA(c), RefGCE(c)
        self.lgfm = nn.Module()
        self.lgfm.fc = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * c, 2))
        self.head = nn.Sequential(nn.Conv2d(c, c, 1), nn.BatchNorm2d(c), nn.SiLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5),
                                  nn.Linear(c, num_classes))

    def forward(self, x):
        loc, glo = self.lfa(self.local_stem(x)), self.gce(self.global_stem(x))
        w = F.softmax(self.lgfm.fc(torch.cat([loc, glo], 1)), dim=1)
        return self.head(w[:, :1, None, None] * loc + w[:, 1:, None, None] * glo)


def _randomize_bn(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("classes", "expected"), [(4, 152_975), (5, 153_040)])
def test_parameter_count_matches_authors_code(classes: int, expected: int) -> None:
    model = LGLDNet(num_classes=classes)
    assert count_parameters(model) == expected
    assert count_parameters(model) == count_parameters(RefNet(classes))


def test_macs_at_224() -> None:
    report = count_macs(LGLDNet(num_classes=4))
    # conv + linear by hand: per 112x112 position 149,136 MACs (stem 1,728, involution kernel
    # generator 1,424, LFA 18,560, FFM 448, GCE 122,880, head conv 4,096) + SE and linears.
    per_pos = 1728 + 1424 + 18560 + 448 + 122880 + 4096
    small = (64 * 16 + 16 * 64) + 128 * 2 + 64 * 4  # SE 1x1 convs, LGFM and head linears
    assert report.conv_linear == per_pos * 112 * 112 + small
    assert report.involution == 64 * 9 * 112 * 112
    assert round(report.total / 1e9, 2) == 1.88
    assert "involution" in report.summary()


def test_macs_scale_with_input_size() -> None:
    small = count_macs(LGLDNet(input_size=112))
    big = count_macs(LGLDNet(input_size=224))
    assert big.involution == 4 * small.involution


@pytest.mark.parametrize("classes", [4, 5])
def test_matches_unfold_reference(classes: int) -> None:
    torch.manual_seed(classes)
    model = LGLDNet(num_classes=classes, input_size=64)
    _randomize_bn(model)
    ref = RefNet(classes)
    ref.load_state_dict(model.state_dict(), strict=True)
    model.eval()
    ref.eval()
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        ours, theirs = model(x), ref(x)
    assert ours.shape == (3, classes)
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0), (ours - theirs).abs().max()


def test_export_friendly_by_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    model = LGLDNet(input_size=64).eval()
    assert not any(isinstance(m, nn.Unfold) for m in model.modules())
    assert "global_stem.pos" in dict(model.named_buffers())
    assert "global_stem.pos" not in model.state_dict()  # rebuilt from the size, not stored

    def forbidden(*_a, **_k):
        raise AssertionError("sin/cos/arange called at run time")

    for name in ("sin", "cos", "arange"):
        monkeypatch.setattr(torch, name, forbidden)
    with torch.no_grad():
        model(torch.rand(1, 3, 64, 64))


def test_configurable_input_size_and_wrong_size_is_rejected() -> None:
    model = LGLDNet(num_classes=5, input_size=96).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, 96, 96)).shape == (2, 5)
        with pytest.raises(ValueError, match="built for"):
            model(torch.rand(1, 3, 64, 64))
        model.set_input_size(64)
        assert model(torch.rand(1, 3, 64, 64)).shape == (1, 5)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_ablation_variants(variant: str) -> None:
    model = LGLDNet(num_classes=4, input_size=32, variant=variant).eval()
    use_invo, use_lfa, use_gce = VARIANTS[variant]
    names = {n for n, _ in model.named_modules()}
    assert ("local_stem.invo.reduce" in names) == use_invo
    assert ("lfa.dw3" in names) == use_lfa
    assert ("gce.dil2" in names) == use_gce
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 4)
    if variant != "full":
        assert count_parameters(model) < count_parameters(LGLDNet(num_classes=4))


@pytest.mark.parametrize(
    "kwargs", [{"variant": "nope"}, {"num_classes": 1}, {"input_size": 15}, {"base_channels": 6}]
)
def test_bad_config_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        ModelConfig(**kwargs)
