"""Tests of the wider zoo: exact parameter counts, output shapes, fx traceability, structure."""

from __future__ import annotations

import pytest
import torch
import torch.fx
from torch import nn

from surgeon.models import ZOO, create

# torchvision's figures at 1000 classes (GoogLeNet: no aux logits, no transform_input);
# vit_tiny and unet_small have no torchvision counterpart, these are our implementations'.
EXPECTED_PARAMS = {
    "resnext50_32x4d": 25_028_904,
    "mobilenet_v3_large": 5_483_032,
    "efficientnet_b0": 5_288_548,
    "densenet121": 7_978_856,
    "googlenet": 6_624_904,
    "shufflenet_v2_x1_0": 2_278_604,
    "convnext_tiny": 28_589_128,
    "regnety_400mf": 4_344_144,
    "vit_tiny": 5_717_416,
    "unet_small": 476_610,
}
IMAGENET_INPUT = (1, 3, 224, 224)
EXPECTED_OUTPUT = {name: (1, 1000) for name in EXPECTED_PARAMS}
EXPECTED_OUTPUT["unet_small"] = (1, 2, 64, 64)

Built = tuple[str, nn.Module, torch.Tensor, torch.Tensor, torch.fx.GraphModule]


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module", params=sorted(EXPECTED_PARAMS))
def built(request: pytest.FixtureRequest) -> Built:
    """Each new zoo model built once via ``create`` (seed 0), its eager output and its fx trace."""
    name = request.param
    model, example = create(name)
    with torch.no_grad():
        out = model(example)
    traced = torch.fx.symbolic_trace(model)
    traced.eval()
    return name, model, example, out, traced


def _targets(traced: torch.fx.GraphModule, op: str) -> list[object]:
    return [node.target for node in traced.graph.nodes if node.op == op]


def _modules(model: nn.Module, kind: type[nn.Module]) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, kind)]


def test_registered_with_default_inputs() -> None:
    assert set(EXPECTED_PARAMS) <= set(ZOO)
    for name in EXPECTED_PARAMS:
        want = (1, 3, 64, 64) if name == "unet_small" else IMAGENET_INPUT
        assert ZOO[name].input_shape == want
        assert ZOO[name].description


def test_param_count(built: Built) -> None:
    name, model, *_ = built
    assert _num_params(model) == EXPECTED_PARAMS[name]


def test_create_gives_eval_model_and_example(built: Built) -> None:
    name, model, example, *_ = built
    assert all(not m.training for m in model.modules())
    assert tuple(example.shape) == ZOO[name].input_shape
    assert example.dtype == torch.float32


def test_output_shape(built: Built) -> None:
    name, _, _, out, _ = built
    assert tuple(out.shape) == EXPECTED_OUTPUT[name]
    assert torch.isfinite(out).all()


def test_fx_trace_matches_eager(built: Built) -> None:
    _, _, example, out, traced = built
    with torch.no_grad():
        got = traced(example)
    # Some reference inits give tiny logits; scale the tolerance to the output's magnitude.
    scale = out.abs().max().item()
    torch.testing.assert_close(got, out, rtol=1.3e-6, atol=1e-5 * scale)


def test_structure(built: Built) -> None:
    """Each model keeps the construct it is in the zoo for, visibly in the traced graph."""
    name, model, _, _, traced = built
    convs = _modules(model, nn.Conv2d)
    functions = _targets(traced, "call_function")
    methods = _targets(traced, "call_method")
    if name == "resnext50_32x4d":
        grouped = [m for m in convs if m.groups > 1]
        assert len(grouped) == 16
        assert {(m.groups, m.in_channels) for m in grouped} == {
            (32, 128),
            (32, 256),
            (32, 512),
            (32, 1024),
        }
    elif name == "mobilenet_v3_large":
        assert len(_modules(model, nn.Hardsigmoid)) == 8
        assert _modules(model, nn.Hardswish)
    elif name == "efficientnet_b0":
        assert len(_modules(model, nn.Sigmoid)) == 16
        assert _modules(model, nn.SiLU)
    elif name == "densenet121":
        assert functions.count(torch.cat) == 58 + 4
    elif name == "googlenet":
        assert functions.count(torch.cat) == 9
    elif name == "shufflenet_v2_x1_0":
        assert methods.count("chunk") == 13
        assert methods.count("view") == 2 * 16
        assert methods.count("contiguous") == 16
    elif name == "convnext_tiny":
        assert len([n for n, _ in model.named_parameters() if n.endswith(".gamma")]) == 18
        assert torch.nn.functional.layer_norm not in functions
        assert len(_modules(model, nn.LayerNorm)) == 18 + 1 + 3 + 1
    elif name == "regnety_400mf":
        grouped = [m for m in convs if m.groups > 1]
        assert len(grouped) == 16
        assert all(m.in_channels // m.groups == 8 for m in grouped)
    elif name == "vit_tiny":
        assert not _modules(model, nn.MultiheadAttention)
        reshapes = [
            n for n in traced.graph.nodes if n.op == "call_method" and n.target == "reshape"
        ]
        assert [n.args[3:] for n in reshapes[::2]] == [(3, 3, 64)] * 12
        assert [n.args[3] for n in reshapes[1::2]] == [192] * 12
    elif name == "unet_small":
        assert len(_modules(model, nn.ConvTranspose2d)) == 2
        assert functions.count(torch.nn.functional.interpolate) == 1
        assert functions.count(torch.cat) == 3


def test_num_classes_kwarg() -> None:
    model, example = create("shufflenet_v2_x1_0", num_classes=7, input_shape=(2, 3, 64, 64))
    with torch.no_grad():
        assert model(example).shape == (2, 7)
    model, example = create("unet_small", num_classes=5, input_shape=(1, 3, 32, 32))
    with torch.no_grad():
        assert model(example).shape == (1, 5, 32, 32)


def test_create_is_deterministic() -> None:
    a, xa = create("regnety_400mf", seed=3)
    b, xb = create("regnety_400mf", seed=3)
    assert torch.equal(xa, xb)
    for (key, value), (_, other) in zip(
        a.state_dict().items(), b.state_dict().items(), strict=True
    ):
        assert torch.equal(value, other), key
