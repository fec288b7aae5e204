"""VGG-16 with batch normalisation (Simonyan & Zisserman, 2015)."""

from __future__ import annotations

from torch import nn

from surgeon.models.blocks import PooledClassifier

__all__ = ["VGG", "vgg16_bn"]


# Configuration "D" of the paper: output channels of each 3x3 conv, "M" for a 2x2 max pool.
_CFG_D: list[int | str] = [
    64, 64, "M",
    128, 128, "M",
    256, 256, 256, "M",
    512, 512, 512, "M",
    512, 512, 512, "M",
]  # fmt: skip


def _make_features(cfg: list[int | str], batch_norm: bool) -> nn.Sequential:
    """Stack the convolutional body described by ``cfg``."""
    layers: list[nn.Module] = []
    in_channels = 3
    for item in cfg:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        out_channels = int(item)
        layers.append(nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.ReLU(inplace=True))
        in_channels = out_channels
    return nn.Sequential(*layers)


class VGG(PooledClassifier):
    """A VGG network: a conv body, a 7x7 adaptive average pool and a 3-layer MLP head."""

    def __init__(
        self, features: nn.Sequential, num_classes: int = 1000, dropout: float = 0.5
    ) -> None:
        classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )
        super().__init__(features, classifier, pool_size=(7, 7))


def vgg16_bn(num_classes: int = 1000, dropout: float = 0.5) -> VGG:
    """Build VGG-16 with batch norm (138,365,992 parameters at 1000 classes)."""
    return VGG(_make_features(_CFG_D, batch_norm=True), num_classes=num_classes, dropout=dropout)
