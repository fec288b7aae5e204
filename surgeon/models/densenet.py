"""DenseNet-121 (Huang et al., 2017), torchvision's layout (memory-efficient mode off)."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from surgeon.models.blocks import init_weights

__all__ = ["DenseBlock", "DenseLayer", "DenseNet", "Transition", "densenet121"]


class DenseLayer(nn.Module):
    """BN-ReLU-conv1x1 bottleneck to ``bn_size * growth_rate``, then BN-ReLU-conv3x3 to growth."""

    def __init__(self, in_channels: int, growth_rate: int, bn_size: int) -> None:
        super().__init__()
        inner = bn_size * growth_rate
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_channels, inner, kernel_size=1, bias=False)
        self.norm2 = nn.BatchNorm2d(inner)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(inner, growth_rate, kernel_size=3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map the concatenated previous features to ``growth_rate`` new channels."""
        out = self.conv1(self.relu1(self.norm1(x)))
        return self.conv2(self.relu2(self.norm2(out)))


class DenseBlock(nn.Module):
    """``num_layers`` dense layers, each fed the concatenation of the input and all earlier outputs."""

    def __init__(self, num_layers: int, in_channels: int, growth_rate: int, bn_size: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DenseLayer(in_channels + i * growth_rate, growth_rate, bn_size)
            for i in range(num_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the input concatenated with every layer's new features."""
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, dim=1)))
        return torch.cat(features, dim=1)


class Transition(nn.Sequential):
    """BN → ReLU → 1x1 conv (compression) → 2x2 average pool between dense blocks."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)


class DenseNet(nn.Module):
    """DenseNet-BC: 7x7 stem, dense blocks joined by halving transitions, BN-ReLU, linear head."""

    def __init__(
        self,
        growth_rate: int = 32,
        block_config: tuple[int, ...] = (6, 12, 24, 16),
        num_init_features: int = 64,
        bn_size: int = 4,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        layers: list[tuple[str, nn.Module]] = [
            (
                "conv0",
                nn.Conv2d(3, num_init_features, kernel_size=7, stride=2, padding=3, bias=False),
            ),
            ("norm0", nn.BatchNorm2d(num_init_features)),
            ("relu0", nn.ReLU(inplace=True)),
            ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
        ]
        channels = num_init_features
        for i, num_layers in enumerate(block_config):
            layers.append(
                (f"denseblock{i + 1}", DenseBlock(num_layers, channels, growth_rate, bn_size))
            )
            channels += num_layers * growth_rate
            if i != len(block_config) - 1:
                layers.append((f"transition{i + 1}", Transition(channels, channels // 2)))
                channels //= 2
        layers.append(("norm5", nn.BatchNorm2d(channels)))
        self.features = nn.Sequential(OrderedDict(layers))
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(channels, num_classes)
        init_weights(self, mode="fan_in")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a ``(N, 3, H, W)`` batch to ``(N, num_classes)`` logits."""
        x = self.relu(self.features(x))
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def densenet121(num_classes: int = 1000) -> DenseNet:
    """Build DenseNet-121 (7,978,856 parameters at 1000 classes)."""
    return DenseNet(32, (6, 12, 24, 16), 64, bn_size=4, num_classes=num_classes)
