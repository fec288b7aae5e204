"""PropagatePass (surgeon/passes/propagate.py): it closes the removal decision over the graph,
exactly: dead channels (zero weights, ignored by their consumers, or constants folded into an
affine consumer's bias) go, repeatedly, and a fold that would not be exact is not made."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn as nn

from surgeon.models import create
from surgeon.passes import PropagatePass, state_of
from tests.helpers import assert_exact, assert_same, constant_channels, traced_with_state


def test_propagate_pass_finds_dead_channels_once():
    gm, x = traced_with_state(zero=True)
    res = PropagatePass()(gm)
    assert res.modified and res.stats["dead_classes"] == 5
    assert sum(int(m.sum()) for m in state_of(gm).dead.values()) == 5
    again = PropagatePass()(gm)
    assert not again.modified and again.stats["dead_classes"] == 0


def test_consumer_that_ignores_a_channel_removes_it():
    net = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        net[2].weight[:, [0, 5]] = 0
    slim = assert_exact(net, torch.randn(4, 5))
    assert slim.get_submodule("0").out_features == 6


def test_removal_cascades_through_dead_consumers():
    """conv2's filter 0 reads only channels that conv1 loses: it becomes its bias, a constant,
    and goes too (folded into the Linear)."""
    net = nn.Sequential(
        nn.Conv2d(3, 4, 1), nn.Conv2d(4, 3, 1), nn.Flatten(), nn.Linear(3 * 4 * 4, 2)
    )
    constant_channels(net[0], [0, 1])
    with torch.no_grad():
        net[1].weight[0, 2:] = 0
    slim = assert_exact(net, torch.randn(2, 3, 4, 4))
    assert slim.get_submodule("0").out_channels == 2
    assert slim.get_submodule("1").out_channels == 2


class CalledTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        h = self.a(x)
        return self.fc(h) + self.fc(h.relu())


def test_module_called_twice_is_not_folded_twice():
    """(A review regression: one bias, two call sites; folding into it once per site was wrong.)"""
    torch.manual_seed(0)
    net = CalledTwice()
    constant_channels(net.a, 2, 1.0)
    assert_exact(net, torch.randn(5, 4))


def test_propagate_says_when_it_stops_at_its_round_limit(caplog):
    import surgeon.pipeline
    from surgeon.options import SlimOptions

    model, x = create("resnet18", input_shape=(1, 3, 32, 32))
    with torch.no_grad():
        model.layer1[0].conv1.weight[:4] = 0  # dead filters: one round of propagation
    original = surgeon.pipeline.surgery_passes

    def limited(options: SlimOptions, decision=None):
        passes = original(options, decision)
        return [PropagatePass(max_rounds=1) if isinstance(p, PropagatePass) else p for p in passes]

    with pytest.MonkeyPatch.context() as mp, caplog.at_level(logging.WARNING):
        mp.setattr(surgeon.pipeline, "surgery_passes", limited)
        slim = surgeon.slim(model, 0.0, x)
    assert "PropagatePass stopped at its round limit (1 rounds)" in caplog.text
    with torch.no_grad():
        assert_same(slim(x), model(x), 1e-5)
