"""Normalisation: batch, instance, layer and group norms, as modules and as functions.

Each norm has one rule body; the module form records its own parameters, the functional form
(``F.batch_norm(x, mean, var, weight, bias, ...)``) couples the tensors it is handed (read from
the graph) to the channels and tells their roles.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from surgeon.rules.base import NAN, FunctionalWeights, as_values, block_all, set_arg, unknown_values
from surgeon.rules.registry import register
from surgeon.spaces import RuleContext, Space

_ROLES = {"weight": "norm", "bias": "norm", "running_mean": "stat", "running_var": "stat"}

# (space, tensor name, tensor dim): where a norm's tensors follow the channels
Links = list[tuple[Space, str, int]]


def _module_linker(ctx: RuleContext) -> Callable[[Links], None]:
    owner, m = str(ctx.node.target), ctx.module

    def link(links: Links) -> None:
        for space, name, dim in links:
            if getattr(m, name, None) is not None:
                ctx.param(owner, name, dim, space, role=_ROLES[name])

    return link


def _function_linker(ctx: RuleContext, view: FunctionalWeights) -> Callable[[Links], None]:
    def link(links: Links) -> None:
        for space, name, dim in links:
            node = view.tensors.get(name)
            if isinstance(node, fx.Node):
                ctx.identity((node.name, dim), space)
                ctx.role((node.name, dim), _ROLES[name])

    return link


def _tensor_nodes_ok(ctx: RuleContext, view: FunctionalWeights) -> bool:
    return all(v is None or ctx.shape(v) is not None for v in view.tensors.values())


# -- batch and instance norm --------------------------------------------------------------
@register(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
@register(nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
def channel_norm_rule(ctx: RuleContext) -> None:
    """``nn.BatchNorm*`` (statistics over the batch too) and ``nn.InstanceNorm*``."""
    m = ctx.module
    batch = isinstance(m, nn.modules.batchnorm._BatchNorm)
    _channel_norm(ctx, ctx.arg(0, "input"), m, _module_linker(ctx), batch_stats=batch)
    yc = (ctx.out, 1)
    ctx.on_resize(lambda size: setattr(m, "num_features", size(yc)))


@register(F.batch_norm)
def batchnorm_function_rule(ctx: RuleContext) -> None:
    """``F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)``
    (what timm's norm-act layers call)."""
    _channel_norm_function(ctx, batch_stats=True)


@register(F.instance_norm)
def instancenorm_function_rule(ctx: RuleContext) -> None:
    """``F.instance_norm(x, running_mean, running_var, weight, bias, use_input_stats, ...)``."""
    _channel_norm_function(ctx, batch_stats=False)


def _channel_norm_function(ctx: RuleContext, *, batch_stats: bool) -> None:
    """The functional batch / instance norm: both take (x, mean, var, weight, bias, _, _, eps)."""
    view = FunctionalWeights(
        ctx.gm,
        ctx.arg(3, "weight"),
        ctx.arg(4, "bias"),
        running_mean=ctx.arg(1, "running_mean"),
        running_var=ctx.arg(2, "running_var"),
        eps=ctx.arg(7, "eps", 1e-5),
    )
    if not _tensor_nodes_ok(ctx, view) or not isinstance(view.eps, float):
        return block_all(ctx, f"{ctx.describe_name()} with traced statistics or eps")
    link = _function_linker(ctx, view)
    _channel_norm(ctx, ctx.arg(0, "input"), view, link, batch_stats=batch_stats)


def _channel_norm(
    ctx: RuleContext, x: fx.Node, m: Any, link: Callable[[Links], None], *, batch_stats: bool
) -> None:
    """Batch / instance norm: every dim identity; affine and running statistics follow the
    channel dim (1). The statistics run over the other dims (the batch too for a batch norm),
    so those are statistic sinks. Constants are the ones that hold in train and eval mode
    alike (a zero scale gives the shift), so a fold stays exact whichever mode the slim model
    is later run in."""
    xs = ctx.shape(x)
    if xs is None or len(xs) < 2:
        return block_all(ctx, f"{ctx.describe_name()} on an unbatched input")
    out = ctx.out
    for d in range(len(xs)):
        ctx.identity((x.name, d), (out, d))
        if d != 1 and (batch_stats or d > 1):
            ctx.sink((x.name, d), "stat")
    yc = (out, 1)
    link([(yc, name, 0) for name in _ROLES])
    n = xs[1]

    def transfer(c):
        res = {(out, d): unknown_values(xs[d]) for d in range(len(xs)) if d != 1}
        if not getattr(m, "known", True):
            res[yc] = unknown_values(n)
            return res
        xv = c((x.name, 1))
        gamma, beta = as_values(m.weight, n, 1.0), as_values(m.bias, n, 0.0)
        train = np.where(np.isnan(xv), NAN, beta)  # batch statistics: a constant channel gives beta
        if m.running_mean is None:
            normed = train
        elif not batch_stats:  # an instance norm that may use its running statistics
            normed = unknown_values(n)
        else:
            rm, rv = as_values(m.running_mean, n), as_values(m.running_var, n, 1.0)
            evaluated = gamma * (xv - rm) / np.sqrt(rv + m.eps) + beta
            normed = np.where(np.isclose(evaluated, train, rtol=0, atol=1e-7), evaluated, NAN)
        res[yc] = np.where(gamma == 0, beta, normed)
        return res

    ctx.transfer(transfer)


# -- layer norm ----------------------------------------------------------------------------
@register(nn.LayerNorm)
def layernorm_rule(ctx: RuleContext) -> None:
    m: nn.LayerNorm = ctx.module  # type: ignore[assignment]
    k = len(m.normalized_shape)
    new_shape = _layer_norm(ctx, ctx.arg(0, "input"), k, m, _module_linker(ctx))
    ctx.on_resize(lambda size: setattr(m, "normalized_shape", new_shape(size)))


@register(F.layer_norm)
def layernorm_function_rule(ctx: RuleContext) -> None:
    """``F.layer_norm(x, normalized_shape, weight, bias, eps)`` (torchvision's and timm's
    LayerNorm2d); the ``normalized_shape`` argument is rewritten."""
    shape = ctx.arg(1, "normalized_shape")
    if isinstance(shape, int):
        shape = (shape,)
    view = FunctionalWeights(ctx.gm, ctx.arg(2, "weight"), ctx.arg(3, "bias"))
    if (
        not isinstance(shape, (tuple, list))
        or not all(isinstance(s, int) for s in shape)
        or not _tensor_nodes_ok(ctx, view)
    ):
        return block_all(ctx, f"{ctx.describe_name()} with a traced normalized_shape")
    new_shape = _layer_norm(ctx, ctx.arg(0, "input"), len(shape), view, _function_linker(ctx, view))
    node = ctx.node
    ctx.on_resize(lambda size: set_arg(node, 1, "normalized_shape", new_shape(size)))


def _layer_norm(
    ctx: RuleContext, x: fx.Node, k: int, m: Any, link: Callable[[Links], None]
) -> Callable[[Callable[[Space], int]], tuple[int, ...]]:
    """LayerNorm over the last k dims: identity coupling; a statistic over the normalised
    dims; the affine's dim j follows dim first + j. Returns the new normalized_shape."""
    xs = ctx.shape(x)
    out = ctx.out
    first = len(xs) - k
    for d in range(len(xs)):
        ctx.identity((x.name, d), (out, d))
    for j in range(k):
        ctx.sink((x.name, first + j), "stat")
        link([((out, first + j), "weight", j), ((out, first + j), "bias", j)])

    def transfer(c):
        res = {(out, d): unknown_values(xs[d]) for d in range(len(xs))}
        if k == 1 and m.weight is not None and getattr(m, "known", True):
            n = xs[-1]
            beta = as_values(m.bias, n)
            res[(out, first)] = np.where(as_values(m.weight, n, 1.0) == 0, beta, NAN)
        return res

    ctx.transfer(transfer)
    return lambda size: tuple(size((out, first + j)) for j in range(k))


# -- group norm ----------------------------------------------------------------------------
@register(nn.GroupNorm)
def groupnorm_rule(ctx: RuleContext) -> None:
    m: nn.GroupNorm = ctx.module  # type: ignore[assignment]
    yc = _group_norm(ctx, ctx.arg(0, "input"), m.num_groups, m, _module_linker(ctx))
    ctx.on_resize(lambda size: setattr(m, "num_channels", size(yc)))


@register(F.group_norm)
def groupnorm_function_rule(ctx: RuleContext) -> None:
    """``F.group_norm(x, num_groups, weight, bias, eps)``."""
    groups = ctx.arg(1, "num_groups")
    view = FunctionalWeights(ctx.gm, ctx.arg(2, "weight"), ctx.arg(3, "bias"))
    if not isinstance(groups, int) or not _tensor_nodes_ok(ctx, view):
        return block_all(ctx, f"{ctx.describe_name()} with a traced num_groups")
    _group_norm(ctx, ctx.arg(0, "input"), groups, view, _function_linker(ctx, view))


def _group_norm(
    ctx: RuleContext, x: fx.Node, g: int, m: Any, link: Callable[[Links], None]
) -> Space:
    """GroupNorm: a class spans the same offset in every group (groups stay equal)."""
    xs = ctx.shape(x)
    out = ctx.out
    for d in range(len(xs)):
        ctx.identity((x.name, d), (out, d))
    c_ = xs[1]
    yc = (out, 1)
    ctx.couple(yc, yc, np.arange(c_), np.arange(c_) % (c_ // g))
    for d in range(1, len(xs)):
        ctx.sink((x.name, d), "stat")
    link([(yc, "weight", 0), (yc, "bias", 0)])

    def transfer(c):
        res = {(out, d): unknown_values(xs[d]) for d in range(len(xs))}
        if m.weight is not None and getattr(m, "known", True):
            res[yc] = np.where(as_values(m.weight, c_, 1.0) == 0, as_values(m.bias, c_), NAN)
        return res

    ctx.transfer(transfer)
    return yc
