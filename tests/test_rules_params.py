"""Rules of surgeon/rules/params.py: parameters and buffers read directly in ``forward``
(layer scales, shifts, cls tokens, position embeddings) are sliced with their channels."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import surgeon
from surgeon.rules.params import constant_slices
from tests.helpers import NetHarnesses, assert_exact, seeded
from tests.test_rules_shape import NETS as SHAPE_NETS


class ScaleNet(nn.Module):
    """A per-channel scale (a parameter) and shift (a buffer) read in forward, between convs."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 10, 3, padding=1)
        self.scale = nn.Parameter(torch.rand(10, 1, 1) + 0.5)
        self.register_buffer("shift", torch.randn(10, 1, 1))
        self.head = nn.Conv2d(10, 4, 1)

    def forward(self, x):
        return self.head(F.relu(self.conv(x) * self.scale + self.shift))


class TestNets(NetHarnesses):
    nets = {"scale_and_shift": (ScaleNet, lambda: torch.randn(2, 3, 8, 8))}


def test_scale_and_shift_are_sliced():
    slim = TestNets.slim("scale_and_shift")
    assert slim.conv.out_channels == 5 == slim.head.in_channels
    assert slim.scale.shape == slim.shift.shape == (5, 1, 1)
    assert isinstance(slim.scale, nn.Parameter) and "shift" in dict(slim.named_buffers())


def test_layer_scale_parameter_is_sliced():
    net, x = seeded(*SHAPE_NETS["channels_last"])
    slim = surgeon.slim(net, 0.5, x)
    assert slim.gamma.shape == (slim.conv.out_channels,) == (6,)
    assert slim.ln.normalized_shape == (6,)


class ReadsItsConvWeight(nn.Module):
    """A patch embedding that reads its conv's weight directly (``.dtype``), as Hugging
    Face's ViT does: the conv's kernel dims must not become channels of their own."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, 8, 4, stride=4)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        y = self.proj(x.to(self.proj.weight.dtype))
        return self.head(y.flatten(2).mean(-1))


def test_a_weight_read_directly_keeps_the_dims_its_module_uses_whole():
    """(A regression: the kernel dims were pruned as unused channels, silently.)"""
    net, x = seeded(ReadsItsConvWeight, lambda: torch.randn(2, 3, 8, 8))
    graph = surgeon.analyze(net, x)
    assert [g.n_classes for g in graph.prunable_groups()] == [8]
    slim = assert_exact(net, x)
    assert tuple(slim.proj.weight.shape) == (8, 3, 4, 4)
    assert tuple(surgeon.slim(net, 0.5, x).proj.weight.shape) == (4, 3, 4, 4)


@settings(max_examples=80)
@given(
    shape=st.lists(st.integers(0, 4), min_size=1, max_size=3),
    values=st.sampled_from([[0.0], [0.0, 1.0], [1.5, float("nan")], [-2.0, 3.0, 0.5]]),
    integer=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_constant_slices_equal_the_min_max_of_every_slice(shape, values, integer, seed):
    """Few distinct values make many constant slices; NaN slices are never constant."""
    g = torch.Generator().manual_seed(seed)
    pool = torch.tensor(values, dtype=torch.float64)
    t = pool[torch.randint(len(values), shape, generator=g)]
    if integer:
        t = torch.nan_to_num(t).to(torch.int64)
    got = constant_slices(t)
    for d, vals in enumerate(got):
        rest = math.prod(n for i, n in enumerate(t.shape) if i != d)
        flat = t.double().movedim(d, 0).reshape(t.shape[d], rest)
        for i in range(t.shape[d]):
            row = flat[i]
            const = row.numel() > 0 and bool((row == row[0]).all())
            if const:
                assert vals[i] == float(row[0])
            else:
                assert np.isnan(vals[i])
