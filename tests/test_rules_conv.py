"""Rules of surgeon/rules/conv.py: ungrouped, grouped and depthwise Conv1d / 2d / 3d (and the
fold of a constant channel into an unpadded conv's bias)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import surgeon
from tests.helpers import (
    NetHarnesses,
    assert_exact,
    assert_exact_at_zero,
    assert_slims_at_half,
    randomize_norms,
    seeded,
)


class GroupedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 1)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.dw = nn.Conv2d(16, 32, 3, padding=1, groups=16)  # depthwise, multiplier 2
        self.bn = nn.BatchNorm2d(32)
        self.gn = nn.GroupNorm(4, 32)
        self.head = nn.Conv2d(32, 6, 1)

    def forward(self, x):
        y = F.relu(self.conv1(x))
        y = F.relu6(self.grouped(y))
        y = self.gn(F.hardswish(self.bn(self.dw(y))))
        return self.head(y)


class Seq1d3d(nn.Module):
    """Conv1d / BatchNorm1d on a sequence and Conv3d / BatchNorm3d on a volume."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(3, 8, 3, padding=1)
        self.b1 = nn.BatchNorm1d(8)
        self.c1b = nn.Conv1d(8, 8, 3, padding=1, groups=8)
        self.c3 = nn.Conv3d(3, 6, 3, padding=1)
        self.b3 = nn.BatchNorm3d(6)
        self.p3 = nn.AdaptiveAvgPool3d(1)
        self.fc_in = nn.Linear(8 + 6, 10)
        self.bn_fc = nn.BatchNorm1d(10)
        self.fc = nn.Linear(10, 2)

    def forward(self, x):
        seq, vol = x[:, :, :, 0, 0], x
        a = F.avg_pool1d(self.c1b(F.elu(self.b1(self.c1(seq)))), 2).amax(-1)
        b = torch.flatten(self.p3(F.relu(self.b3(self.c3(vol)))), 1)
        return self.fc(F.relu(self.bn_fc(self.fc_in(torch.cat([a, b], 1)))))


NETS = {
    "grouped_depthwise": (GroupedNet, lambda: torch.randn(2, 3, 8, 8)),
    "conv1d_conv3d": (Seq1d3d, lambda: torch.randn(2, 3, 4, 4, 4)),
}


class TestNets(NetHarnesses):
    nets = NETS


def test_grouped_conv_keeps_groups_equal():
    net, x = seeded(*NETS["grouped_depthwise"])
    slim = surgeon.slim(net, 0.5, x)
    g = slim.grouped
    assert g.groups == 4 and g.in_channels % 4 == 0 and g.out_channels % 4 == 0
    assert slim.dw.groups == slim.dw.in_channels and slim.dw.out_channels == 2 * slim.dw.in_channels
    assert slim.gn.num_channels % 4 == 0


class WholeGroups(nn.Module):
    """A grouped conv (4 groups of 4 in, of 8 out) between two 1x1 convs, as ``nn.Conv2d``
    with a batch norm, or as ``F.conv2d``. (GroupedNet's GroupNorm removes the same offsets
    of its own groups, which ties all of a whole-group conv's classes into one.)"""

    def __init__(self, functional: bool = False):
        super().__init__()
        self.functional = functional
        self.conv1 = nn.Conv2d(3, 16, 1)
        self.grouped = nn.Conv2d(16, 32, 3, padding=1, groups=4)
        self.bn = nn.BatchNorm2d(32)
        self.head = nn.Conv2d(32, 5, 1)

    def forward(self, x):
        y = F.relu(self.conv1(x))
        if self.functional:
            y = F.conv2d(y, self.grouped.weight, self.grouped.bias, 1, 1, 1, 4)
        else:
            y = self.bn(self.grouped(y))
        return self.head(F.relu(y))


@pytest.mark.parametrize("name", ["module", "functional"])
def test_whole_groups_prune_and_keep_their_width(name, tmp_path):
    net, x = seeded(lambda: WholeGroups(name == "functional"), lambda: torch.randn(2, 3, 8, 8))
    # exact: hand-zeroed whole groups go and the function stays
    zeroed = assert_exact_at_zero(net, x, grouped="groups")
    slim = assert_slims_at_half(net, x, tmp_path, grouped="groups")  # ORT parity inside
    for s, groups in ((zeroed, 3), (slim, 2)):
        w = s.grouped.weight
        assert w.shape == (8 * groups, 4, 3, 3) and s.conv1.out_channels == 4 * groups
        if name == "module":
            assert (s.grouped.groups, s.grouped.in_channels) == (groups, 4 * groups)
    assert slim.meta["surgeon.plan"]["grouped"] == "groups"
    offsets = surgeon.slim(net, 0.5, x)
    assert offsets.grouped.weight.shape == (16, 2, 3, 3)  # every group narrower
    assert offsets.meta["surgeon.plan"]["grouped"] == "offsets"


def test_grouped_auto_takes_whole_groups_at_the_measured_widths(monkeypatch):
    import surgeon.autotune as autotune
    import surgeon.pipeline as pipeline

    net, x = seeded(WholeGroups, lambda: torch.randn(2, 3, 8, 8))
    for widths, groups in (((4,), 2), ((8, 16), 4)):
        monkeypatch.setattr(pipeline, "grouped_widths", lambda provider, threads, w=widths: w)
        slim = surgeon.slim(net, 0.5, x, grouped="auto")
        assert slim.grouped.groups == groups
        assert slim.meta["surgeon.plan"]["grouped"] == list(widths)
    monkeypatch.setattr(autotune, "channel_multiple", lambda provider, threads: 1)
    monkeypatch.setattr(autotune, "grouped_widths", lambda provider, threads: (4,))
    assert surgeon.slim(net, 0.5, x, round_to="auto").grouped.groups == 2  # auto with it


def test_round_to_counts_channels_not_classes():
    # a class is a whole group of 4 in / 8 out channels: round_to=8 keeps an even number of
    # groups (the old rule kept a multiple of 8 classes, here every group: nothing pruned)
    net, x = seeded(WholeGroups, lambda: torch.randn(2, 3, 8, 8))
    slim = surgeon.slim(net, 0.75, x, grouped="groups", round_to=8)
    assert slim.grouped.groups == 2 and slim.grouped.out_channels == 16
    assert slim.conv1.out_channels == 8


class ConstChain(nn.Module):
    def __init__(self, pad):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 4, 3, padding=pad)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        y = self.conv2(F.relu(self.bn(self.conv1(x))))
        return self.fc(F.relu(y).mean((2, 3)))


@pytest.mark.parametrize("pad", [0, 1])
def test_constant_channel_is_folded_only_where_exact(pad):
    """A BN with zero scale and a shift gives a constant channel: it is folded into the next
    conv's bias when that conv has no padding, and kept when padding would make it wrong."""
    torch.manual_seed(0)
    net = ConstChain(pad).eval()
    randomize_norms(net)
    with torch.no_grad():
        net.bn.weight[[1, 4]] = 0  # a zero scale: the channel is the shift, in train and eval mode
        net.bn.bias[[1, 4]] = torch.tensor([0.7, 1.3])
    slim = assert_exact(net, torch.randn(2, 3, 8, 8))
    assert slim.conv1.out_channels == (4 if pad == 0 else 6)


def _grouped_chain(width: int, norm: bool = False) -> nn.Module:
    """conv 1x1 -> grouped 3x3 (4 groups of ``width``) [-> GroupNorm(4)] -> 1x1 head."""
    c = 4 * width
    layers = [nn.Conv2d(3, c, 1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1, groups=4)]
    layers += [nn.GroupNorm(4, c)] if norm else []
    return nn.Sequential(*layers, nn.ReLU(), nn.Conv2d(c, 5, 1))


def test_measured_widths_fall_back_to_offsets_where_whole_groups_prune_nothing():
    # the GroupNorm removes the same offsets of its 4 groups, which ties the grouped conv's
    # whole-group classes into one: at its measured width the conv then narrows its groups
    torch.manual_seed(0)
    net, x = _grouped_chain(6, norm=True).eval(), torch.randn(1, 3, 8, 8)
    measured = surgeon.slim(net, 0.5, x, grouped=(6,))
    offsets = surgeon.slim(net, 0.5, x, grouped="offsets")
    assert measured[2].weight.shape == offsets[2].weight.shape == (12, 3, 3, 3)
    assert measured.meta["surgeon.plan"]["whole_groups"] == []
    assert surgeon.slim(net, 0.5, x, grouped="groups")[2].weight.shape == (24, 6, 3, 3)
    plain = surgeon.slim(_grouped_chain(6).eval(), 0.5, x, grouped=(6,))  # no norm: whole
    assert plain[2].weight.shape == (12, 6, 3, 3) and plain[2].groups == 2


def test_an_iterative_schedule_keeps_each_convs_choice():
    # width 16 narrowed by offsets reaches 8, a measured width: later steps must not switch
    torch.manual_seed(0)
    net, x = _grouped_chain(16).eval(), torch.randn(1, 3, 8, 8)
    slim = surgeon.prune_iteratively(net, 0.75, x, steps=3, schedule="linear", grouped=(8,))
    assert slim[2].groups == 4 and slim[2].weight.shape == (16, 4, 3, 3)


def test_round_to_keeps_the_in_group_width_a_multiple_when_groups_narrow():
    torch.manual_seed(0)
    net, x = _grouped_chain(16).eval(), torch.randn(1, 3, 8, 8)
    for ratio in (0.3, 0.5):
        slim = surgeon.slim(net, ratio, x, round_to=16)  # offsets: 16 per group stays
        assert slim[2].weight.shape[1] == 16
    assert surgeon.slim(net, 0.5, x, round_to=8)[2].weight.shape[1] == 8


def test_analyze_checks_grouped():
    from surgeon.errors import SurgeonInputError

    net, x = _grouped_chain(6).eval(), torch.randn(1, 3, 8, 8)
    assert surgeon.analyze(net, x, grouped=None).prunable_groups()
    with pytest.raises(SurgeonInputError, match="grouped='group'"):
        surgeon.analyze(net, x, grouped="group")
