"""Functions of model libraries that fx records as calls (``torch.fx.wrap``), registered when
the library is installed: what they compute decides their rule, never the model they are in.
"""

from __future__ import annotations

import importlib
from typing import Any

from surgeon.rules.base import _same_shape_unary, block_all
from surgeon.rules.registry import register
from surgeon.spaces import RuleContext


def _optional(module: str, name: str) -> Any:
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


_STOCHASTIC_DEPTH = [
    f for f in (_optional("torchvision.ops.stochastic_depth", "stochastic_depth"),) if f
]


def stochastic_depth_rule(ctx: RuleContext) -> None:
    """Stochastic depth / drop path (``torchvision.ops.stochastic_depth(x, p, mode,
    training)``): the identity in eval mode; in training it scales whole rows (or the whole
    batch) by 0 or 1 / (1 - p), which couples every dim to itself and keeps the mean."""
    x = ctx.arg(0, "input")
    if ctx.shape(x) is None:
        return block_all(ctx)
    _same_shape_unary(ctx, x, None)  # zeros stay zero; other constants are scaled


if _STOCHASTIC_DEPTH:
    register(*_STOCHASTIC_DEPTH, traits=("mean_keeping",))(stochastic_depth_rule)
