"""LeNet-5 (LeCun et al., 1998) for 1x32x32 inputs."""

from __future__ import annotations

import torch
from torch import nn

from surgeon.models.blocks import init_weights

__all__ = ["LeNet5", "lenet5"]


class LeNet5(nn.Module):
    """The classic LeNet-5 with ReLU activations and max pooling.

    The flatten is written on purpose as ``x.view(x.size(0), 16 * 5 * 5)``: the literal
    channel count baked into the view is something a pruning compiler has to rewrite.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, kernel_size=5)
        self.relu1 = nn.ReLU(inplace=True)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)
        self.relu2 = nn.ReLU(inplace=True)
        self.pool2 = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.relu3 = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(120, 84)
        self.relu4 = nn.ReLU(inplace=True)
        self.fc3 = nn.Linear(84, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a ``(N, 1, 32, 32)`` batch to ``(N, num_classes)`` logits."""
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = x.view(x.size(0), 16 * 5 * 5)
        x = self.relu3(self.fc1(x))
        x = self.relu4(self.fc2(x))
        return self.fc3(x)


def lenet5(num_classes: int = 10) -> LeNet5:
    """Build a LeNet-5 for ``(N, 1, 32, 32)`` inputs (61,706 parameters at 10 classes)."""
    return LeNet5(num_classes=num_classes)
