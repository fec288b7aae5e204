"""Bad input gets a clear error naming the value and the way out."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import surgeon
from surgeon.errors import SurgeonError, SurgeonInputError, SurgeonTraceError
from surgeon.models import create


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, float("nan"), "0.5", True])
def test_ratio_out_of_range(ratio):
    model, x = create("lenet5")
    with pytest.raises(ValueError, match="ratio="):
        surgeon.slim(model, ratio, x)


def test_bad_options():
    model, x = create("lenet5")
    with pytest.raises(SurgeonInputError, match="importance='l3'"):
        surgeon.slim(model, 0.5, x, importance="l3")
    with pytest.raises(SurgeonInputError, match="scope='everywhere'"):
        surgeon.slim(model, 0.5, x, scope="everywhere")
    with pytest.raises(SurgeonInputError, match="round_to=0"):
        surgeon.slim(model, 0.5, x, round_to=0)
    with pytest.raises(SurgeonInputError, match="not a submodule"):
        surgeon.slim(model, 0.5, x, ignore=[nn.Linear(2, 2)])
    with pytest.raises(SurgeonInputError, match="torch.nn.Module"):
        surgeon.slim(lambda t: t, 0.5, x)


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.gate = Gate()

    def forward(self, x):
        return self.gate(self.conv(x))


class Gate(nn.Module):
    def forward(self, x):
        if x.mean() > 0:  # data-dependent control flow
            return x * 2
        return x


def test_data_dependent_control_flow():
    with pytest.raises(SurgeonTraceError) as info:
        surgeon.slim(Branchy(), 0.5, torch.randn(1, 3, 8, 8))
    msg = str(info.value)
    assert "module 'gate' (Gate)" in msg
    assert "test_errors.py" in msg and "if x.mean() > 0" in msg
    assert "leaf_modules" in msg
    assert isinstance(info.value, SurgeonError)


def test_leaf_modules_are_honoured():
    net = Branchy()
    x = torch.randn(1, 3, 8, 8)
    graph = surgeon.analyze(net, x, leaf_modules=(Gate,))
    assert any(n.op == "call_module" and n.target == "gate" for n in graph.gm.graph.nodes)
    slim = surgeon.slim(net, 0.5, x, leaf_modules=(Gate,))
    with torch.no_grad():
        torch.testing.assert_close(slim(x), net(x))  # the leaf's dims are blocked: nothing changes


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 16)
        self.b = nn.Linear(16, 3)

    def forward(self, x, scale=None):
        h = torch.relu(self.a(x))
        if scale is not None:
            h = h * scale
        return self.b(h)


def test_tuple_and_dict_inputs():
    net = TwoInputs()
    x = torch.randn(5, 6)
    for inputs in (x, (x,), {"x": x}):
        slim = surgeon.slim(net, 0.5, inputs)
        assert slim.a.out_features == 8
        assert slim(x).shape == (5, 3)
    with pytest.raises(SurgeonInputError, match="unknown key"):
        surgeon.slim(net, 0.5, {"x": x, "y": x})


def test_bad_example_inputs():
    model, _ = create("lenet5")
    with pytest.raises(SurgeonTraceError, match="example_inputs"):
        surgeon.slim(model, 0.5, torch.randn(1, 3, 32, 32))
