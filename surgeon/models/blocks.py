"""Building blocks shared by several zoo models: squeeze-and-excitation and channel rounding."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SqueezeExcitation", "make_divisible", "init_weights"]


def init_weights(model: nn.Module, *, scheme: str = "kaiming", mode: str = "fan_out") -> None:
    """The zoo's deterministic reference init (given ``torch.manual_seed``).

    ``kaiming``: Kaiming-normal convs (``mode`` fan_out or fan_in, ReLU gain), zero conv
    biases, unit / zero BatchNorm, N(0, 0.01) linears with zero bias (the CNNs).
    ``trunc_normal``: truncated-normal (std 0.02) convs and linears, zero biases, unit / zero
    LayerNorm (ViT, ConvNeXt).
    """
    for m in model.modules():
        if scheme == "trunc_normal" and isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.kaiming_normal_(m.weight, mode=mode, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.LayerNorm) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never going below 90% of it."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation (Hu et al., 2018) with 1x1 convs as the two fully connected layers.

    ``scale = gate(fc2(act(fc1(avgpool(x)))))``, then ``x * scale`` broadcast over H and W.

    Args:
        channels: channels of the gated feature map (in and out of the block).
        squeeze_channels: width of the bottleneck between ``fc1`` and ``fc2``.
        activation: module class for the bottleneck non-linearity (e.g. ``nn.ReLU``, ``nn.SiLU``).
        gate: module class for the gate (e.g. ``nn.Sigmoid``, ``nn.Hardsigmoid``).
    """

    def __init__(
        self,
        channels: int,
        squeeze_channels: int,
        activation: type[nn.Module] = nn.ReLU,
        gate: type[nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze_channels, kernel_size=1)
        self.activation = activation()
        self.fc2 = nn.Conv2d(squeeze_channels, channels, kernel_size=1)
        self.gate = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rescale each channel of ``x`` by its learned gate."""
        scale = self.avgpool(x)
        scale = self.activation(self.fc1(scale))
        scale = self.gate(self.fc2(scale))
        return x * scale
