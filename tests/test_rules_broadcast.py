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


NETS = {"se_gate": (SENet, lambda: torch.randn(2, 3, 8, 8))}


class TestNets(NetHarnesses):
    nets = NETS


def test_train_mode_model_slims():
    net, x = seeded(*NETS["se_gate"])
    net.train()
    slim = surgeon.slim(net, 0.5, x)
    assert slim.training
    slim(x).sum().backward()
