"""ResizePass (surgeon/passes/resize.py): it slices what the plan removes, rewrites sizes,
re-runs the model, and ensures every shape; a failure names the pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import surgeon
from surgeon.capture import trace
from surgeon.cost import count_params
from surgeon.errors import SurgeonError, SurgeonPassError
from surgeon.graph import build_channel_graph
from surgeon.options import SlimOptions
from surgeon.passes import (
    STATE_KEY,
    ChannelPrunePass,
    PassManager,
    PropagatePass,
    ResizePass,
    begin,
    state_of,
)
from surgeon.passes import resize as resize_module
from tests.helpers import assert_exact_at_zero, traced_with_state


def test_resize_pass_slices_and_is_a_no_op_the_second_time():
    gm, x = traced_with_state(zero=True)
    with torch.no_grad():
        want = gm(x)
    PropagatePass()(gm)
    params = count_params(gm)
    res = ResizePass()(gm)
    assert (
        res.modified
        and res.stats["params_removed"]
        == params - count_params(gm)
        == 5 * (6 * 25 + 1) + 5 * 25 * 120
    )
    assert gm.conv2.out_channels == 11 and gm.fc1.in_features == 11 * 25
    assert state_of(gm).applied and state_of(gm).kept["conv2.weight"][0].tolist() == list(
        range(5, 16)
    )
    with torch.no_grad():
        torch.testing.assert_close(gm(x), want)
    again = ResizePass()(gm)
    assert not again.modified
    assert not ChannelPrunePass(SlimOptions(0.5))(gm).modified


def test_resize_ensures_every_shape():
    """ResizePass's post-condition: a space whose size does not match its kept count fails."""
    gm, x = traced_with_state()
    ChannelPrunePass(SlimOptions(0.5))(gm)
    ResizePass()(gm)
    state = state_of(gm)
    gm.meta[STATE_KEY] = state.replace(removed={g: m & False for g, m in state.removed.items()})
    with pytest.raises(SurgeonPassError, match=r"after resizing, node '.*' has shape"):
        ResizePass().ensures(gm)


class Viewed(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(4, 2)

    def forward(self, x):
        return self.b(self.a(x).view(-1, 4))


def test_resize_failure_names_the_pass():
    """(A review regression: a model that no longer runs after resizing.)"""
    x = torch.randn(2, 3)
    gm = trace(Viewed(), x)
    state = begin(gm, build_channel_graph(gm), x)
    (g,) = state.removed
    removed = {g: state.removed[g].copy()}
    removed[g][:2] = True
    gm.meta[STATE_KEY] = state.replace(removed=removed)
    view = next(n for n in gm.graph.nodes if n.target == "view")

    def sabotage(size):  # a wrong size constant, as a broken rule would write
        view.args = (view.args[0], -1, 3)

    state.graph.records["view"].resize_fns.append(sabotage)
    with pytest.raises(
        SurgeonError, match=r"ResizePass failed: the resized model no longer runs.*view"
    ):
        PassManager([ResizePass()]).run(gm)


class SizeFromPruned(nn.Module):
    """A reshape size computed in the graph from a dim that prunes (``C // 4`` read from
    ``y.shape``, as timm's TalkingHeadAttn does)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.qkv = nn.Linear(16, 24)
        self.mlp = nn.Linear(16, 32)
        self.out = nn.Linear(32, 4)

    def forward(self, x):
        y = self.a(x)
        b, n, c = y.shape
        q = self.qkv(y).reshape(b, n, 3, 2, c // 4)
        return self.out(torch.relu(self.mlp(y))) + q.sum((2, 3, 4)).unsqueeze(-1)


def test_a_size_read_from_a_pruned_dim_keeps_the_original_size():
    """The size read (``c``) is pinned to its original value in the resized graph, so the
    reshape stays right and every group prunes, with no retry."""
    torch.manual_seed(0)
    net, x = SizeFromPruned().eval(), torch.randn(2, 5, 8)
    slim = surgeon.slim(net, 0.5, x)
    assert slim.a.out_features == 8 and slim.mlp.out_features == 16
    assert not slim.meta["surgeon.plan"]["blocked"]
    with torch.no_grad():
        assert slim(x).shape == net(x).shape
    assert_exact_at_zero(net, x)


def test_a_group_whose_resize_fails_is_blocked_and_slim_retries(caplog, monkeypatch):
    """Without the pinning (as a rule that sized something wrongly would leave it), the
    reshape breaks after resizing: that group is blocked, slim retries, the rest prunes."""
    monkeypatch.setattr(resize_module, "_pin_size_reads", lambda gm, state: None)
    torch.manual_seed(0)
    net, x = SizeFromPruned().eval(), torch.randn(2, 5, 8)
    slim = surgeon.slim(net, 0.5, x)
    assert "retrying with" in caplog.text
    assert slim.a.out_features == 16  # the group the reshape size is read from stays
    assert slim.mlp.out_features == 16  # the hidden group still prunes
    assert any(
        "resizing it failed at node" in w for w in slim.meta["surgeon.plan"]["blocked"].values()
    )
    with torch.no_grad():
        assert slim(x).shape == net(x).shape
