"""Acceptance of the core compiler on every zoo model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import surgeon
from surgeon.cost import count_macs, count_params
from surgeon.models import create
from tests.helpers import (
    assert_exact_at_zero,
    assert_same,
    assert_same_tensors,
    assert_slims_at_half,
    out_channels,
    params_from_widths,
    randomize_norms,
)

NAMES = [
    "lenet5",
    "vgg16_bn",
    "resnet18",
    "resnet50",
    "mobilenet_v2",
]  # issue 2 zoo; the rest: test_coverage


@pytest.fixture(scope="module", params=NAMES)
def zoo(request):
    model, x = create(request.param)
    randomize_norms(model)
    return request.param, model, x


def test_exactness_dead_channels_removed(zoo):
    """Hand-zeroed channels (filters, biases, norm affine) are removed by slim(ratio=0), exactly."""
    name, model, x = zoo
    slim, zeroed = assert_exact_at_zero(model, x, return_zeroed=True)
    assert zeroed, f"{name}: nothing to zero"
    # every zeroed producer lost exactly the zeroed channels; the others kept theirs
    for owner, k in zeroed.items():
        before = out_channels(model.get_submodule(owner))
        assert out_channels(slim.get_submodule(owner)) == before - k, owner
    # parameter count follows from the new widths alone (and dropped: the harness checks it)
    assert count_params(slim) == params_from_widths(slim)
    assert count_params(model) == params_from_widths(model)


def test_ratio_half(zoo):
    name, model, x = zoo
    graph = surgeon.analyze(model, x)
    # (the zoo's exports: test_export.py); the graph form, whose shapes are read below
    slim = assert_slims_at_half(model, x, export=False, returns="graph")
    grads = [p.grad for p in slim.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # every prunable group keeps 50% ± 1 of its channels, in every one of its spaces
    metas = {
        n.name: tuple(n.meta["tensor_meta"].shape)
        for n in slim.graph.nodes
        if "tensor_meta" in n.meta and hasattr(n.meta["tensor_meta"], "shape")
    }
    checked = 0
    for g in graph.prunable_groups():
        kept_classes = None
        for node, dim in g.spaces:
            if node not in metas:
                continue
            new, old = metas[node][dim], graph.sizes[(node, dim)]
            per_class = old // g.n_classes if old % g.n_classes == 0 else None
            if per_class:
                kept = new // per_class
                kept_classes = kept if kept_classes is None else kept_classes
                assert abs(kept - g.n_classes / 2) <= 1, (name, g.index, node, old, new)
                checked += 1
        assert kept_classes is not None
    assert checked > 0
    assert count_params(slim) < count_params(model) * 0.5


@pytest.mark.parametrize(
    "name,least", [("resnet50", 3.5), ("mobilenet_v2", 3.0), ("resnet18", 3.0), ("vgg16_bn", 3.5)]
)
def test_mac_reduction_at_224(name, least):
    model, x = create(name)
    slim = surgeon.slim(model, 0.5, x)
    ratio = count_macs(model, x) / count_macs(slim, x)
    assert ratio >= least, f"{name}: MACs dropped only {ratio:.2f}x"


def test_deterministic_and_input_untouched():
    model, x = create("resnet18")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert_same_tensors(surgeon.slim(model, 0.5, x), surgeon.slim(model, 0.5, x))
    assert_same_tensors(before, model)
    with torch.no_grad():
        assert model(x).shape == (1, 1000)


def test_inplace_reuses_the_model():
    model, x = create("lenet5")
    conv1 = model.conv1
    slim = surgeon.slim(model, 0.5, x, inplace=True)
    assert slim.conv1 is conv1
    assert conv1.out_channels == 3 and conv1.weight.shape[0] == 3
    assert slim(x).shape == (1, 10)


def test_lenet_exact_counts():
    """Hand count: LeNet-5 at ratio 0.5 keeps conv1 3/6, conv2 8/16, fc1 60/120, fc2 42/84."""
    model, x = create("lenet5")
    slim = surgeon.slim(model, 0.5, x)
    want = (
        (3 * 1 * 25 + 3) + (8 * 3 * 25 + 8) + (60 * 8 * 25 + 60) + (42 * 60 + 42) + (10 * 42 + 10)
    )
    assert count_params(slim) == want
    assert slim(torch.randn(4, 1, 32, 32)).shape == (4, 10)


def test_ratio_zero_is_identity_when_nothing_is_dead():
    model, x = create("mobilenet_v2", input_shape=(1, 3, 64, 64))
    randomize_norms(model)
    slim = surgeon.slim(model, 0.0, x)
    assert count_params(slim) == count_params(model)
    with torch.no_grad():
        assert_same(slim(x), model(x))


@pytest.mark.parametrize("importance", ["l1", "l2"])
@pytest.mark.parametrize("scope", ["local", "global"])
def test_criteria_scopes_round_to(importance, scope):
    model, x = create("resnet18", input_shape=(1, 3, 64, 64))
    slim = surgeon.slim(model, 0.5, x, importance=importance, scope=scope, round_to=8)
    assert slim(x).shape == (1, 1000)
    for _, m in slim.named_modules():
        if isinstance(m, torch.nn.Conv2d) and m.in_channels != 3:
            assert m.out_channels % 8 == 0, m
    if scope == "global":
        total = sum(g.n_classes for g in surgeon.analyze(model, x).prunable_groups())
        kept = sum(m.out_channels for m in slim.modules() if isinstance(m, torch.nn.Conv2d))
        assert kept < sum(m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        assert total > 0


def test_l1_and_l2_rank_by_magnitude():
    """The kept filters of a plain conv chain are the ones with the largest norms."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))
    with torch.no_grad():
        scale = torch.tensor([1.0, 9.0, 2.0, 8.0, 3.0, 7.0, 4.0, 6.0])
        net[0].weight.mul_(0).add_(scale.view(8, 1, 1, 1))
        net[2].weight.fill_(0.01)
    x = torch.randn(1, 3, 8, 8)
    slim = surgeon.slim(net, 0.5, x, importance="l1")
    kept = slim.get_submodule("0").weight[:, 0, 0, 0]
    assert sorted(kept.tolist()) == [6.0, 7.0, 8.0, 9.0]


def test_ignore_keeps_module_shapes():
    model, x = create("resnet18", input_shape=(1, 3, 64, 64))
    slim = surgeon.slim(model, 0.5, x, ignore=[model.layer1[0].conv1, "layer4"])
    assert slim.get_submodule("layer1.0.conv1").out_channels == 64
    assert slim.get_submodule("layer4.1.conv2").out_channels == 512
    assert slim.get_submodule("layer2.0.conv1").out_channels == 64
    np.testing.assert_array_equal(slim(x).shape, (1, 1000))
