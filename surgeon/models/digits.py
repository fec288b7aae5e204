"""DigitsNet: a small CNN for scikit-learn's digits at 16x16 (the data and the training loop
are in :mod:`surgeon.digits`)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from surgeon.errors import SurgeonInputError
from surgeon.models.blocks import init_weights

__all__ = ["DigitsNet", "digits_cnn", "DEFAULT_WIDTHS"]

DEFAULT_WIDTHS = (32, 64, 128, 128)


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            bn=nn.BatchNorm2d(out_channels),
            relu=nn.ReLU(inplace=True),
        )
    )


class DigitsNet(nn.Module):
    """A plain, deliberately over-wide CNN for ``(N, 1, 16, 16)`` digits.

    Four Conv3x3-BN-ReLU blocks of ``widths`` channels; a 2x2 max pool after the first and the
    third (16x16 -> 8x8 -> 4x4); global average pooling and one linear layer. At the default
    widths it is heavily over-parameterised, so that even deep slimming can be fine-tuned back
    (how far: the accuracy tables of docs/benchmarks.md).
    """

    def __init__(self, num_classes: int = 10, widths: Sequence[int] = DEFAULT_WIDTHS) -> None:
        super().__init__()
        widths = tuple(widths)
        if len(widths) != 4 or not all(
            isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths
        ):
            raise SurgeonInputError(
                f"widths={widths!r}: use four positive ints, e.g. {DEFAULT_WIDTHS}"
            )
        w1, w2, w3, w4 = widths
        self.features = nn.Sequential(
            OrderedDict(
                block1=_conv_bn_relu(1, w1),
                pool1=nn.MaxPool2d(2),
                block2=_conv_bn_relu(w1, w2),
                block3=_conv_bn_relu(w2, w3),
                pool2=nn.MaxPool2d(2),
                block4=_conv_bn_relu(w3, w4),
            )
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w4, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a ``(N, 1, H, W)`` batch to ``(N, num_classes)`` logits."""
        x = self.avgpool(self.features(x))
        return self.fc(torch.flatten(x, 1))


def digits_cnn(num_classes: int = 10, widths: Sequence[int] = DEFAULT_WIDTHS) -> DigitsNet:
    """Build a DigitsNet for ``(N, 1, 16, 16)`` inputs (241,898 parameters at the defaults)."""
    return DigitsNet(num_classes=num_classes, widths=widths)
