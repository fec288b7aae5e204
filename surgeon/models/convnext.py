"""ConvNeXt-T (Liu et al., 2022), torchvision's layout.

Blocks follow the original "channels-last" formulation: depthwise 7x7 conv, permute to
``(N, H, W, C)``, LayerNorm, Linear-GELU-Linear, layer scale ``gamma`` of shape ``[C]``,
permute back, residual add. Stochastic depth is omitted (the identity at inference).
"""

from __future__ import annotations

import torch
from torch import nn

from surgeon.models.blocks import init_weights

__all__ = ["ConvNeXt", "ConvNeXtBlock", "LayerNorm2d", "convnext_tiny"]


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of an ``(N, C, H, W)`` map: permute → ``nn.LayerNorm`` → permute."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise each spatial position across channels."""
        x = x.permute(0, 2, 3, 1)
        x = self.norm(x)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7 → LayerNorm → 4x MLP with GELU → layer scale, with a residual connection."""

    def __init__(self, dim: int, layer_scale: float = 1e-6) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        identity = x
        x = self.dwconv(x)
        x = x.permute(0, 2, 3, 1)
        x = self.norm(x)
        x = self.pwconv1(x)
        x = self.act(x)
        x = self.pwconv2(x)
        x = self.gamma * x
        x = x.permute(0, 3, 1, 2)
        return identity + x


class ConvNeXt(nn.Module):
    """ConvNeXt: 4x4 patchify stem, four stages with LN + 2x2-conv downsampling, LN + linear head."""

    def __init__(
        self,
        depths: tuple[int, ...] = (3, 3, 9, 3),
        dims: tuple[int, ...] = (96, 192, 384, 768),
        num_classes: int = 1000,
        layer_scale: float = 1e-6,
    ) -> None:
        super().__init__()
        if len(depths) != len(dims):
            raise ValueError("depths and dims must have the same length")
        layers: list[nn.Module] = [
            nn.Sequential(
                nn.Conv2d(3, dims[0], kernel_size=4, stride=4),
                LayerNorm2d(dims[0]),
            )
        ]
        for i, (depth, dim) in enumerate(zip(depths, dims, strict=True)):
            layers.append(nn.Sequential(*(ConvNeXtBlock(dim, layer_scale) for _ in range(depth))))
            if i + 1 < len(dims):
                layers.append(
                    nn.Sequential(
                        LayerNorm2d(dim),
                        nn.Conv2d(dim, dims[i + 1], kernel_size=2, stride=2),
                    )
                )
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.norm = LayerNorm2d(dims[-1])
        self.head = nn.Linear(dims[-1], num_classes)
        init_weights(self, scheme="trunc_normal")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a ``(N, 3, H, W)`` batch to ``(N, num_classes)`` logits."""
        x = self.features(x)
        x = self.avgpool(x)
        x = self.norm(x)
        x = torch.flatten(x, 1)
        return self.head(x)


def convnext_tiny(num_classes: int = 1000) -> ConvNeXt:
    """Build ConvNeXt-T (28,589,128 parameters at 1000 classes)."""
    return ConvNeXt((3, 3, 9, 3), (96, 192, 384, 768), num_classes=num_classes)
