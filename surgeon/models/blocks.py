"""Building blocks shared by several zoo models.

Conv-BN-activation units, squeeze-and-excitation, the optional residual of inverted-residual
blocks, the pooled classifier head, channel rounding and the reference init. None of them
registers a module its users did not have before, so state dict keys, parameter counts, the
init (given ``torch.manual_seed``) and the traced graphs are those of the models as written.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "ConvNormActivation",
    "OptionalResidual",
    "PooledClassifier",
    "SqueezeExcitation",
    "init_weights",
    "make_divisible",
]


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


class ConvNormActivation(nn.Sequential):
    """Conv (no bias) → BatchNorm → optional activation, with "same" padding for odd kernels.

    Children ``0`` (conv), ``1`` (norm) and, unless ``activation`` is None, ``2``
    (``activation(inplace=True)``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        activation: type[nn.Module] | None = nn.ReLU,
        eps: float = 1e-5,
        momentum: float = 0.1,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=(kernel_size - 1) // 2,
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels, eps=eps, momentum=momentum),
        ]
        if activation is not None:
            layers.append(activation(inplace=True))
        super().__init__(*layers)


class OptionalResidual(nn.Module):
    """``x + branch(x)`` when the block keeps its shape (stride 1, same width), else ``branch(x)``.

    The inverted-residual blocks of MobileNetV2 / V3 and EfficientNet. A subclass calls
    ``super().__init__(in_channels, out_channels, stride)`` and then builds its branch as the
    attribute named by ``branch_name``.
    """

    branch_name = "block"

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.use_res_connect = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        branch = getattr(self, self.branch_name)
        if self.use_res_connect:
            return x + branch(x)
        return branch(x)


class PooledClassifier(nn.Module):
    """``features`` → ``avgpool`` (adaptive, to ``pool_size``) → flatten → ``classifier``.

    VGG, EfficientNet and MobileNetV3. A subclass builds ``features``, then ``classifier`` (in
    that order: construction draws from the seeded generator), and passes both here; the
    three modules are registered in that order and the whole network gets
    :func:`init_weights`.
    """

    def __init__(
        self, features: nn.Module, classifier: nn.Module, pool_size: int | tuple[int, int] = 1
    ) -> None:
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d(pool_size)
        self.classifier = classifier
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a ``(N, 3, H, W)`` batch to ``(N, num_classes)`` logits."""
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)
