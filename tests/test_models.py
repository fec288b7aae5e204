"""Tests of the model zoo: parameter counts, shapes, fx traceability, determinism, errors."""

from __future__ import annotations

import pytest
import torch
import torch.fx
from torch import nn

from surgeon.errors import SurgeonInputError
from surgeon.models import DEFAULT_MODEL, ZOO, ZooEntry, create

# Reference parameter counts (torchvision's figures for the ImageNet models, 1000 classes).
# The later zoo additions are covered by tests/test_models_coverage.py.
EXPECTED_PARAMS = {
    "lenet5": 61_706,
    "vgg16_bn": 138_365_992,
    "resnet18": 11_689_512,
    "resnet50": 25_557_032,
    "mobilenet_v2": 3_504_872,
}
EXPECTED_CLASSES = {
    "lenet5": 10,
    "vgg16_bn": 1000,
    "resnet18": 1000,
    "resnet50": 1000,
    "mobilenet_v2": 1000,
}


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module", params=sorted(EXPECTED_PARAMS))
def built(request: pytest.FixtureRequest) -> tuple[str, nn.Module, torch.Tensor]:
    """Each zoo model built once (seed 0) with its default example input."""
    name = request.param
    model, example = create(name)
    return name, model, example


def test_zoo_keys_and_default() -> None:
    assert set(EXPECTED_PARAMS) <= set(ZOO)
    assert DEFAULT_MODEL in ZOO
    for entry in ZOO.values():
        assert isinstance(entry, ZooEntry)
        assert entry.input_shape[0] == 1
        assert entry.description


def test_param_count(built: tuple[str, nn.Module, torch.Tensor]) -> None:
    name, model, _ = built
    assert _num_params(model) == EXPECTED_PARAMS[name]


def test_eval_mode_and_example(built: tuple[str, nn.Module, torch.Tensor]) -> None:
    name, model, example = built
    assert not model.training
    assert all(not m.training for m in model.modules())
    assert tuple(example.shape) == ZOO[name].input_shape
    assert example.dtype == torch.float32


def test_forward_shape_and_fx_trace(built: tuple[str, nn.Module, torch.Tensor]) -> None:
    name, model, example = built
    with torch.no_grad():
        out = model(example)
        assert out.shape == (example.shape[0], EXPECTED_CLASSES[name])
        assert torch.isfinite(out).all()
        traced = torch.fx.symbolic_trace(model)
        traced.eval()
        torch.testing.assert_close(traced(example), out)


def test_create_is_deterministic(built: tuple[str, nn.Module, torch.Tensor]) -> None:
    name, model, example = built
    again, example_again = create(name, seed=0)
    assert torch.equal(example, example_again)
    state, state_again = model.state_dict(), again.state_dict()
    assert state.keys() == state_again.keys()
    for key, value in state.items():
        assert torch.equal(value, state_again[key]), key


def test_different_seed_differs() -> None:
    a, xa = create("lenet5", seed=0)
    b, xb = create("lenet5", seed=1)
    assert not torch.equal(xa, xb)
    assert not torch.equal(a.conv1.weight, b.conv1.weight)


def test_num_classes_and_input_shape_kwargs() -> None:
    model, example = create("lenet5", num_classes=7, input_shape=(3, 1, 32, 32))
    assert example.shape == (3, 1, 32, 32)
    with torch.no_grad():
        assert model(example).shape == (3, 7)
    model, example = create("mobilenet_v2", num_classes=5, input_shape=(2, 3, 64, 64))
    assert example.shape == (2, 3, 64, 64)
    assert model.classifier[-1].out_features == 5


def test_lenet_keeps_literal_view() -> None:
    model, _ = create("lenet5")
    graph = torch.fx.symbolic_trace(model).graph
    views = [n for n in graph.nodes if n.op == "call_method" and n.target == "view"]
    assert len(views) == 1
    assert views[0].args[2] == 400


def test_mobilenet_has_depthwise_convs() -> None:
    model, _ = create("mobilenet_v2")
    depthwise = [
        m
        for m in model.modules()
        if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels
    ]
    assert len(depthwise) == 17
    assert all(m.out_channels == m.in_channels for m in depthwise)


def test_unknown_name_raises() -> None:
    with pytest.raises(SurgeonInputError, match="no_such_net") as info:
        create("no_such_net")
    for name in ZOO:
        assert name in str(info.value)
    assert isinstance(info.value, ValueError)


def test_bad_input_shape_raises() -> None:
    with pytest.raises(SurgeonInputError):
        create("lenet5", input_shape=(1, 0, 32, 32))
