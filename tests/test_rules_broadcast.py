"""Rules of surgeon/rules/broadcast.py: add / sub / mul / div with broadcasting (residuals,
gates, scales)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

import surgeon
from tests.helpers import NetHarnesses, seeded


class SENet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.fc1 = nn.Conv2d(16, 4, 1)
        self.fc2 = nn.Conv2d(4, 16, 1)
        self.out = nn.Conv2d(16, 5, 3)

    def forward(self, x):
        y = F.silu(self.bn(self.conv(x)))
        s = y.mean((2, 3), keepdim=True)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        return self.out(y * s)


class MaskNet(nn.Module):
    """``torch.where`` and ``masked_fill`` with a broadcast mask (a padding mask over
    positions): the channels pass through both and prune; the mask's size-1 dim stays."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 12)
        self.b = nn.Linear(12, 12)
        self.o = nn.Linear(12, 3)
        self.register_buffer("keep", torch.tensor([1, 1, 0, 1, 0]).bool().view(5, 1))

    def forward(self, x):
        h = torch.relu(self.a(x))
        h = torch.where(self.keep, h, torch.zeros_like(h))
        g = torch.relu(self.b(h)).masked_fill(~self.keep, 0.0)
        return self.o(g + h)


class AffineNet(nn.Module):
    """timm's Affine layer: ``torch.addcmul(beta, alpha, x)``, a per-channel scale and shift."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 12)
        self.alpha = nn.Parameter(torch.randn(12))
        self.beta = nn.Parameter(torch.randn(12))
        self.o = nn.Linear(12, 3)

    def forward(self, x):
        return self.o(torch.relu(torch.addcmul(self.beta, self.alpha, self.a(x))))


NETS = {
    "se_gate": (SENet, lambda: torch.randn(2, 3, 8, 8)),
    "addcmul": (AffineNet, lambda: torch.randn(2, 5, 6)),
    "where_masked_fill": (MaskNet, lambda: torch.randn(2, 5, 6)),
}


class TestNets(NetHarnesses):
    nets = NETS


def test_train_mode_model_slims():
    net, x = seeded(*NETS["se_gate"])
    net.train()
    slim = surgeon.slim(net, 0.5, x)
    assert slim.training
    slim(x).sum().backward()


def test_where_and_masked_fill_prune_the_channels():
    slim = TestNets.slim("where_masked_fill")
    assert (slim.a.out_features, slim.b.out_features) == (6, 6)
    assert tuple(slim.keep.shape) == (5, 1)


def test_addcmul_scale_and_shift_prune_with_the_channels():
    slim = TestNets.slim("addcmul")
    assert slim.a.out_features == 6 and tuple(slim.alpha.shape) == tuple(slim.beta.shape) == (6,)
