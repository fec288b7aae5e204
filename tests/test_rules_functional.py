"""The functional forms of ops that have module rules (F.conv2d, F.linear, F.batch_norm,
F.layer_norm, F.group_norm, F.instance_norm, F.embedding, F.prelu, ...): parameters passed
to them are spaces like a module's weight, and a model written with them slims as exactly as
one written with modules."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import surgeon
from tests.helpers import assert_exact_at_zero, assert_slims_at_half, randomize_norms


class FConvNet(nn.Module):
    """Dense, depthwise and grouped convs written with F.conv2d on raw parameters."""

    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(8, 3, 3, 3) * 0.3)
        self.b1 = nn.Parameter(torch.randn(8) * 0.1)
        self.dw = nn.Parameter(torch.randn(8, 1, 3, 3) * 0.3)
        self.w2 = nn.Parameter(torch.randn(12, 4, 1, 1) * 0.3)
        self.head = nn.Conv2d(12, 5, 1)

    def forward(self, x):
        y = F.relu(F.conv2d(x, self.w1, self.b1, padding=1))
        y = F.conv2d(y, self.dw, None, 1, 1, 1, 8)  # depthwise: groups is rewritten
        y = F.conv2d(y, self.w2, groups=2)
        return self.head(y)


class NormAct(nn.BatchNorm2d):
    """timm's norm-act pattern: a BatchNorm2d subclass whose forward calls F.batch_norm."""

    def forward(self, x):
        x = F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.1, self.eps
        )
        return F.relu(x)


class LayerNorm2d(nn.LayerNorm):
    """torchvision's / timm's channels-first LayerNorm: permute, F.layer_norm, permute."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class FNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = NormAct(16)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)
        self.ln = LayerNorm2d(16)
        self.c3 = nn.Conv2d(16, 8, 1)
        self.gw = nn.Parameter(torch.rand(8) + 0.5)
        self.gb = nn.Parameter(torch.randn(8) * 0.1)
        self.c4 = nn.Conv2d(8, 8, 1)
        self.inorm = nn.InstanceNorm2d(8, affine=True)
        self.alpha = nn.Parameter(torch.rand(8) * 0.3)
        self.fw = nn.Parameter(torch.randn(6, 8) * 0.3)
        self.fb = nn.Parameter(torch.randn(6) * 0.1)
        self.out = nn.Linear(6, 4)

    def forward(self, x):
        y = self.bn(self.c1(x))
        y = self.ln(self.c2(y))
        y = F.group_norm(self.c3(y), 4, self.gw, self.gb)
        y = F.prelu(self.inorm(self.c4(y)), self.alpha)
        y = F.linear(y.mean((2, 3)), self.fw, self.fb)
        return self.out(F.gelu(y))


class FEmbed(nn.Module):
    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.randn(20, 12))
        self.proj = nn.Linear(12, 3)

    def forward(self, ids):
        return self.proj(F.embedding(ids, self.table))


class FDecoder(nn.Module):
    """F.conv_transpose2d upsampling, then cosine similarity against a second branch."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.up = nn.Parameter(torch.randn(8, 6, 2, 2) * 0.3)  # [in, out, kh, kw]
        self.ub = nn.Parameter(torch.randn(6) * 0.1)
        self.a = nn.Conv2d(6, 10, 1)
        self.b = nn.Conv2d(6, 10, 1)

    def forward(self, x):
        y = F.relu(F.conv_transpose2d(self.enc(x), self.up, self.ub, stride=2))
        return F.cosine_similarity(self.a(y), self.b(y), dim=1)


NETS = {
    "conv_transpose_cosine": (FDecoder, lambda: torch.randn(2, 3, 8, 8)),
    "conv": (FConvNet, lambda: torch.randn(2, 3, 8, 8)),
    "norms_prelu_linear": (FNormNet, lambda: torch.randn(2, 3, 8, 8)),
    "embedding": (FEmbed, lambda: torch.randint(0, 20, (2, 5))),
}


def _build(name):
    torch.manual_seed(0)
    cls, make_x = NETS[name]
    net = cls().eval()
    randomize_norms(net)
    return net, make_x()


@pytest.mark.parametrize("name", list(NETS))
def test_exact_at_zero(name):
    net, x = _build(name)
    assert_exact_at_zero(net, x)


@pytest.mark.parametrize("name", list(NETS))
def test_half_with_parity(name, tmp_path):
    net, x = _build(name)
    assert_slims_at_half(net, x, tmp_path)


def test_functional_conv_widths():
    net, x = _build("conv")
    slim = surgeon.slim(net, 0.5, x)
    assert tuple(slim.w1.shape) == (4, 3, 3, 3) and tuple(slim.b1.shape) == (4,)
    assert tuple(slim.dw.shape) == (4, 1, 3, 3)  # depthwise follows, groups 8 -> 4
    assert tuple(slim.w2.shape) == (6, 2, 1, 1) and slim.head.in_channels == 6


def test_functional_norm_tensors_follow_their_channels():
    net, x = _build("norms_prelu_linear")
    slim = surgeon.slim(net, 0.5, x)
    assert slim.c1.out_channels == 8 == slim.bn.running_mean.numel() == slim.bn.weight.numel()
    assert slim.c2.out_channels == 8 == slim.ln.weight.numel()
    assert slim.c3.out_channels == 4 == slim.gw.numel()  # 4 groups of 1
    assert slim.c4.out_channels == 4 == slim.alpha.numel() == slim.inorm.weight.numel()
    assert tuple(slim.fw.shape) == (3, 4) and slim.out.in_features == 3


def test_bn_scale_sees_functional_norms():
    """The functional batch norm's weight is a norm, so bn_scale ranks by it."""
    net, x = _build("norms_prelu_linear")
    with torch.no_grad():
        net.bn.weight.copy_(torch.arange(1, 17, dtype=torch.float))
    slim = surgeon.slim(net, 0.5, x, importance="bn_scale")
    assert slim.bn.weight.tolist() == list(range(9, 17))


def test_functional_conv_transpose_and_cosine_widths():
    net, x = _build("conv_transpose_cosine")
    slim = surgeon.slim(net, 0.5, x)
    assert tuple(slim.up.shape) == (4, 3, 2, 2) and slim.enc.out_channels == 4
    assert slim.a.out_channels == slim.b.out_channels == 5  # coupled through the similarity
