"""Rules of surgeon/rules/reduce.py: pooling, resampling, reductions, softmax, normalize."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from tests.helpers import NetHarnesses, assert_exact_at_zero, assert_slims_at_half


class NormalizeNet(nn.Module):
    """Embeddings L2-normalised over channels (as in metric learning), then a head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3, padding=1)
        self.head = nn.Conv2d(12, 5, 1)

    def forward(self, x):
        return self.head(F.normalize(F.relu(self.conv(x)), dim=1))


def test_normalize(tmp_path):
    torch.manual_seed(0)
    net, x = NormalizeNet().eval(), torch.randn(2, 3, 8, 8)
    assert_exact_at_zero(net, x)
    slim = assert_slims_at_half(net, x, tmp_path)
    assert slim.conv.out_channels == 6 == slim.head.in_channels


class UpNet(nn.Module):
    """Down with a strided conv, up with a transposed conv and with interpolate."""

    def __init__(self):
        super().__init__()
        self.down = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(8, 6, 2, stride=2)
        self.skip = nn.Conv2d(3, 6, 1)
        self.head = nn.Conv2d(12, 2, 1)

    def forward(self, x):
        u = self.up(torch.tanh(self.down(x)))
        u2 = F.interpolate(self.down(x), scale_factor=2.0, mode="nearest")
        return self.head(torch.cat([u, self.skip(x)], 1)) + u2[:, :2]


class TestNets(NetHarnesses):
    nets = {"upsample": (UpNet, lambda: torch.randn(2, 3, 8, 8))}
