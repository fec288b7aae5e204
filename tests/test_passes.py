"""The pass contract: PassResult, state carried in gm.meta, requires / ensures, idempotence of
every pass, and the PassManager's failure message."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from surgeon.cost import count_params
from surgeon.errors import SurgeonPassError
from surgeon.graph import build_channel_graph
from surgeon.models import create
from surgeon.options import SlimOptions
from surgeon.passes import (
    STATE_KEY,
    ChannelPrunePass,
    CompensatePass,
    Pass,
    PassManager,
    PassResult,
    PropagatePass,
    ResizePass,
    SurgeryState,
    begin,
    state_of,
)
from surgeon.trace import trace


def _setup(name="lenet5", zero=False):
    model, x = create(name)
    if zero:
        with torch.no_grad():
            model.conv2.weight[:5] = 0
            model.conv2.bias[:5] = 0
    gm = trace(model, x)
    begin(gm, build_channel_graph(gm), x)
    return gm, x


def _weights(gm):
    return {k: v.detach().clone() for k, v in gm.state_dict().items()}


def test_prune_pass_marks_without_changing_shapes():
    gm, x = _setup()
    before = {k: v.shape for k, v in gm.state_dict().items()}
    res = ChannelPrunePass(SlimOptions(0.5))(gm)
    assert res.modified and res.stats["removed_classes"] == 3 + 8 + 60 + 42
    assert state_of(gm).n_removed() == 3 + 8 + 60 + 42
    assert {k: v.shape for k, v in gm.state_dict().items()} == before
    again = ChannelPrunePass(SlimOptions(0.5))(gm)
    assert not again.modified and again.stats["removed_classes"] == 0


def test_state_is_a_new_value_after_each_pass():
    gm, x = _setup()
    first = state_of(gm)
    ChannelPrunePass(SlimOptions(0.5))(gm)
    second = state_of(gm)
    assert second is not first and isinstance(second, SurgeryState)
    assert first.n_removed() == 0  # the earlier value is not edited in place
    with pytest.raises(Exception, match="frozen|cannot assign"):
        second.applied = True  # type: ignore[misc]


def test_propagate_pass_finds_dead_channels_once():
    gm, x = _setup(zero=True)
    res = PropagatePass()(gm)
    assert res.modified and res.stats["dead_classes"] == 5
    assert sum(int(m.sum()) for m in state_of(gm).dead.values()) == 5
    again = PropagatePass()(gm)
    assert not again.modified and again.stats["dead_classes"] == 0


def test_resize_pass_slices_and_is_a_no_op_the_second_time():
    gm, x = _setup(zero=True)
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


def test_every_pass_is_idempotent():
    """Each pass run twice in a row: the second run reports modified=False and changes no
    weight, buffer or decision (PropagatePass's own first run is pinned above)."""
    gm, x = _setup("resnet18")
    for p in (
        ChannelPrunePass(SlimOptions(0.5)),
        CompensatePass(),
        PropagatePass(),
        ResizePass(),
    ):
        first = p(gm)
        assert first.modified or isinstance(p, PropagatePass), p.name
        weights, state = _weights(gm), state_of(gm)
        again = p(gm)
        assert not again.modified, p.name
        after = _weights(gm)
        assert weights.keys() == after.keys()
        for k in weights:
            assert torch.equal(weights[k], after[k]), (p.name, k)
        new = state_of(gm)
        for a, b in ((state.removed, new.removed), (state.compensated, new.compensated)):
            assert all((a[g] == b[g]).all() for g in a), p.name


def test_compensate_pass_a_second_time_adds_nothing():
    """The regression a second CompensatePass run used to show: the same correction twice."""
    gm, x = _setup("resnet18")
    ChannelPrunePass(SlimOptions(0.5))(gm)
    CompensatePass()(gm)
    with torch.no_grad():
        once = gm(x)
    CompensatePass()(gm)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), once, rtol=0, atol=0)


def test_nothing_to_do_is_not_modified():
    gm, x = _setup()
    passes = [ChannelPrunePass(SlimOptions(0.0)), PropagatePass(), ResizePass()]
    res = PassManager(passes).run(gm)
    assert not res.modified
    assert set(res.stats) == {"ChannelPrunePass", "PropagatePass", "ResizePass"}


def test_a_pass_requires_the_state():
    gm = trace(*create("lenet5"))
    assert STATE_KEY not in gm.meta
    with pytest.raises(SurgeonPassError, match=r"carries no surgeon state.*begin"):
        ResizePass()(gm)


def test_resize_ensures_every_shape():
    """ResizePass's post-condition: a space whose size does not match its kept count fails."""
    gm, x = _setup()
    ChannelPrunePass(SlimOptions(0.5))(gm)
    ResizePass()(gm)
    state = state_of(gm)
    gm.meta[STATE_KEY] = state.replace(removed={g: m & False for g, m in state.removed.items()})
    with pytest.raises(SurgeonPassError, match=r"after resizing, node '.*' has shape"):
        ResizePass().ensures(gm)


class Boom(Pass):
    def call(self, gm):
        raise RuntimeError("kaput")


class Noop(Pass):
    def call(self, gm):
        return PassResult(gm, False)


def test_pass_name_comes_from_the_class():
    assert Noop().name == "Noop" and ResizePass().name == "ResizePass"


def test_pass_manager_names_the_failing_pass_and_those_before():
    gm = torch.fx.symbolic_trace(nn.Linear(2, 2))
    with pytest.raises(
        SurgeonPassError,
        match=r"Boom failed: RuntimeError: kaput \(passes that already ran: Noop\)",
    ):
        PassManager([Noop(), Boom(), Noop()]).run(gm)
