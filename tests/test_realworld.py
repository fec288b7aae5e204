"""Real torchvision and timm architectures (random weights, no download), one per failure
class the real-world issue names: exactness at ratio 0 and onnxruntime parity at 0.5."""

from __future__ import annotations

import logging

import pytest
import torch

from surgeon.cost import count_macs
from tests.helpers import assert_exact_at_zero, assert_slims_at_half

# (library, name, the least MAC drop at 0.5, what it exercises, input side)
MODELS = [
    ("torchvision", "resnet18", 3.5, "the classics", 64),
    ("torchvision", "efficientnet_b0", 3.0, "torchvision.ops.stochastic_depth", 64),
    ("torchvision", "convnext_tiny", 3.5, "F.layer_norm (LayerNorm2d), layer scale", 64),
    ("torchvision", "densenet121", 3.6, "concatenated inputs pruned alike (local scope)", 64),
    (
        "torchvision",
        "swin_t",
        3.0,
        "a wrapped function traced through, a mask built in place, a gathered bias table",
        224,
    ),
    ("timm", "repvgg_a0", 3.5, "F.batch_norm in timm's norm-act layers", 64),
    ("timm", "ghostnet_100", 2.5, "index slicing x[:, :k]", 64),
    ("timm", "tf_efficientnet_lite0", 3.0, "same-padding arithmetic, specialised capture", 64),
    ("timm", "cait_xxs24_224", 3.0, "a reshape size computed from a pruned dim", 224),
]


def _build(lib, name):
    torch.manual_seed(0)
    if lib == "torchvision":
        tv = pytest.importorskip("torchvision")
        return tv.models.get_model(name, weights=None).eval()
    timm = pytest.importorskip("timm")
    return timm.create_model(name, pretrained=False).eval()


@pytest.mark.parametrize("lib, name, least, what, side", MODELS, ids=[m[1] for m in MODELS])
def test_real_model(lib, name, least, what, side, tmp_path, caplog):
    model, x = _build(lib, name), torch.randn(1, 3, side, side)
    assert_exact_at_zero(model, x)
    with caplog.at_level(logging.WARNING):
        slim = assert_slims_at_half(model, x, tmp_path)
    drop = count_macs(model, x) / count_macs(slim, x)
    assert drop >= least, f"{name} ({what}): MACs dropped {drop:.2f}x"
    assert "little was pruned" not in caplog.text
    # the user's own class comes back, verified against the slim graph (Swin computes its
    # head width from the embedding width, C // num_heads: the two keep widths in step)
    assert type(slim) is type(model), slim.meta["surgeon.plan"]["form_reason"]
