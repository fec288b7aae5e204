"""MobileNetV3-Large (Howard et al., 2019), torchvision's layout."""

from __future__ import annotations

from torch import nn

from surgeon.models.blocks import (
    ConvNormActivation,
    OptionalResidual,
    PooledClassifier,
    SqueezeExcitation,
    make_divisible,
)

__all__ = ["InvertedResidualV3", "MobileNetV3", "mobilenet_v3_large"]


# (kernel, expanded channels, output channels, squeeze-excite, activation, stride) per block;
# "RE" is ReLU and "HS" Hardswish. The 16-channel stem feeds the first block.
_LARGE: list[tuple[int, int, int, bool, str, int]] = [
    (3, 16, 16, False, "RE", 1),
    (3, 64, 24, False, "RE", 2),
    (3, 72, 24, False, "RE", 1),
    (5, 72, 40, True, "RE", 2),
    (5, 120, 40, True, "RE", 1),
    (5, 120, 40, True, "RE", 1),
    (3, 240, 80, False, "HS", 2),
    (3, 200, 80, False, "HS", 1),
    (3, 184, 80, False, "HS", 1),
    (3, 184, 80, False, "HS", 1),
    (3, 480, 112, True, "HS", 1),
    (3, 672, 112, True, "HS", 1),
    (5, 672, 160, True, "HS", 2),
    (5, 960, 160, True, "HS", 1),
    (5, 960, 160, True, "HS", 1),
]

_ACTIVATIONS: dict[str, type[nn.Module]] = {"RE": nn.ReLU, "HS": nn.Hardswish}
_BN: dict[str, float] = {"eps": 0.001, "momentum": 0.01}  # torchvision's batch norm settings


class InvertedResidualV3(OptionalResidual):
    """1x1 expand → kxk depthwise → optional SE (Hardsigmoid gate) → 1x1 linear projection."""

    def __init__(
        self,
        in_channels: int,
        kernel_size: int,
        expanded_channels: int,
        out_channels: int,
        use_se: bool,
        activation: str,
        stride: int,
    ) -> None:
        super().__init__(in_channels, out_channels, stride)
        act = _ACTIVATIONS[activation]
        layers: list[nn.Module] = []
        if expanded_channels != in_channels:
            layers.append(
                ConvNormActivation(
                    in_channels, expanded_channels, kernel_size=1, activation=act, **_BN
                )
            )
        layers.append(
            ConvNormActivation(
                expanded_channels,
                expanded_channels,
                kernel_size=kernel_size,
                stride=stride,
                groups=expanded_channels,
                activation=act,
                **_BN,
            )
        )
        if use_se:
            squeeze = make_divisible(expanded_channels // 4, 8)
            layers.append(
                SqueezeExcitation(
                    expanded_channels, squeeze, activation=nn.ReLU, gate=nn.Hardsigmoid
                )
            )
        layers.append(
            ConvNormActivation(
                expanded_channels, out_channels, kernel_size=1, activation=None, **_BN
            )
        )
        self.block = nn.Sequential(*layers)


class MobileNetV3(PooledClassifier):
    """MobileNetV3: Hardswish stem, inverted residuals with SE, 1x1 conv, two-layer head."""

    def __init__(
        self,
        settings: list[tuple[int, int, int, bool, str, int]],
        last_channel: int = 1280,
        num_classes: int = 1000,
        dropout: float = 0.2,
    ) -> None:
        in_channels = 16
        layers: list[nn.Module] = [
            ConvNormActivation(3, in_channels, stride=2, activation=nn.Hardswish, **_BN)
        ]
        for kernel, expanded, out_channels, use_se, activation, stride in settings:
            layers.append(
                InvertedResidualV3(
                    in_channels, kernel, expanded, out_channels, use_se, activation, stride
                )
            )
            in_channels = out_channels
        last_conv = 6 * in_channels
        layers.append(
            ConvNormActivation(
                in_channels, last_conv, kernel_size=1, activation=nn.Hardswish, **_BN
            )
        )
        features = nn.Sequential(*layers)
        classifier = nn.Sequential(
            nn.Linear(last_conv, last_channel),
            nn.Hardswish(inplace=True),
            nn.Dropout(p=dropout, inplace=True),
            nn.Linear(last_channel, num_classes),
        )
        super().__init__(features, classifier)


def mobilenet_v3_large(num_classes: int = 1000, dropout: float = 0.2) -> MobileNetV3:
    """Build MobileNetV3-Large (5,483,032 parameters at 1000 classes)."""
    return MobileNetV3(_LARGE, last_channel=1280, num_classes=num_classes, dropout=dropout)
