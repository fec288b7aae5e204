"""Rules of surgeon/rules/norm.py: batch, layer and group norms (affine and running statistics
follow the channel dim; statistics over a channel dim keep it whole)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tests.helpers import NetHarnesses, assert_exact, constant_channels


class NormNet(nn.Module):
    """BatchNorm2d after a conv, GroupNorm after another, then a channels-last LayerNorm."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 12, 3, padding=1)
        self.bn = nn.BatchNorm2d(12)
        self.conv2 = nn.Conv2d(12, 16, 1)
        self.gn = nn.GroupNorm(4, 16)
        self.ln = nn.LayerNorm(16)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        y = F.relu(self.bn(self.conv1(x)))
        y = F.gelu(self.gn(self.conv2(y)))
        return self.head(self.ln(y.permute(0, 2, 3, 1)).mean((1, 2)))


class TestNets(NetHarnesses):
    nets = {"norms": (NormNet, lambda: torch.randn(2, 3, 8, 8))}


def test_norm_widths_follow_their_channels():
    slim = TestNets.slim("norms")
    assert slim.bn.num_features == slim.conv1.out_channels == 6
    assert slim.gn.num_channels == slim.conv2.out_channels == 8 and slim.gn.num_groups == 4
    assert slim.ln.normalized_shape == (8,) and slim.head.in_features == 8
    assert slim.bn.running_mean.shape == slim.bn.running_var.shape == (6,)


class NormOnOtherDim(nn.Module):
    def __init__(self, norm):
        super().__init__()
        self.conv = nn.Conv1d(4, 8, 1)
        self.norm = norm
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.norm(self.conv(x).transpose(1, 2)))


@pytest.mark.parametrize("kind", ["bn_eval", "bn_train", "gn"])
def test_norm_statistics_over_a_channel_dim(kind):
    """(A review regression: each once slimmed wrongly.)"""
    torch.manual_seed(0)
    norm = nn.GroupNorm(2, 6) if kind == "gn" else nn.BatchNorm1d(6)
    net = NormOnOtherDim(norm)
    net.train(kind == "bn_train")
    with torch.no_grad():
        if kind == "bn_eval":
            net.norm.running_mean.uniform_(0.5, 1)
            constant_channels(net.conv, 3)
        else:
            net.fc.weight[:, 3] = 0
    assert_exact(net, torch.randn(2, 4, 6))
