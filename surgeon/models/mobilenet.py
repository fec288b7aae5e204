"""MobileNetV2 (Sandler et al., 2018)."""

from __future__ import annotations

import torch
from torch import nn

from surgeon.models.blocks import ConvNormActivation, OptionalResidual, init_weights, make_divisible

__all__ = ["InvertedResidual", "MobileNetV2", "mobilenet_v2"]


# (expansion t, output channels c, repeats n, first stride s) per stage, as in the paper.
_SETTINGS: list[tuple[int, int, int, int]] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


def _conv_bn_relu6(
    in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, groups: int = 1
) -> ConvNormActivation:
    """Conv (no bias) → BatchNorm → ReLU6, with "same" padding for odd kernels."""
    return ConvNormActivation(
        in_channels, out_channels, kernel_size, stride, groups, activation=nn.ReLU6
    )


class InvertedResidual(OptionalResidual):
    """1x1 expand → 3x3 depthwise → 1x1 linear projection, residual when shapes match."""

    branch_name = "conv"

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__(in_channels, out_channels, stride)
        hidden = int(round(in_channels * expand_ratio))
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_bn_relu6(in_channels, hidden, kernel_size=1))
        layers.append(_conv_bn_relu6(hidden, hidden, kernel_size=3, stride=stride, groups=hidden))
        # the linear projection: its conv and norm sit in this Sequential directly
        layers.append(nn.Conv2d(hidden, out_channels, kernel_size=1, bias=False))
        layers.append(nn.BatchNorm2d(out_channels))
        self.conv = nn.Sequential(*layers)


class MobileNetV2(nn.Module):
    """MobileNetV2: a strided stem, 17 inverted residual blocks, a 1x1 conv to 1280, a linear head."""

    def __init__(
        self,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        round_nearest: int = 8,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        in_channels = make_divisible(32 * width_mult, round_nearest)
        self.last_channel = make_divisible(1280 * max(1.0, width_mult), round_nearest)
        features: list[nn.Module] = [_conv_bn_relu6(3, in_channels, stride=2)]
        for t, c, n, s in _SETTINGS:
            out_channels = make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                stride = s if i == 0 else 1
                features.append(InvertedResidual(in_channels, out_channels, stride, expand_ratio=t))
                in_channels = out_channels
        features.append(_conv_bn_relu6(in_channels, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(self.last_channel, num_classes),
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a ``(N, 3, H, W)`` batch to ``(N, num_classes)`` logits."""
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, 1)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def mobilenet_v2(
    num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2
) -> MobileNetV2:
    """Build MobileNetV2 (3,504,872 parameters at width 1.0 and 1000 classes)."""
    return MobileNetV2(num_classes=num_classes, width_mult=width_mult, dropout=dropout)
