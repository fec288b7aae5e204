"""The surgeon model zoo: reference networks written in plain PyTorch, all ``torch.fx``-traceable."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from surgeon.errors import SurgeonInputError
from surgeon.models.convnext import ConvNeXt, convnext_tiny
from surgeon.models.densenet import DenseNet, densenet121
from surgeon.models.digits import DigitsNet, digits_cnn
from surgeon.models.efficientnet import EfficientNet, efficientnet_b0
from surgeon.models.googlenet import GoogLeNet, googlenet
from surgeon.models.lenet import LeNet5, lenet5
from surgeon.models.mobilenet import MobileNetV2, mobilenet_v2
from surgeon.models.mobilenetv3 import MobileNetV3, mobilenet_v3_large
from surgeon.models.regnet import RegNet, regnety_400mf
from surgeon.models.resnet import ResNet, resnet18, resnet50, resnext50_32x4d
from surgeon.models.shufflenet import ShuffleNetV2, shufflenet_v2_x1_0
from surgeon.models.unet import UNet, unet_small
from surgeon.models.vgg import VGG, vgg16_bn
from surgeon.models.vit import VisionTransformer, vit_tiny

__all__ = [
    "DEFAULT_MODEL",
    "VGG",
    "ZOO",
    "ConvNeXt",
    "DenseNet",
    "DigitsNet",
    "EfficientNet",
    "GoogLeNet",
    "LeNet5",
    "MobileNetV2",
    "MobileNetV3",
    "RegNet",
    "ResNet",
    "ShuffleNetV2",
    "UNet",
    "VisionTransformer",
    "ZooEntry",
    "convnext_tiny",
    "create",
    "densenet121",
    "digits_cnn",
    "efficientnet_b0",
    "googlenet",
    "lenet5",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "regnety_400mf",
    "resnet18",
    "resnet50",
    "resnext50_32x4d",
    "shufflenet_v2_x1_0",
    "unet_small",
    "vgg16_bn",
    "vit_tiny",
]


@dataclass(frozen=True)
class ZooEntry:
    """One zoo model: how to build it, its default example input shape, and a one-line summary."""

    factory: Callable[..., nn.Module]
    input_shape: tuple[int, ...]
    description: str


_IMAGENET = (1, 3, 224, 224)


def _entries(*rows: tuple[Callable[..., nn.Module], tuple[int, ...], str]) -> dict[str, ZooEntry]:
    """``(factory, input shape, description)`` rows as ZOO entries named after the factory."""
    return {factory.__name__: ZooEntry(factory, shape, text) for factory, shape, text in rows}


# fmt: off
ZOO: dict[str, ZooEntry] = {
    **_entries(
        (lenet5, (1, 1, 32, 32), "LeNet-5, 1x32x32 input, 10 classes (61.7K params)"),
        (vgg16_bn, _IMAGENET, "VGG-16 with batch norm, ImageNet layout (138.4M params)"),
        (resnet18, _IMAGENET, "ResNet-18, basic blocks (11.7M params)"),
        (resnet50, _IMAGENET, "ResNet-50, bottleneck blocks, v1.5 strides (25.6M params)"),
        (mobilenet_v2, _IMAGENET, "MobileNetV2, depthwise inverted residuals (3.5M params)"),
        (resnext50_32x4d, _IMAGENET, "ResNeXt-50 32x4d, grouped 3x3 bottlenecks (25.0M params)"),
        (mobilenet_v3_large, _IMAGENET,
         "MobileNetV3-Large, Hardswish, Hardsigmoid SE gates (5.5M params)"),
        (efficientnet_b0, _IMAGENET,
         "EfficientNet-B0, MBConv with SiLU and SE, no stochastic depth (5.3M params)"),
        (densenet121, _IMAGENET, "DenseNet-121, concatenating dense blocks (8.0M params)"),
        (googlenet, _IMAGENET,
         "GoogLeNet (Inception v1), multi-branch concat, no aux logits (6.6M params)"),
        (shufflenet_v2_x1_0, _IMAGENET,
         "ShuffleNet V2 1.0x, channel split and channel shuffle (2.3M params)"),
        (convnext_tiny, _IMAGENET,
         "ConvNeXt-T, channels-last LayerNorm MLP blocks with layer scale (28.6M params)"),
        (regnety_400mf, _IMAGENET,
         "RegNetY-400MF, grouped 3x3 (group width 8) with SE (4.3M params)"),
        (vit_tiny, _IMAGENET, "ViT-Ti/16, explicit fused-qkv multi-head self-attention (5.7M params)"),
        (unet_small, (1, 3, 64, 64),
         "Small U-Net, width 16, transposed-conv and bilinear ups, 2 classes (477K params)"),
    ),
    "digits_cnn": ZooEntry(
        digits_cnn,
        (1, 1, 16, 16),
        "Plain 4-conv BN CNN for the 16x16 scikit-learn digits, 10 classes (242K params)",
    ),
}
# fmt: on

DEFAULT_MODEL = "resnet18"


def create(
    name: str,
    *,
    seed: int = 0,
    input_shape: tuple[int, ...] | None = None,
    **kwargs: object,
) -> tuple[nn.Module, torch.Tensor]:
    """Build zoo model ``name`` with ``torch.manual_seed(seed)`` and return it with an example input.

    Args:
        name: a key of :data:`ZOO`.
        seed: seeds the weight init (via ``torch.manual_seed``) and the example input.
        input_shape: shape of the example input, batch included; default: the entry's.
        **kwargs: passed to the factory (e.g. ``num_classes``).

    Returns:
        The model in ``eval()`` mode and a random ``float32`` example input of ``input_shape``.

    Raises:
        SurgeonInputError: ``name`` is not in the zoo, or ``input_shape`` is not positive ints.
    """
    entry = ZOO.get(name)
    if entry is None:
        valid = ", ".join(sorted(ZOO))
        raise SurgeonInputError(f"unknown model {name!r}; valid names are: {valid}")
    shape = entry.input_shape if input_shape is None else tuple(input_shape)
    if not shape or not all(isinstance(d, int) and d > 0 for d in shape):
        raise SurgeonInputError(
            f"input_shape must be a non-empty tuple of positive ints, got {input_shape!r}"
        )
    torch.manual_seed(seed)
    model = entry.factory(**kwargs)
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    example = torch.randn(shape, generator=generator)
    return model, example
