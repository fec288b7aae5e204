"""Rules of surgeon/rules/elementwise.py: activation modules and functions, PReLU, dropout,
unary math and dtype / layout moves (identity coupling; constants pushed through exactly)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from tests.helpers import NetHarnesses


class ActNet(nn.Module):
    """PReLU with a weight per channel, dropout, clamp / abs / a dtype move, then a conv whose
    zeroed channels become constants (exp(-0) = 1) through hardswish and tanh."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3, padding=1)
        self.prelu = nn.PReLU(12)
        self.drop = nn.Dropout2d(0.2)
        self.mid = nn.Conv2d(12, 10, 1)
        self.act = nn.Hardswish()
        self.head = nn.Conv2d(10, 4, 1)

    def forward(self, x):
        y = self.drop(self.prelu(self.conv(x)))
        y = torch.clamp(F.leaky_relu(y, 0.1), -3.0, 3.0).abs().float()
        y = self.act(torch.exp(-self.mid(y)).contiguous())
        return self.head(torch.tanh(y))


class CastNet(nn.Module):
    """Gemma's RMSNorm scale: computed in float32, cast back with ``type_as(h)`` (``h`` lends
    only its dtype); a token mask cast with ``.long()`` / ``.bool()`` / ``.int()`` (DeBERTa)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 12)
        self.w = nn.Parameter(torch.randn(12) * 0.1)
        self.fc2 = nn.Linear(12, 4)

    def forward(self, x):
        h = self.fc1(x)
        mask = (x[..., :1] > -1.0).long().bool().int()
        y = (torch.tanh(h.float()) * (1.0 + self.w.float())).type_as(h)
        return self.fc2(torch.relu(y) * mask.to(y))


class TestNets(NetHarnesses):
    nets = {
        "activations": (ActNet, lambda: torch.randn(2, 3, 8, 8)),
        "casts": (CastNet, lambda: torch.randn(2, 5, 6)),
    }


def test_prelu_weight_is_sliced():
    slim = TestNets.slim("activations")
    assert slim.prelu.num_parameters == slim.prelu.weight.numel() == slim.conv.out_channels == 6
    assert slim.mid.out_channels == slim.head.in_channels == 5
