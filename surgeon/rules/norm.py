"""Normalisation: batch, layer and group norms."""

from __future__ import annotations

import numpy as np
import torch.nn as nn

from surgeon.rules.base import (
    NAN,
    _nan,
    _np,
    block_all,
)
from surgeon.rules.registry import register
from surgeon.spaces import RuleContext


@register(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
def batchnorm_rule(ctx: RuleContext) -> None:
    """BatchNorm: every dim identity; affine and running statistics follow the channel dim.

    The batch statistics run over every other dim, so those are statistic sinks. Constants
    are the ones that hold in train and eval mode alike (a zero scale gives the shift), so a
    fold stays exact whichever mode the slim model is later run in.
    """
    m: nn.BatchNorm2d = ctx.module  # type: ignore[assignment]
    x = ctx.arg(0, "input")
    xs = ctx.shape(x)
    if xs is None or len(xs) < 2:
        return block_all(ctx, f"BatchNorm '{ctx.node.target}' on an unbatched input")
    owner, out = str(ctx.node.target), ctx.out
    for d in range(len(xs)):
        ctx.identity((x.name, d), (out, d))
        if d != 1:
            ctx.sink((x.name, d), "stat")
    yc = (out, 1)
    if m.weight is not None:
        ctx.param(owner, "weight", 0, yc, role="norm")
        ctx.param(owner, "bias", 0, yc, role="norm")
    if m.running_mean is not None:
        ctx.param(owner, "running_mean", 0, yc, role="stat")
        ctx.param(owner, "running_var", 0, yc, role="stat")

    def transfer(c):
        n = m.num_features
        res = {(out, d): _nan(xs[d]) for d in range(len(xs)) if d != 1}
        xv = c((x.name, 1))
        gamma, beta = _np(m.weight, n, 1.0), _np(m.bias, n, 0.0)
        train = np.where(np.isnan(xv), NAN, beta)  # batch statistics: a constant channel gives beta
        if m.running_mean is None:
            normed = train
        else:
            rm, rv = _np(m.running_mean, n), _np(m.running_var, n, 1.0)
            evaluated = gamma * (xv - rm) / np.sqrt(rv + m.eps) + beta
            normed = np.where(np.isclose(evaluated, train, rtol=0, atol=1e-7), evaluated, NAN)
        res[yc] = np.where(gamma == 0, beta, normed)
        return res

    ctx.transfer(transfer)

    def resize(size):
        m.num_features = size(yc)

    ctx.on_resize(resize)


@register(nn.LayerNorm)
def layernorm_rule(ctx: RuleContext) -> None:
    """LayerNorm over the last k dims: identity coupling; a statistic over the normalised dims."""
    m: nn.LayerNorm = ctx.module  # type: ignore[assignment]
    x = ctx.arg(0, "input")
    xs = ctx.shape(x)
    owner, out = str(ctx.node.target), ctx.out
    k = len(m.normalized_shape)
    first = len(xs) - k
    for d in range(len(xs)):
        ctx.identity((x.name, d), (out, d))
    for j in range(k):
        s = (out, first + j)
        ctx.sink((x.name, first + j), "stat")
        if m.weight is not None:
            ctx.param(owner, "weight", j, s, role="norm")
        if m.bias is not None:
            ctx.param(owner, "bias", j, s, role="norm")

    def transfer(c):
        res = {(out, d): _nan(xs[d]) for d in range(len(xs))}
        if k == 1 and m.weight is not None:
            n = xs[-1]
            beta = _np(m.bias, n)
            res[(out, first)] = np.where(_np(m.weight, n, 1.0) == 0, beta, NAN)
        return res

    ctx.transfer(transfer)

    def resize(size):
        m.normalized_shape = tuple(size((out, first + j)) for j in range(k))

    ctx.on_resize(resize)


@register(nn.GroupNorm)
def groupnorm_rule(ctx: RuleContext) -> None:
    """GroupNorm: a class spans the same offset in every group (groups stay equal)."""
    m: nn.GroupNorm = ctx.module  # type: ignore[assignment]
    x = ctx.arg(0, "input")
    xs = ctx.shape(x)
    owner, out = str(ctx.node.target), ctx.out
    for d in range(len(xs)):
        ctx.identity((x.name, d), (out, d))
    c_, g = m.num_channels, m.num_groups
    yc = (out, 1)
    ctx.couple(yc, yc, np.arange(c_), np.arange(c_) % (c_ // g))
    for d in range(1, len(xs)):
        ctx.sink((x.name, d), "stat")
    if m.weight is not None:
        ctx.param(owner, "weight", 0, yc, role="norm")
        ctx.param(owner, "bias", 0, yc, role="norm")

    def transfer(c):
        res = {(out, d): _nan(xs[d]) for d in range(len(xs))}
        if m.weight is not None:
            res[yc] = np.where(_np(m.weight, c_, 1.0) == 0, _np(m.bias, c_), NAN)
        return res

    ctx.transfer(transfer)

    def resize(size):
        m.num_channels = size(yc)

    ctx.on_resize(resize)
