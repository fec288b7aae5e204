"""Reductions over dims: pooling and resampling, mean / sum / amax, softmax."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from surgeon.rules.base import (
    NAN,
    _dim,
    _same_shape_unary,
    block_all,
    unknown_values,
)
from surgeon.rules.registry import register
from surgeon.spaces import RuleContext


@register(nn.Softmax, nn.LogSoftmax)
def softmax_module_rule(ctx: RuleContext) -> None:
    _softmax(ctx, ctx.arg(0, "input"), ctx.module.dim)


@register(F.softmax, F.log_softmax, torch.softmax, torch.log_softmax)
def softmax_function_rule(ctx: RuleContext) -> None:
    _softmax(ctx, ctx.arg(0, "input"), ctx.arg(1, "dim"))


@register("softmax", "log_softmax")
def softmax_method_rule(ctx: RuleContext) -> None:
    _softmax(ctx, ctx.arg(0, "self"), ctx.arg(1, "dim"))


def _softmax(ctx: RuleContext, x: fx.Node, dim: Any) -> None:
    xs = ctx.shape(x)
    if not isinstance(dim, int) or xs is None:
        return block_all(ctx, f"{ctx.describe_name()} without a constant dim")
    _same_shape_unary(ctx, x, lambda v: unknown_values(len(v)))
    ctx.sink((x.name, _dim(dim, len(xs))), "stat")


@register(F.normalize)
def normalize_rule(ctx: RuleContext) -> None:
    """F.normalize(x, p, dim): every dim identity; the normalised dim is a sum sink (a zero
    channel adds nothing to the norm, so removing it is exact; any other removal is not)."""
    x, dim = ctx.arg(0, "input"), ctx.arg(2, "dim", 1)
    xs = ctx.shape(x)
    if not isinstance(dim, int) or isinstance(ctx.arg(1, "p", 2.0), fx.Node) or xs is None:
        return block_all(ctx, f"{ctx.describe_name()} with a traced p or dim")
    _same_shape_unary(ctx, x, None)  # identity on every dim; zeros stay zero
    ctx.sink((x.name, _dim(dim, len(xs))), "sum")


@register(F.cosine_similarity, torch.cosine_similarity)
def cosine_similarity_rule(ctx: RuleContext) -> None:
    """``F.cosine_similarity(a, b, dim)``: a and b are coupled dim by dim; ``dim`` is summed
    away (a sum sink on both: a channel that is zero in a and in b changes nothing)."""
    a, b, dim = ctx.arg(0, "x1"), ctx.arg(1, "x2"), ctx.arg(2, "dim", 1)
    as_, bs, ys = ctx.shape(a), ctx.shape(b), ctx.out_shape
    if as_ is None or bs is None or ys is None or as_ != bs or not isinstance(dim, int):
        return block_all(ctx, f"{ctx.describe_name()} with broadcasting or a traced dim")
    dim = _dim(dim, len(as_))
    j = 0
    for d in range(len(as_)):
        ctx.identity((a.name, d), (b.name, d))
        if d == dim:
            ctx.sink((a.name, d), "sum")
            ctx.sink((b.name, d), "sum")
            continue
        ctx.identity((a.name, d), (ctx.out, j))
        j += 1


_POOL_MODULES = {
    nn.MaxPool1d: (1, "max"),
    nn.MaxPool2d: (2, "max"),
    nn.MaxPool3d: (3, "max"),
    nn.AvgPool1d: (1, "avg"),
    nn.AvgPool2d: (2, "avg"),
    nn.AvgPool3d: (3, "avg"),
    nn.AdaptiveAvgPool1d: (1, "mean"),
    nn.AdaptiveAvgPool2d: (2, "mean"),
    nn.AdaptiveAvgPool3d: (3, "mean"),
    nn.AdaptiveMaxPool1d: (1, "max"),
    nn.AdaptiveMaxPool2d: (2, "max"),
    nn.AdaptiveMaxPool3d: (3, "max"),
    nn.Upsample: (None, "max"),
    nn.UpsamplingNearest2d: (2, "max"),
    nn.UpsamplingBilinear2d: (2, "mean"),
}
_POOL_FUNCTIONS = {
    F.max_pool1d: (1, "max"),
    F.max_pool2d: (2, "max"),
    F.max_pool3d: (3, "max"),
    F.avg_pool1d: (1, "avg"),
    F.avg_pool2d: (2, "avg"),
    F.avg_pool3d: (3, "avg"),
    F.adaptive_avg_pool1d: (1, "mean"),
    F.adaptive_avg_pool2d: (2, "mean"),
    F.adaptive_avg_pool3d: (3, "mean"),
    F.adaptive_max_pool1d: (1, "max"),
    F.adaptive_max_pool2d: (2, "max"),
    F.adaptive_max_pool3d: (3, "max"),
    F.interpolate: (None, "mean"),
    torch.max_pool2d: (2, "max"),
    torch.avg_pool1d: (1, "avg"),
}


@register(*_POOL_MODULES)
@register(
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    traits=("mean_keeping",),
)
def pool_module_rule(ctx: RuleContext) -> None:
    k, kind = _POOL_MODULES[type(ctx.module)]
    if getattr(ctx.module, "return_indices", False):
        return block_all(ctx, f"{ctx.describe_name()} returns indices")
    _pool(ctx, ctx.arg(0, "input"), k, kind)


@register(*_POOL_FUNCTIONS)
@register(
    F.avg_pool1d,
    F.avg_pool2d,
    F.avg_pool3d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
    traits=("mean_keeping",),
)
def pool_function_rule(ctx: RuleContext) -> None:
    k, kind = _POOL_FUNCTIONS[ctx.node.target]
    if ctx.node.kwargs.get("return_indices"):
        return block_all(ctx, f"{ctx.describe_name()} returns indices")
    _pool(ctx, ctx.arg(0, "input"), k, kind)


def _pool(ctx: RuleContext, x: fx.Node, k: int | None, kind: str) -> None:
    """Pooling / resampling: the last k dims are spatial (blocked), the others identity.

    A constant channel stays that constant through max and adaptive-average pooling;
    through a padded average only zero is sure to survive.
    """
    xs, ys = ctx.shape(x), ctx.out_shape
    if xs is None or ys is None or len(xs) != len(ys):
        return block_all(ctx)
    if k is None:
        k = len(xs) - 2
    lead = len(xs) - k
    out = ctx.out
    for d in range(lead):
        ctx.identity((x.name, d), (out, d))
    for d in range(lead, len(xs)):
        ctx.block((x.name, d), "spatial dim of pooling / resampling")
        ctx.block((out, d), "spatial dim of pooling / resampling")

    def transfer(c):
        res = {}
        for d in range(lead):
            v = c((x.name, d))
            res[(out, d)] = v if kind in ("max", "mean") else np.where(v == 0, 0.0, NAN)
        return res

    ctx.transfer(transfer)


@register(torch.mean, torch.sum, torch.amax, torch.amin)
@register("mean", "sum", "amax", "amin")
def reduce_rule(ctx: RuleContext) -> None:
    """mean / sum / amax over given dims: kept dims identity; reduced dims are sinks (a mean over
    channels is a statistic; a sum is exact when the removed values are zero)."""
    x = ctx.node.args[0]
    name = ctx.node.target if ctx.node.op == "call_method" else ctx.node.target.__name__
    xs, ys = ctx.shape(x), ctx.out_shape
    dims = ctx.arg(1, "dim")
    keep = ctx.arg(2, "keepdim", False)
    if xs is None or ys is None or dims is None or not isinstance(keep, bool):
        return block_all(ctx, f"{ctx.describe_name()} over all dims")
    dims = [dims] if isinstance(dims, int) else list(dims)
    if not all(isinstance(d, int) for d in dims) or "dtype" in ctx.node.kwargs:
        return block_all(ctx)
    red = {_dim(d, len(xs)) for d in dims}
    out, j, pairs = ctx.out, 0, []
    for d in range(len(xs)):
        if d in red:
            ctx.sink((x.name, d), "sum" if name == "sum" else "stat")
            if keep:
                ctx.block((out, j), "reduced dim")
                j += 1
        else:
            ctx.identity((x.name, d), (out, j))
            pairs.append((d, j))
            j += 1
    count = math.prod(xs[d] for d in red)

    def transfer(c):
        res = {}
        for d, jj in pairs:
            v = c((x.name, d))
            res[(out, jj)] = v * count if name == "sum" else v
        return res

    ctx.transfer(transfer)
