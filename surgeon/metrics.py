"""Model size and cost: parameter counts and MACs counted by torch's own FlopCounterMode."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_params", "count_macs", "as_args"]


def as_args(example_inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Split ``example_inputs`` (a tensor, a tuple of tensors, or a dict) into (args, kwargs)."""
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    return (example_inputs,), {}


def count_params(model: torch.nn.Module) -> int:
    """Number of parameter elements (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: torch.nn.Module, example_inputs: Any) -> int:
    """Multiply-accumulates of one forward pass on ``example_inputs``.

    Counted with ``torch.utils.flop_counter.FlopCounterMode`` (which reports 2 FLOPs per MAC
    for matmul / convolution), so only the ops torch knows a formula for are counted.
    """
    args, kwargs = as_args(example_inputs)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(*args, **kwargs)
    return counter.get_total_flops() // 2
