"""EfficientNet-B0 (Tan & Le, 2019), torchvision's layout.

Stochastic depth on the residual branches is omitted: it is the identity at inference,
which is all the zoo is used for.
"""

from __future__ import annotations

from torch import nn

from surgeon.models.blocks import (
    ConvNormActivation,
    OptionalResidual,
    PooledClassifier,
    SqueezeExcitation,
    make_divisible,
)

__all__ = ["EfficientNet", "MBConv", "efficientnet_b0"]


# (expand ratio, kernel, first stride, input channels, output channels, repeats) per stage (B0).
_B0: list[tuple[int, int, int, int, int, int]] = [
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
]


class MBConv(OptionalResidual):
    """Mobile inverted bottleneck: 1x1 expand → kxk depthwise → SE → 1x1 linear projection.

    The SE bottleneck is a quarter of the block's *input* width, with SiLU inside and a
    sigmoid gate. The residual add (when shapes match) has no stochastic depth here.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        expand_ratio: int,
    ) -> None:
        super().__init__(in_channels, out_channels, stride)
        expanded = make_divisible(in_channels * expand_ratio, 8)
        layers: list[nn.Module] = []
        if expanded != in_channels:
            layers.append(
                ConvNormActivation(in_channels, expanded, kernel_size=1, activation=nn.SiLU)
            )
        layers.append(
            ConvNormActivation(
                expanded,
                expanded,
                kernel_size=kernel_size,
                stride=stride,
                groups=expanded,
                activation=nn.SiLU,
            )
        )
        squeeze = max(1, in_channels // 4)
        layers.append(SqueezeExcitation(expanded, squeeze, activation=nn.SiLU, gate=nn.Sigmoid))
        layers.append(ConvNormActivation(expanded, out_channels, kernel_size=1, activation=None))
        self.block = nn.Sequential(*layers)


class EfficientNet(PooledClassifier):
    """EfficientNet: SiLU stem, seven MBConv stages, 1x1 conv to 1280, dropout + linear head."""

    def __init__(
        self,
        settings: list[tuple[int, int, int, int, int, int]],
        last_channel: int = 1280,
        num_classes: int = 1000,
        dropout: float = 0.2,
    ) -> None:
        stem_channels = settings[0][3]
        layers: list[nn.Module] = [
            ConvNormActivation(3, stem_channels, kernel_size=3, stride=2, activation=nn.SiLU)
        ]
        for expand, kernel, stride, in_channels, out_channels, repeats in settings:
            stage: list[nn.Module] = []
            for i in range(repeats):
                stage.append(
                    MBConv(
                        in_channels if i == 0 else out_channels,
                        out_channels,
                        kernel,
                        stride if i == 0 else 1,
                        expand,
                    )
                )
            layers.append(nn.Sequential(*stage))
        final_in = settings[-1][4]
        layers.append(ConvNormActivation(final_in, last_channel, kernel_size=1, activation=nn.SiLU))
        features = nn.Sequential(*layers)
        classifier = nn.Sequential(
            nn.Dropout(p=dropout, inplace=True),
            nn.Linear(last_channel, num_classes),
        )
        super().__init__(features, classifier)


def efficientnet_b0(num_classes: int = 1000, dropout: float = 0.2) -> EfficientNet:
    """Build EfficientNet-B0 (5,288,548 parameters at 1000 classes)."""
    return EfficientNet(_B0, last_channel=1280, num_classes=num_classes, dropout=dropout)
