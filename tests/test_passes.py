"""The pass contract: PassResult, state carried in gm.meta, requires / ensures, idempotence of
every pass, and the PassManager's failure message. What each pass does is pinned in its own
file: tests/test_prune_pass.py, test_compensate_pass.py, test_propagate_pass.py and
test_resize_pass.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from surgeon.capture import trace
from surgeon.errors import SurgeonPassError
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
    state_of,
)
from tests.helpers import traced_with_state, weights_of


def test_state_is_a_new_value_after_each_pass():
    gm, x = traced_with_state()
    first = state_of(gm)
    ChannelPrunePass(SlimOptions(0.5))(gm)
    second = state_of(gm)
    assert second is not first and isinstance(second, SurgeryState)
    assert first.n_removed() == 0  # the earlier value is not edited in place
    with pytest.raises(Exception, match="frozen|cannot assign"):
        second.applied = True  # type: ignore[misc]


def test_every_pass_is_idempotent():
    """Each pass run twice in a row: the second run reports modified=False and changes no
    weight, buffer or decision (PropagatePass's own first run is pinned in
    tests/test_propagate_pass.py)."""
    gm, x = traced_with_state("resnet18")
    for p in (
        ChannelPrunePass(SlimOptions(0.5)),
        CompensatePass(),
        PropagatePass(),
        ResizePass(),
    ):
        first = p(gm)
        assert first.modified or isinstance(p, PropagatePass), p.name
        weights, state = weights_of(gm), state_of(gm)
        again = p(gm)
        assert not again.modified, p.name
        after = weights_of(gm)
        assert weights.keys() == after.keys()
        for k in weights:
            assert torch.equal(weights[k], after[k]), (p.name, k)
        new = state_of(gm)
        for a, b in ((state.removed, new.removed), (state.compensated, new.compensated)):
            assert all((a[g] == b[g]).all() for g in a), p.name


def test_nothing_to_do_is_not_modified():
    gm, x = traced_with_state()
    passes = [ChannelPrunePass(SlimOptions(0.0)), PropagatePass(), ResizePass()]
    res = PassManager(passes).run(gm)
    assert not res.modified
    assert set(res.stats) == {"ChannelPrunePass", "PropagatePass", "ResizePass"}


def test_a_pass_requires_the_state():
    gm = trace(*create("lenet5"))
    assert STATE_KEY not in gm.meta
    with pytest.raises(SurgeonPassError, match=r"carries no surgeon state.*begin"):
        ResizePass()(gm)


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
