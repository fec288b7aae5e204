"""The rule registry (surgeon/rules/registry.py): one decorator for modules, functions and
methods; traits; strict mode; no rule is trusted for a subclass that overrides a method, nor
cuts a weight it cannot see (a parametrized one: its channels stay, and analyze says why)."""

from __future__ import annotations

import operator

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import surgeon
from surgeon import rules
from surgeon.errors import SurgeonRuleError
from surgeon.rules import registry
from tests.helpers import assert_exact, assert_same, constant_channels, weight_norm_net


def test_register_tells_modules_functions_and_methods_apart():
    assert registry._MODULES[nn.Conv2d] is rules.conv.conv_rule
    assert registry._FUNCTIONS[torch.cat] is rules.index.cat_rule
    assert registry._METHODS["view"] is rules.shape.view_method_rule
    assert registry._FUNCTIONS[operator.getitem] is rules.index.getitem_rule


def test_traits_say_what_an_op_means_in_one_place():
    assert set(rules.modules_with("weighted")) == {
        nn.Conv1d,
        nn.Conv2d,
        nn.Conv3d,
        nn.ConvTranspose1d,
        nn.ConvTranspose2d,
        nn.ConvTranspose3d,
        nn.Linear,
    }
    from surgeon.cost import PRUNABLE_TYPES

    assert set(PRUNABLE_TYPES) == set(rules.modules_with("weighted"))
    assert {nn.Dropout, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Identity} <= set(
        rules.modules_with("mean_keeping")
    )
    assert nn.MaxPool2d not in rules.modules_with("mean_keeping")
    assert nn.ReLU in rules.modules_with("elementwise")
    assert nn.Flatten in rules.modules_with("flatten")


class Scaled(nn.Module):
    """conv -> a custom op (``torch.erf``, whose rule we break) -> conv."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(8, 8, 1)
        self.c = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.c(torch.erf(self.b(self.a(x))))


@pytest.fixture
def broken_erf(monkeypatch):
    def broken(ctx):
        raise ZeroDivisionError("deliberately broken rule")

    monkeypatch.setitem(registry._FUNCTIONS, torch.erf, broken)


def test_strict_mode_fails_on_a_broken_rule(broken_erf):
    x = torch.randn(1, 3, 8, 8)
    assert registry.is_strict()  # the suite runs strict (tests/conftest.py)
    with pytest.raises(SurgeonRuleError, match=r"rule for .*erf.* failed: ZeroDivisionError"):
        surgeon.slim(Scaled().eval(), 0.5, x)


def test_normal_mode_blocks_the_broken_ops_dims_and_slims_the_rest(broken_erf, caplog):
    model, x = Scaled().eval(), torch.randn(1, 3, 8, 8)
    with rules.strict(False):
        graph = surgeon.analyze(model, x)
        slim = surgeon.slim(model, 0.5, x)
    reasons = [r for g in graph.groups for r in g.reasons]
    assert any("failed: ZeroDivisionError: deliberately broken rule" in r for r in reasons)
    assert "deliberately broken rule" in caplog.text
    # the group around erf (b's output) keeps its 8 channels, a's output still prunes
    assert slim.b.out_channels == 8 and slim.c.in_channels == 8
    assert slim.a.out_channels == 4
    assert slim(x).shape == model(x).shape


def test_functional_forms_register_beside_their_modules():
    assert registry._FUNCTIONS[F.relu] is registry._FUNCTIONS[torch.relu]


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


X = torch.randn(2, 3, 12, 12)


@pytest.mark.parametrize("kind", ["weight", "spectral"])
def test_a_parametrized_weight_keeps_its_channels_and_says_why(kind):
    model = weight_norm_net(kind)
    keys = list(model.state_dict())
    slim0 = surgeon.slim(model, 0.0, X)
    with torch.no_grad():
        assert_same(slim0(X), model(X), 1e-6)
    assert list(slim0.state_dict()) == keys
    slim = surgeon.slim(model, 0.5, X)
    assert list(slim.state_dict()) == keys
    assert slim[2].weight.shape == (8, 8, 3, 3)  # the parametrized conv stays whole
    assert slim[4].weight.shape == (8, 8, 3, 3)  # the next group still prunes
    assert "is parametrized" in str(surgeon.analyze(model, X))
