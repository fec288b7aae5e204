"""Architecture coverage (issue 4): every zoo architecture slims correctly, or is refused
group by group with a reason."""

from __future__ import annotations

import pytest

import surgeon
from surgeon.cost import count_macs
from surgeon.models import create
from tests.helpers import assert_exact_at_zero, assert_slims_at_half, groups_of, randomize_norms

MODELS = [
    "resnext50_32x4d",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "densenet121",
    "googlenet",
    "shufflenet_v2_x1_0",
    "convnext_tiny",
    "regnety_400mf",
    "vit_tiny",
    "unet_small",
]


@pytest.fixture(scope="module", params=MODELS)
def zoo(request):
    model, x = create(request.param)
    randomize_norms(model)
    return request.param, model, x


def test_half_slims_trains_and_exports(zoo, tmp_path):
    name, model, x = zoo
    slim = assert_slims_at_half(model, x, tmp_path)
    macs = count_macs(model, x) / count_macs(slim, x)
    assert macs >= 2.0, f"{name}: MACs dropped only {macs:.2f}x"
    assert (tmp_path / "slim.onnx").stat().st_size > 0


def test_exactness(zoo):
    name, model, x = zoo
    assert_exact_at_zero(model, x)


def test_grouped_conv_groups_stay_equal():
    model, x = create("resnext50_32x4d")
    slim = surgeon.slim(model, 0.5, x)
    conv = slim.get_submodule("layer1.0.conv2")
    assert conv.groups == 32 and conv.in_channels == conv.out_channels == 64


def test_vit_heads_and_widths():
    model, x = create("vit_tiny")
    graph = surgeon.analyze(model, x)
    names = [n for n, _ in model.named_modules() if n.endswith("qkv")]
    assert names
    for qkv in names:
        (g,) = groups_of(graph, qkv)
        assert g.prunable and g.n_classes == 3, (qkv, g.reasons)  # whole heads
    slim = surgeon.slim(model, 0.5, x)
    qkv = slim.get_submodule(names[0])
    assert qkv.out_features == 3 * 64 * 2  # 2 of 3 heads kept (50% +- 1)
    assert slim.get_submodule(names[0].replace("qkv", "proj")).in_features == 128
