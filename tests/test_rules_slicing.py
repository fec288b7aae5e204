"""Index slicing and narrow on any dim (``x[:, :k]``, ``x[..., a:b]``, ``x.narrow``): offset
couplings whose bounds are rewritten when channels before or inside them go."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

import surgeon
from tests.helpers import assert_exact_at_zero, assert_slims_at_half, randomize_norms


class Ghost(nn.Module):
    """GhostNet's module: a primary conv, a cheap depthwise conv on it, cat, keep the first
    ``oup`` channels."""

    def __init__(self, cin=8, oup=12):
        super().__init__()
        self.oup = oup
        init = -(-oup // 2)
        self.primary = nn.Sequential(nn.Conv2d(cin, init, 1), nn.BatchNorm2d(init), nn.ReLU())
        self.cheap = nn.Sequential(
            nn.Conv2d(init, init, 3, padding=1, groups=init), nn.BatchNorm2d(init), nn.ReLU()
        )

    def forward(self, x):
        x1 = self.primary(x)
        out = torch.cat([x1, self.cheap(x1)], dim=1)
        return out[:, : self.oup, :, :]


class SliceNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.ghost = Ghost(8, 11)  # 12 channels made, 11 kept: one is never read
        self.mid = nn.Conv2d(11, 16, 1)
        self.a = nn.Conv2d(6, 4, 1)
        self.b = nn.Conv2d(10, 4, 1)

    def forward(self, x):
        y = F.relu(self.mid(self.ghost(F.relu(self.stem(x)))))
        return self.a(y[:, 2:8]) + self.b(y.narrow(1, 6, 10))


def _net():
    torch.manual_seed(0)
    net = SliceNet().eval()
    randomize_norms(net)
    return net, torch.randn(2, 3, 8, 8)


def test_exact_at_zero():
    assert_exact_at_zero(*_net())


def test_half_with_parity(tmp_path):
    net, x = _net()
    assert_slims_at_half(net, x, tmp_path)


def test_unread_channels_go_at_ratio_zero():
    """mid's channels 0 and 1 are read by neither slice (y[:, 2:8], y.narrow(1, 6, 10)): slim(0)
    removes them, exactly, and both slices' bounds move down by two."""
    net, x = _net()
    slim = surgeon.slim(net, 0.0, x)
    assert slim.mid.out_channels == 14
    assert slim.a.in_channels == 6 and slim.b.in_channels == 10
    with torch.no_grad():
        torch.testing.assert_close(slim(x), net(x))
    code = slim.code
    assert "slice(0, 6" in code and "narrow(" in code and ", 4, 10)" in code


def test_overlapping_slices_couple_what_they_share():
    net, x = _net()
    slim = surgeon.slim(net, 0.5, x)
    # y[:, 2:8] and y.narrow(1, 6, 10) share channels 6 and 7 of mid's 16 outputs
    assert slim.a.in_channels + slim.b.in_channels >= slim.mid.out_channels
    assert slim.a.in_channels < 6 and slim.b.in_channels < 10
