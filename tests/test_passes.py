"""The pass contract: PassResult, idempotence, the PassManager's failure message."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from surgeon.cost import count_params
from surgeon.errors import SurgeonPassError
from surgeon.graph import build_channel_graph
from surgeon.models import create
from surgeon.passes import (
    ChannelPrunePass,
    Pass,
    PassManager,
    PassResult,
    PropagatePass,
    PrunePlan,
    ResizePass,
)
from surgeon.trace import trace


def _setup(zero=False):
    model, x = create("lenet5")
    if zero:
        with torch.no_grad():
            model.conv2.weight[:5] = 0
            model.conv2.bias[:5] = 0
    gm = trace(model, x)
    plan = PrunePlan(build_channel_graph(gm))
    return gm, plan, x


def test_prune_pass_marks_without_changing_shapes():
    gm, plan, x = _setup()
    before = {k: v.shape for k, v in gm.state_dict().items()}
    res = ChannelPrunePass(plan, 0.5)(gm)
    assert res.modified and res.stats["removed_classes"] == 3 + 8 + 60 + 42
    assert {k: v.shape for k, v in gm.state_dict().items()} == before
    again = ChannelPrunePass(plan, 0.5)(gm)
    assert not again.modified and again.stats["removed_classes"] == 0


def test_propagate_pass_finds_dead_channels_once():
    gm, plan, x = _setup(zero=True)
    res = PropagatePass(plan)(gm)
    assert res.modified and res.stats["dead_classes"] == 5
    again = PropagatePass(plan)(gm)
    assert not again.modified and again.stats["dead_classes"] == 0


def test_resize_pass_slices_and_is_a_no_op_the_second_time():
    gm, plan, x = _setup(zero=True)
    with torch.no_grad():
        want = gm(x)
    PropagatePass(plan)(gm)
    params = count_params(gm)
    res = ResizePass(plan, x)(gm)
    assert (
        res.modified
        and res.stats["params_removed"]
        == params - count_params(gm)
        == 5 * (6 * 25 + 1) + 5 * 25 * 120
    )
    assert gm.conv2.out_channels == 11 and gm.fc1.in_features == 11 * 25
    with torch.no_grad():
        torch.testing.assert_close(gm(x), want)
    again = ResizePass(plan, x)(gm)
    assert not again.modified
    assert not ChannelPrunePass(plan, 0.5)(gm).modified


def test_nothing_to_do_is_not_modified():
    gm, plan, x = _setup()
    res = PassManager([ChannelPrunePass(plan, 0.0), PropagatePass(plan), ResizePass(plan, x)]).run(
        gm
    )
    assert not res.modified
    assert set(res.stats) == {"ChannelPrunePass", "PropagatePass", "ResizePass"}


class Boom(Pass):
    name = "BoomPass"

    def call(self, gm):
        raise RuntimeError("kaput")


class Noop(Pass):
    name = "NoopPass"

    def call(self, gm):
        return PassResult(gm, False)


def test_pass_manager_names_the_failing_pass_and_those_before():
    gm = torch.fx.symbolic_trace(nn.Linear(2, 2))
    with pytest.raises(
        SurgeonPassError,
        match=r"BoomPass failed: RuntimeError: kaput \(passes that already ran: NoopPass\)",
    ):
        PassManager([Noop(), Boom(), Noop()]).run(gm)
