"""The channel graph (surgeon/graph.py, through ``analyze()``): groups, tags and blocked
reasons, as printed; unknown ops and size reads block their dims; no constant is trusted for a
tensor that an op changes in place while another op reads it."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import surgeon
from surgeon.models import create
from tests.helpers import (
    assert_exact,
    assert_exact_at_zero,
    assert_slims_at_half,
    constant_channels,
    groups_of,
)


def test_resnet_residual_group():
    model, x = create("resnet18", input_shape=(1, 3, 64, 64))
    graph = surgeon.analyze(model, x)
    (g,) = groups_of(graph, "layer1.0.conv2")
    assert g.prunable and "residual" in g.tags
    owners = {p.owner for p in g.params if p.role == "producer"}
    assert owners == {"conv1", "layer1.0.conv2", "layer1.1.conv2"}
    assert g.n_classes == 64
    text = str(graph)
    assert "(residual)" in text and "layer1.1.conv2.weight[dim 0] producer" in text
    assert sum(g.prunable for g in graph.groups) == 12


def test_mobilenet_depthwise_group():
    model, x = create("mobilenet_v2", input_shape=(1, 3, 64, 64))
    graph = surgeon.analyze(model, x)
    dw = [m for m, mod in model.named_modules() if isinstance(mod, nn.Conv2d) and mod.groups > 1]
    assert len(dw) == 17
    for name in dw:
        (g,) = groups_of(graph, name)
        assert g.prunable and "depthwise" in g.tags, name
    assert "(depthwise)" in str(graph)


def test_flatten_to_linear_groups():
    for name, conv, fc in (("vgg16_bn", "features.40", "classifier.0"), ("lenet5", "conv2", "fc1")):
        model, x = create(name, input_shape=(1, 3, 64, 64) if name == "vgg16_bn" else None)
        graph = surgeon.analyze(model, x)
        (g,) = groups_of(graph, conv)
        assert g.prunable and "flatten" in g.tags, name
        assert any(p.owner == fc and p.dim == 1 and p.role == "consumer" for p in g.params)
        assert g.n_classes == model.get_submodule(conv).out_channels
        assert "(flatten)" in str(graph)


def test_blocked_reasons_are_printed():
    model, x = create("lenet5")
    text = str(surgeon.analyze(model, x))
    assert "blocked: model input" in text
    assert "blocked: model output" in text


class Unknown(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = torch.relu(self.conv1(x))
        y = torch.cumsum(self.conv2(y), dim=1)  # no rule: its dims are blocked
        return self.conv3(y)


def test_unknown_op_blocks_its_dims_and_the_model_still_slims():
    net = Unknown()
    x = torch.randn(2, 3, 8, 8)
    graph = surgeon.analyze(net, x)
    (g2,) = groups_of(graph, "conv2")
    assert g2.blocked and any("no rule for cumsum" in r for r in g2.reasons)
    (g1,) = groups_of(graph, "conv1")
    assert g1.prunable
    assert "no rule for cumsum" in str(graph)
    slim = surgeon.slim(net, 0.5, x)
    assert slim.conv1.out_channels == 4 and slim.conv2.out_channels == 8
    assert slim(x).shape == net(x).shape


class SizeArithmetic(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.fc = nn.Linear(16, 2)

    def forward(self, x):
        y = self.conv(x)
        return self.fc((y.sum(1) / y.size(1)).flatten(1))


def test_size_used_in_arithmetic_keeps_its_original_value():
    """(A review regression: it once slimmed wrongly, dividing by the new size.) A size read
    that scales a tensor is pinned to its original value: the removed constant channel is
    folded and the division still divides by 8, so the slim model is exact."""
    torch.manual_seed(0)
    net = SizeArithmetic()
    constant_channels(net.conv, 3)
    slim = assert_exact(net, torch.randn(2, 3, 4, 4))
    assert slim.conv.out_channels == 7
    half = surgeon.slim(net, 0.5, torch.randn(2, 3, 4, 4))
    assert half.conv.out_channels == 4 and "/ 8" in half.code


class InPlace(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.how = how
        self.a = nn.Linear(4, 6)
        self.f1 = nn.Linear(6, 3)
        self.f2 = nn.Linear(6, 3)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        h = self.a(x)
        if self.how == "relu":
            r = F.relu(h, inplace=True)
        elif self.how == "module":
            r = self.act(h)
        elif self.how == "add_":
            r = h.add_(1)
        else:
            r = h
            r += 1
        return self.f1(r) + self.f2(h)


@pytest.mark.parametrize("how", ["relu", "module", "add_"])
def test_in_place_op_on_a_shared_tensor(how):
    """(A review regression: each once slimmed wrongly.)"""
    torch.manual_seed(0)
    net = InPlace(how)
    constant_channels(net.a, 2, -1.0)
    assert_exact(net, torch.randn(5, 4))


class EmptyConstant(nn.Module):
    """A zero-size tensor the graph reads twice (a detector's empty detections): a shared
    tensor whose dim holds no channels."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 8)
        self.out = nn.Linear(8, 3)
        self.empty = torch.zeros(0)  # a plain tensor attribute: a graph constant

    def forward(self, x):
        h = torch.relu(self.fc(x))
        return self.out(h) + (self.empty * x[0, 0]).sum() + (self.empty * x[1, 0]).sum()


def test_a_zero_size_tensor_read_twice_couples_nothing(tmp_path):
    # was a bare ValueError (max of an empty index) while the shared tensors were coupled
    torch.manual_seed(0)
    net, x = EmptyConstant().eval(), torch.randn(2, 4)
    graph = surgeon.analyze(net, x)
    assert [g.channels for g in graph.prunable_groups()] == [8]
    slim = assert_slims_at_half(net, x, tmp_path)
    assert slim.fc.out_features == 4
    assert_exact_at_zero(net, x)
