"""ChannelPrunePass (surgeon/passes/prune.py): it decides which channel classes go and changes
no shape."""

from __future__ import annotations

import torch
import torch.nn as nn

import surgeon
from surgeon.options import SlimOptions
from surgeon.passes import ChannelPrunePass, state_of
from surgeon.passes.prune import segments
from tests.helpers import assert_exact_at_zero, traced_with_state


def test_prune_pass_marks_without_changing_shapes():
    gm, x = traced_with_state()
    before = {k: v.shape for k, v in gm.state_dict().items()}
    res = ChannelPrunePass(SlimOptions(0.5))(gm)
    assert res.modified and res.stats["removed_classes"] == 3 + 8 + 60 + 42
    assert state_of(gm).n_removed() == 3 + 8 + 60 + 42
    assert {k: v.shape for k, v in gm.state_dict().items()} == before
    again = ChannelPrunePass(SlimOptions(0.5))(gm)
    assert not again.modified and again.stats["removed_classes"] == 0


class Branches(nn.Module):
    """A concatenation of a loud branch (large weights) and a quiet one, then a conv."""

    def __init__(self):
        super().__init__()
        self.loud = nn.Conv2d(3, 8, 3, padding=1)
        self.quiet = nn.Conv2d(3, 24, 1)
        self.head = nn.Conv2d(32, 4, 1)
        with torch.no_grad():
            self.loud.weight.mul_(100.0)

    def forward(self, x):
        return self.head(torch.cat([torch.relu(self.loud(x)), torch.relu(self.quiet(x))], 1))


def test_local_scope_prunes_every_concatenated_input_alike():
    """``scope="local"``: the same ratio in every layer, also for the inputs of a cat that
    form one group; ranking across the whole group would empty the quiet branch instead."""
    torch.manual_seed(0)
    net, x = Branches().eval(), torch.randn(2, 3, 8, 8)
    (group,) = [g for g in surgeon.analyze(net, x).prunable_groups()]
    assert sorted(len(s) for s in segments(group)) == [8, 24]
    slim = surgeon.slim(net, 0.5, x)
    assert (slim.loud.out_channels, slim.quiet.out_channels) == (4, 12)
    assert slim.head.in_channels == 16
    glob = surgeon.slim(net, 0.5, x, scope="global")  # one threshold over all classes
    assert glob.loud.out_channels == 8 and glob.quiet.out_channels < 12
    assert_exact_at_zero(net, x)


def test_round_to_block_counts_the_classes_a_space_holds():
    # a concatenated input holds two of four whole-group classes, 8 channels each
    from types import SimpleNamespace

    import numpy as np

    from surgeon.passes.prune import _contiguous_width

    def block(cls):
        return _contiguous_width(
            SimpleNamespace(class_of={("x", 1): np.array(cls)}, n_classes=4), ("x", 1)
        )

    assert block([0] * 8 + [1] * 8) == 8
    assert block([0, 0, 1, 1, 0, 0, 1, 1]) == 1  # spread: one offset of every group
    assert block([]) == 1
