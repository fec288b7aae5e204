"""RegNetY-400MF (Radosavovic et al., 2020), torchvision's layout.

The stage table is what the paper's quantised linear width rule gives for the 400MF
setting (depth 16, w_0 48, w_a 27.89, w_m 2.09, group width 8, SE ratio 0.25):
widths 48, 104, 208, 440 with 1, 3, 6, 6 blocks.
"""

from __future__ import annotations

import torch
from torch import nn

from surgeon.models.blocks import ConvNormActivation, SqueezeExcitation, init_weights

__all__ = ["RegNet", "ResBottleneckBlock", "regnety_400mf"]


# (blocks, width) per stage of RegNetY-400MF; every stage starts with a stride-2 block.
_Y_400MF: list[tuple[int, int]] = [(1, 48), (3, 104), (6, 208), (6, 440)]


class ResBottleneckBlock(nn.Module):
    """1x1 → grouped 3x3 (strided) → SE → 1x1, plus a (projected) shortcut, then ReLU.

    Bottleneck multiplier 1: the inner width is the output width; the 3x3 has
    ``width_out // group_width`` groups and the SE squeezes to ``se_ratio * width_in``.
    """

    def __init__(
        self,
        width_in: int,
        width_out: int,
        stride: int,
        group_width: int,
        se_ratio: float,
    ) -> None:
        super().__init__()
        groups = width_out // group_width
        squeeze = int(round(se_ratio * width_in))
        self.proj: nn.Module | None = None
        if width_in != width_out or stride != 1:
            self.proj = ConvNormActivation(width_in, width_out, 1, stride=stride, activation=None)
        self.f = nn.Sequential(
            ConvNormActivation(width_in, width_out, 1),
            ConvNormActivation(width_out, width_out, 3, stride=stride, groups=groups),
            SqueezeExcitation(width_out, squeeze, activation=nn.ReLU, gate=nn.Sigmoid),
            ConvNormActivation(width_out, width_out, 1, activation=None),
        )
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        if self.proj is not None:
            x = self.proj(x) + self.f(x)
        else:
            x = x + self.f(x)
        return self.activation(x)


class RegNet(nn.Module):
    """RegNet: 3x3 stride-2 stem to 32, stages of residual bottleneck blocks, linear head."""

    def __init__(
        self,
        stages: list[tuple[int, int]],
        group_width: int = 8,
        se_ratio: float = 0.25,
        stem_width: int = 32,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        self.stem = ConvNormActivation(3, stem_width, 3, stride=2)
        width_in = stem_width
        blocks: list[nn.Module] = []
        for depth, width in stages:
            stage = [
                ResBottleneckBlock(
                    width_in if i == 0 else width, width, 2 if i == 0 else 1, group_width, se_ratio
                )
                for i in range(depth)
            ]
            blocks.append(nn.Sequential(*stage))
            width_in = width
        self.trunk_output = nn.Sequential(*blocks)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width_in, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a ``(N, 3, H, W)`` batch to ``(N, num_classes)`` logits."""
        x = self.stem(x)
        x = self.trunk_output(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


def regnety_400mf(num_classes: int = 1000) -> RegNet:
    """Build RegNetY-400MF (4,344,144 parameters at 1000 classes)."""
    return RegNet(_Y_400MF, group_width=8, se_ratio=0.25, num_classes=num_classes)
