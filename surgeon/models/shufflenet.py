"""ShuffleNet V2 1.0x (Ma et al., 2018), torchvision's layout."""

from __future__ import annotations

import torch
from torch import nn

from surgeon.models.blocks import init_weights

__all__ = ["ShuffleNetV2", "ShuffleUnit", "channel_shuffle", "shufflenet_v2_x1_0"]


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of ``groups`` equal groups: view, swap the two channel axes, flatten."""
    b, c, h, w = x.size()
    x = x.view(b, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(b, -1, h, w)


def _depthwise(channels: int, stride: int) -> nn.Conv2d:
    """3x3 depthwise conv without bias."""
    return nn.Conv2d(
        channels, channels, kernel_size=3, stride=stride, padding=1, groups=channels, bias=False
    )


class ShuffleUnit(nn.Module):
    """A ShuffleNet V2 unit.

    Stride 1: split the channels in two, transform one half, concatenate, shuffle.
    Stride 2: transform the whole input along two branches, concatenate (doubling), shuffle.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        branch_channels = out_channels // 2
        if stride == 1 and in_channels != 2 * branch_channels:
            raise ValueError("a stride-1 unit needs in_channels == out_channels (even)")
        self.stride = stride
        if stride > 1:
            self.branch1 = nn.Sequential(
                _depthwise(in_channels, stride),
                nn.BatchNorm2d(in_channels),
                nn.Conv2d(in_channels, branch_channels, kernel_size=1, bias=False),
                nn.BatchNorm2d(branch_channels),
                nn.ReLU(inplace=True),
            )
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            nn.Conv2d(
                in_channels if stride > 1 else branch_channels,
                branch_channels,
                kernel_size=1,
                bias=False,
            ),
            nn.BatchNorm2d(branch_channels),
            nn.ReLU(inplace=True),
            _depthwise(branch_channels, stride),
            nn.BatchNorm2d(branch_channels),
            nn.Conv2d(branch_channels, branch_channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(branch_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the unit."""
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat([x1, self.branch2(x2)], dim=1)
        else:
            out = torch.cat([self.branch1(x), self.branch2(x)], dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    """ShuffleNet V2: conv + maxpool stem, three stages of shuffle units, 1x1 conv, linear head."""

    def __init__(
        self,
        stages_repeats: list[int],
        stages_out_channels: list[int],
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        if len(stages_repeats) != 3 or len(stages_out_channels) != 5:
            raise ValueError("expected 3 stage repeats and 5 output widths")
        in_channels = stages_out_channels[0]
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, in_channels, kernel_size=3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
        )
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        stages: list[nn.Sequential] = []
        for repeats, out_channels in zip(stages_repeats, stages_out_channels[1:4], strict=True):
            units: list[nn.Module] = [ShuffleUnit(in_channels, out_channels, 2)]
            units.extend(ShuffleUnit(out_channels, out_channels, 1) for _ in range(repeats - 1))
            stages.append(nn.Sequential(*units))
            in_channels = out_channels
        self.stage2, self.stage3, self.stage4 = stages
        last = stages_out_channels[-1]
        self.conv5 = nn.Sequential(
            nn.Conv2d(in_channels, last, kernel_size=1, bias=False),
            nn.BatchNorm2d(last),
            nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(last, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a ``(N, 3, H, W)`` batch to ``(N, num_classes)`` logits."""
        x = self.maxpool(self.conv1(x))
        x = self.stage2(x)
        x = self.stage3(x)
        x = self.stage4(x)
        x = self.conv5(x)
        x = x.mean([2, 3])
        return self.fc(x)


def shufflenet_v2_x1_0(num_classes: int = 1000) -> ShuffleNetV2:
    """Build ShuffleNet V2 1.0x (2,278,604 parameters at 1000 classes)."""
    return ShuffleNetV2([4, 8, 4], [24, 116, 232, 464, 1024], num_classes=num_classes)
