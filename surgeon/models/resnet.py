"""ResNet-18 and ResNet-50 (He et al., 2016) and ResNeXt-50 32x4d (Xie et al., 2017).

All use the "v1.5" layout: the stride sits on the 3x3 conv.
"""

from __future__ import annotations

import torch
from torch import nn

from surgeon.models.blocks import init_weights

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet50", "resnext50_32x4d"]


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias (grouped when ``groups > 1``)."""
    return nn.Conv2d(
        in_channels,
        out_channels,
        kernel_size=3,
        stride=stride,
        padding=1,
        groups=groups,
        bias=False,
    )


def _conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution without bias."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)


class _ResidualBlock(nn.Module):
    """What BasicBlock and Bottleneck share: their arguments, the shortcut and the last step.

    ``downsample`` (the projection of the identity path, or None) is registered after the
    block's own layers, which :meth:`_build` creates; :meth:`_join` returns
    ``relu(out + shortcut(x))``.
    """

    expansion = 1
    relu: nn.Module

    def __init__(
        self,
        in_channels: int,
        channels: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
    ) -> None:
        super().__init__()
        self._build(in_channels, channels, stride, groups, base_width)
        self.downsample = downsample

    def _build(
        self, in_channels: int, channels: int, stride: int, groups: int, base_width: int
    ) -> None:
        raise NotImplementedError

    def _join(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        identity = x
        if self.downsample is not None:
            identity = self.downsample(x)
        out = out + identity
        return self.relu(out)


class BasicBlock(_ResidualBlock):
    """Two 3x3 convs with a residual connection (ResNet-18/34)."""

    expansion = 1

    def _build(
        self, in_channels: int, channels: int, stride: int, groups: int, base_width: int
    ) -> None:
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock only supports groups=1 and base_width=64")
        self.conv1 = _conv3x3(in_channels, channels, stride)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self._join(x, out)


class Bottleneck(_ResidualBlock):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, with a residual connection (ResNet-50+).

    With ``groups > 1`` the 3x3 conv is grouped and the inner width is
    ``int(channels * base_width / 64) * groups`` (ResNeXt); the defaults give plain ResNet.
    """

    expansion = 4

    def _build(
        self, in_channels: int, channels: int, stride: int, groups: int, base_width: int
    ) -> None:
        width = int(channels * (base_width / 64.0)) * groups
        out_channels = channels * self.expansion
        self.conv1 = _conv1x1(in_channels, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride, groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv1x1(width, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self._join(x, out)


class ResNet(nn.Module):
    """A ResNet: 7x7 stem, four stages of residual blocks, global average pool, linear head."""

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: list[int],
        num_classes: int = 1000,
        groups: int = 1,
        width_per_group: int = 64,
    ) -> None:
        super().__init__()
        self._in_channels = 64
        self.groups = groups
        self.base_width = width_per_group
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0], stride=1)
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        init_weights(self)

    def _make_layer(
        self,
        block: type[BasicBlock | Bottleneck],
        channels: int,
        num_blocks: int,
        stride: int,
    ) -> nn.Sequential:
        """Build one stage; its first block downsamples (and/or widens) the identity path."""
        out_channels = channels * block.expansion
        downsample: nn.Module | None = None
        if stride != 1 or self._in_channels != out_channels:
            downsample = nn.Sequential(
                _conv1x1(self._in_channels, out_channels, stride),
                nn.BatchNorm2d(out_channels),
            )
        blocks: list[nn.Module] = [
            block(self._in_channels, channels, stride, downsample, self.groups, self.base_width)
        ]
        self._in_channels = out_channels
        for _ in range(1, num_blocks):
            blocks.append(
                block(self._in_channels, channels, groups=self.groups, base_width=self.base_width)
            )
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a ``(N, 3, H, W)`` batch to ``(N, num_classes)`` logits."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


def resnet18(num_classes: int = 1000) -> ResNet:
    """Build ResNet-18 (11,689,512 parameters at 1000 classes)."""
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)


def resnet50(num_classes: int = 1000) -> ResNet:
    """Build ResNet-50 (25,557,032 parameters at 1000 classes)."""
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes=num_classes)


def resnext50_32x4d(num_classes: int = 1000) -> ResNet:
    """Build ResNeXt-50 32x4d (25,028,904 parameters at 1000 classes)."""
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes=num_classes, groups=32, width_per_group=4)
