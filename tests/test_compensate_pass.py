"""CompensatePass (surgeon/passes/compensate.py): the expected contribution of removed
channels is folded into their consumers (a norm's running mean, else a bias), from norm
statistics alone or measured on data; a second run adds nothing; a tied weight is never
changed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import surgeon
from surgeon.options import SlimOptions
from surgeon.passes import ChannelPrunePass, CompensatePass
from surgeon.passes.compensate import expected_mean
from tests.helpers import (
    MLP,
    ConvNet,
    assert_same,
    convnet,
    digit_batches,
    digits_test_accuracy,
    matching_rows,
    mlp_data,
    traced_with_state,
)


def test_compensate_pass_a_second_time_adds_nothing():
    """The regression a second CompensatePass run used to show: the same correction twice."""
    gm, x = traced_with_state("resnet18")
    ChannelPrunePass(SlimOptions(0.5))(gm)
    CompensatePass()(gm)
    with torch.no_grad():
        once = gm(x)
    CompensatePass()(gm)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), once, rtol=0, atol=0)


# -- expected means from norm statistics -----------------------------------------------------
def test_expected_mean_of_bn_relu_is_the_rectified_gaussian_mean():
    model, x = convnet()
    graph = surgeon.analyze(model, x)
    relu = next(n for n in graph.gm.graph.nodes if n.name == "relu")
    got = expected_mean(graph.gm, relu, 1)
    mu, sigma = model.bn1.bias.double(), model.bn1.weight.double().abs()
    z = mu / sigma
    phi = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
    want = mu * cdf + sigma * phi
    np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-5, atol=1e-7)


def test_expected_mean_through_pool_and_flatten_and_unknown_producers():
    model, x = convnet()
    graph = surgeon.analyze(model, x)
    nodes = {n.name: n for n in graph.gm.graph.nodes}
    flat = expected_mean(graph.gm, nodes["flatten"], 1)
    relu1 = expected_mean(graph.gm, nodes["relu_1"], 1)
    np.testing.assert_allclose(flat, relu1)
    assert expected_mean(graph.gm, nodes["conv1"], 1) is None  # no norm: not computable


# -- what compensation changes ---------------------------------------------------------------
def test_compensation_from_data_keeps_the_consumer_mean_exactly():
    """For a Linear consumer, folding the measured means keeps its mean output over the same
    data exactly (the fold is linear); without it the mean moves."""
    torch.manual_seed(3)
    model = MLP(hidden=10).eval()
    with torch.no_grad():
        model.fc1.bias.add_(1.0)  # most units active: a clear mean to lose
    data = mlp_data(3)
    xs = torch.cat([x for x, _ in data])
    want = model(xs).mean(0)
    comp = surgeon.slim(model, 0.5, data[0][0], data=data)
    plain = surgeon.slim(model, 0.5, data[0][0], compensate=False)
    torch.testing.assert_close(comp(xs).mean(0), want, atol=1e-5, rtol=1e-5)
    assert (plain(xs).mean(0) - want).abs().max() > 1e-2


def test_compensate_false_is_plain_slicing():
    model, x = convnet()
    slim = surgeon.slim(model, 0.5, x, compensate=False)
    ref = surgeon.slim(model, 0.5, x)
    # compensation moved bn2's running mean (conv2 lost inputs), slicing alone does not
    assert not torch.equal(slim.bn2.running_mean, ref.bn2.running_mean)
    torch.testing.assert_close(slim.bn1.running_mean, ref.bn1.running_mean)
    masked = ConvNet().eval()
    masked.load_state_dict(model.state_dict())
    keep1 = matching_rows(model.bn1.weight, slim.bn1.weight)
    drop = torch.ones(8, dtype=torch.bool)
    drop[keep1] = False
    with torch.no_grad():
        masked.conv2.weight[:, drop] = 0
    keep2 = matching_rows(model.bn2.weight, slim.bn2.weight)
    drop2 = torch.ones(12, dtype=torch.bool)
    drop2[keep2] = False
    with torch.no_grad():
        masked.fc.weight[:, drop2] = 0
    assert_same(slim(x), masked(x))


def test_compensation_into_bn_adds_no_parameter_and_a_bias_when_there_is_no_bn():
    model, x = convnet()
    comp, plain = surgeon.slim(model, 0.5, x), surgeon.slim(model, 0.5, x, compensate=False)
    assert surgeon.count_params(comp) == surgeon.count_params(plain)
    assert comp.conv2.bias is None
    torch.testing.assert_close(comp.bn2.weight, plain.bn2.weight)
    assert not torch.equal(comp.bn2.running_mean, plain.bn2.running_mean)
    assert not torch.equal(comp.fc.bias, plain.fc.bias)  # the head has no norm: its bias


def test_compensation_from_data_reconstructs_a_removed_unit_that_its_kept_units_span():
    """Hidden unit 5 is half of unit 2 (ReLU is positively homogeneous): regressing it on the
    kept units recovers it exactly, so removing it with data changes nothing."""
    torch.manual_seed(4)
    model = MLP(hidden=8).eval()
    with torch.no_grad():
        model.fc1.weight[5] = 0.5 * model.fc1.weight[2]
        model.fc1.bias[5] = 0.5 * model.fc1.bias[2]
        model.fc2.weight[:, 5] *= 0.3  # the lowest l2 score: it is the unit removed
    data = mlp_data(4, batches=4, n=64)
    xs = torch.cat([x for x, _ in data])
    slim = surgeon.slim(model, 0.125, data[0][0], data=data)
    plain = surgeon.slim(model, 0.125, data[0][0], compensate=False)
    assert slim.fc1.out_features == 7
    assert_same(slim(xs), model(xs), tol=1e-4)
    assert (plain(xs) - model(xs)).abs().max() > 1e-2


class TiedHeads(nn.Module):
    """Two branches whose heads share one weight: their hidden spaces form one prunable group
    through the tie, and compensation must not change the shared tensor for one of them."""

    def __init__(self) -> None:
        super().__init__()
        self.fc_a, self.fc_b = nn.Linear(6, 8), nn.Linear(6, 8)
        self.head_a, self.head_b = nn.Linear(8, 3), nn.Linear(8, 3, bias=False)
        self.head_b.weight = self.head_a.weight  # tied

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_a(torch.relu(self.fc_a(x))) + self.head_b(torch.relu(self.fc_b(x)))


def test_compensation_never_changes_a_tied_weight():
    torch.manual_seed(5)
    model = TiedHeads().eval()
    data = [(torch.randn(32, 6), torch.randint(0, 3, (32,)))]
    assert surgeon.analyze(model, data[0][0]).prunable_groups()  # the check is not vacuous
    slim = surgeon.slim(model, 0.25, data[0][0], data=data)
    plain = surgeon.slim(model, 0.25, data[0][0], compensate=False)
    assert slim.head_a.in_features == 6
    torch.testing.assert_close(slim.head_a.weight, plain.head_a.weight, rtol=0, atol=0)
    assert slim.head_b.weight is slim.head_a.weight  # the tie survives the cut
    assert len(list(slim.parameters())) == len(list(model.parameters()))
    assert slim.head_b.bias is None


# -- on real data: the digits baseline (tests/conftest.py) -----------------------------------
@pytest.mark.parametrize("importance", ["l2", "taylor"])
def test_compensation_raises_zero_shot_digits_accuracy(digits_trained, importance):
    model, data = digits_trained
    x, batches = data.x_test[:1], digit_batches(data)
    kwargs = {"importance": importance, "data": batches, "loss_fn": F.cross_entropy}
    with_it = digits_test_accuracy(surgeon.slim(model, 0.3, x, **kwargs), data)
    without = digits_test_accuracy(surgeon.slim(model, 0.3, x, compensate=False, **kwargs), data)
    print(f"{importance} at ratio 0.3, zero-shot: {with_it:.2f}% compensated, {without:.2f}% not")
    assert with_it >= without + 10


def test_compensation_from_norm_statistics_alone_helps_one_layer(digits_trained):
    """Without data, the removed channels' means come from block2's BN through its ReLU."""
    model, data = digits_trained
    x = data.x_test[:1]
    only_block2 = ["features.block1", "features.block4"]  # protects every other group
    with_it = surgeon.slim(model, 0.5, x, ignore=only_block2)
    without = surgeon.slim(model, 0.5, x, ignore=only_block2, compensate=False)
    assert with_it.features.block2.conv.out_channels == 32
    assert with_it.features.block3.conv.out_channels == 128
    a, b = digits_test_accuracy(with_it, data), digits_test_accuracy(without, data)
    print(f"block2 halved, zero-shot: {a:.2f}% compensated, {b:.2f}% not")
    assert a >= b + 10
