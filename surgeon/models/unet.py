"""A small U-Net (Ronneberger et al., 2015) for dense prediction on 64x64 inputs.

Base width 16 and three 2x down-samplings (16, 32, 64, bottleneck 128). The decoder mixes
the two usual up-sampling styles on purpose: a stride-2 ``nn.ConvTranspose2d`` at the
deepest and shallowest levels, bilinear ``F.interpolate`` followed by a 1x1 conv in the
middle. Skips are joined with ``torch.cat([skip, up], dim=1)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from surgeon.models.blocks import init_weights

__all__ = ["DoubleConv", "UNet", "unet_small"]


class DoubleConv(nn.Sequential):
    """(3x3 conv (no bias) → BatchNorm → ReLU) twice."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class BilinearUp(nn.Module):
    """Bilinear 2x up-sampling followed by a 1x1 conv that sets the channel count."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Double the spatial size, then project the channels."""
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.conv(x)


class UNet(nn.Module):
    """Encoder (double convs + max pools), bottleneck, decoder with skip concatenations, 1x1 head."""

    def __init__(self, in_channels: int = 3, num_classes: int = 2, base_width: int = 16) -> None:
        super().__init__()
        w1, w2, w3, w4 = base_width, 2 * base_width, 4 * base_width, 8 * base_width
        self.enc1 = DoubleConv(in_channels, w1)
        self.enc2 = DoubleConv(w1, w2)
        self.enc3 = DoubleConv(w2, w3)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.bottleneck = DoubleConv(w3, w4)
        self.up3 = nn.ConvTranspose2d(w4, w3, kernel_size=2, stride=2)
        self.dec3 = DoubleConv(2 * w3, w3)
        self.up2 = BilinearUp(w3, w2)
        self.dec2 = DoubleConv(2 * w2, w2)
        self.up1 = nn.ConvTranspose2d(w2, w1, kernel_size=2, stride=2)
        self.dec1 = DoubleConv(2 * w1, w1)
        self.head = nn.Conv2d(w1, num_classes, kernel_size=1)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a ``(N, C, H, W)`` batch (H, W divisible by 8) to ``(N, num_classes, H, W)`` logits."""
        s1 = self.enc1(x)
        s2 = self.enc2(self.pool(s1))
        s3 = self.enc3(self.pool(s2))
        x = self.bottleneck(self.pool(s3))
        x = self.dec3(torch.cat([s3, self.up3(x)], dim=1))
        x = self.dec2(torch.cat([s2, self.up2(x)], dim=1))
        x = self.dec1(torch.cat([s1, self.up1(x)], dim=1))
        return self.head(x)


def unet_small(num_classes: int = 2, in_channels: int = 3, base_width: int = 16) -> UNet:
    """Build the small U-Net (476,610 parameters at base width 16, 3 input channels, 2 classes)."""
    return UNet(in_channels=in_channels, num_classes=num_classes, base_width=base_width)
