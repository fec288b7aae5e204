"""The surgeon model zoo: reference CNNs written in plain PyTorch, all ``torch.fx``-traceable."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from surgeon.errors import SurgeonInputError
from surgeon.models.lenet import LeNet5, lenet5
from surgeon.models.mobilenet import MobileNetV2, mobilenet_v2
from surgeon.models.resnet import ResNet, resnet18, resnet50
from surgeon.models.vgg import VGG, vgg16_bn

__all__ = [
    "DEFAULT_MODEL",
    "VGG",
    "ZOO",
    "LeNet5",
    "MobileNetV2",
    "ResNet",
    "ZooEntry",
    "create",
    "lenet5",
    "mobilenet_v2",
    "resnet18",
    "resnet50",
    "vgg16_bn",
]


@dataclass(frozen=True)
class ZooEntry:
    """One zoo model: how to build it, its default example input shape, and a one-line summary."""

    factory: Callable[..., nn.Module]
    input_shape: tuple[int, ...]
    description: str


ZOO: dict[str, ZooEntry] = {
    "lenet5": ZooEntry(lenet5, (1, 1, 32, 32), "LeNet-5, 1x32x32 input, 10 classes (61.7K params)"),
    "vgg16_bn": ZooEntry(
        vgg16_bn, (1, 3, 224, 224), "VGG-16 with batch norm, ImageNet layout (138.4M params)"
    ),
    "resnet18": ZooEntry(resnet18, (1, 3, 224, 224), "ResNet-18, basic blocks (11.7M params)"),
    "resnet50": ZooEntry(
        resnet50, (1, 3, 224, 224), "ResNet-50, bottleneck blocks, v1.5 strides (25.6M params)"
    ),
    "mobilenet_v2": ZooEntry(
        mobilenet_v2, (1, 3, 224, 224), "MobileNetV2, depthwise inverted residuals (3.5M params)"
    ),
}

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
