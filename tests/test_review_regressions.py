"""Regressions from a review hunting silently wrong slim models: each net once slimmed wrongly
or crashed, and slim(net, 0.0) must keep the function exactly. Most now live beside the module
they pin (test_rules_index / _linear / _norm, test_graph, test_trace, test_propagate_pass,
test_resize_pass); this one pins the rule registry (surgeon/rules/registry.py)."""

from __future__ import annotations

import torch
import torch.nn as nn

from tests.helpers import assert_exact, constant_channels


class WSConv(nn.Conv2d):
    """A conv subclass that changes the computation without overriding forward."""

    def _conv_forward(self, x, w, b):
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.var((1, 2, 3), keepdim=True) + 1e-5).sqrt()
        return super()._conv_forward(x, w, b)


def test_leaf_subclass_that_overrides_a_method_is_not_trusted():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 1), WSConv(8, 4, 1), nn.Conv2d(4, 2, 1))
    constant_channels(net[0], 2)
    slim = assert_exact(net, torch.randn(2, 3, 4, 4), leaf_modules=(WSConv,))
    assert slim.get_submodule("1").in_channels == 8
