"""Rules of surgeon/rules/index.py: cat, split / chunk, getitem (of tuples and tensors),
unbind, and slicing / narrow on any dim (offset couplings whose bounds are rewritten when
channels before or inside them go)."""

from __future__ import annotations

import operator

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import surgeon
from tests.helpers import (
    NetHarnesses,
    Widen,
    assert_exact,
    assert_exact_at_zero,
    assert_slims_at_half,
    randomize_norms,
    seeded,
)


class CatNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(3, 9, 1)
        self.bn = nn.BatchNorm2d(15)
        self.head = nn.Conv2d(15, 4, 3, padding=1)

    def forward(self, x):
        return self.head(F.relu(self.bn(torch.cat([self.a(x), self.b(x)], dim=1))))


class SplitNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 3, padding=1)
        self.left = nn.Conv2d(4, 4, 3, padding=1)
        self.right = nn.Conv2d(8, 8, 1)
        self.tail = nn.Conv2d(12, 8, 1)
        self.pair = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = torch.relu(self.stem(x))
        a, b = torch.split(y, [4, 8], dim=1)
        y = torch.cat((self.left(a), self.right(b)), 1)
        h1, h2 = self.tail(y).chunk(2, dim=1)
        return self.pair(torch.cat([h1 * h2, h1 + h2], dim=1))


class GatherNet(nn.Module):
    """A table read by an index buffer (a relative-position table, ``table[index]``): the
    gathered dim and the index's dims stay, the table's other dim prunes with the channels."""

    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.randn(9, 16))
        self.register_buffer("index", torch.randint(0, 9, (5,)))
        self.q = nn.Linear(8, 16)
        self.o = nn.Linear(16, 4)

    def forward(self, x):
        return self.o(torch.relu(self.q(x)) * self.table[self.index])


class InPlaceMask(Widen):
    """A mask made with ``new_zeros`` and filled region by region in place (as shifted-window
    attention builds it), added to the channels through ``zeros_like``: the mask's dims keep
    their size, the channels prune."""

    def forward(self, x):
        h = torch.relu(self.a(x))
        mask = x.new_zeros((x.shape[1], 1))
        mask[:2] = 1.0
        return self.o(h * mask + torch.zeros_like(h))


class StackNet(nn.Module):
    """Two branches stacked on a new dim and summed over it (timm's selective kernels)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 12)
        self.b = nn.Linear(6, 12)
        self.o = nn.Linear(12, 3)

    def forward(self, x):
        s = torch.stack([torch.relu(self.a(x)), torch.relu(self.b(x))], dim=1)
        return self.o(s.sum(1))


NETS = {
    "stack": (StackNet, lambda: torch.randn(2, 5, 6)),
    "gather": (GatherNet, lambda: torch.randn(2, 5, 8)),
    "in_place_mask": (InPlaceMask, lambda: torch.randn(2, 5, 6)),
    "cat": (CatNet, lambda: torch.randn(2, 3, 8, 8)),
    "split_chunk": (SplitNet, lambda: torch.randn(2, 3, 8, 8)),
}


class TestNets(NetHarnesses):
    nets = NETS


def test_cat_keeps_one_channel_per_input():
    net, x = seeded(*NETS["cat"])
    slim = surgeon.slim(net, 0.9, x)
    assert slim.a.out_channels >= 1 and slim.b.out_channels >= 1
    assert (
        slim.a.out_channels + slim.b.out_channels == slim.bn.num_features == slim.head.in_channels
    )
    assert slim(x).shape == (2, 4, 8, 8)


def test_split_sizes_and_chunks_are_rewritten():
    net, x = seeded(*NETS["split_chunk"])
    slim = surgeon.slim(net, 0.5, x)
    assert slim.left.in_channels + slim.right.in_channels == slim.stem.out_channels
    assert slim.tail.out_channels % 2 == 0  # chunk(2) keeps its halves equal
    assert slim.pair.in_channels == slim.tail.out_channels


class TuplePieces(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.how = how
        self.a = nn.Conv2d(3, 8, 1)
        self.c = nn.Conv2d(4 if how in ("last", "split_last") else 8, 2, 1)

    def forward(self, x):
        y = self.a(x)
        if self.how == "last":
            z = y.chunk(2, 1)[-1]
        elif self.how == "split_last":
            z = torch.split(y, [4, 4], 1)[-1]
        elif self.how == "cat":
            z = torch.cat(y.chunk(2, 1), 1)
        else:
            z = torch.stack(y.chunk(2, 1)).sum(0).repeat(1, 2, 1, 1)
        return self.c(z)


@pytest.mark.parametrize("how", ["last", "split_last", "cat", "stack"])
def test_tuple_valued_nodes_are_described_or_blocked(how):
    """(A review regression: each once slimmed wrongly or crashed.)"""
    torch.manual_seed(0)
    net = TuplePieces(how)
    assert_exact(net, torch.randn(2, 3, 4, 4))
    assert surgeon.slim(net, 0.5, torch.randn(2, 3, 4, 4))(torch.randn(2, 3, 4, 4)).shape == (
        2,
        2,
        4,
        4,
    )


def test_bool_index_is_not_an_int_index():
    class BoolIndex(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return self.conv(x)[True]

    x = torch.randn(2, 3, 4, 4)
    assert surgeon.slim(BoolIndex(), 0.5, x)(x).shape == (1, 2, 4, 4, 4)


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


def test_a_gathered_dim_stays_and_the_others_prune():
    net, x = seeded(GatherNet, lambda: torch.randn(2, 5, 8))
    slim = surgeon.slim(net, 0.5, x)
    assert slim.q.out_features == 8 and tuple(slim.table.shape) == (9, 8)
    assert tuple(slim.index.shape) == (5,)


def test_an_in_place_mask_keeps_its_size_and_the_channels_prune():
    net, x = TestNets.build("in_place_mask")
    slim = surgeon.slim(net, 0.5, x, returns="graph")
    assert slim.a.out_features == 6
    assert any(n.target is operator.setitem for n in slim.graph.nodes)
    assert type(surgeon.slim(net, 0.5, x)) is InPlaceMask  # its own forward verifies too
