"""Rules of surgeon/rules/reduce.py: pooling, resampling, reductions, softmax, normalize."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from tests.helpers import assert_exact_at_zero, assert_slims_at_half


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
