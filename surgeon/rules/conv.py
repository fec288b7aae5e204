"""Convolutions: ``nn.Conv*`` (ungrouped, grouped, depthwise) and ``nn.ConvTranspose*``."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn as nn

from surgeon.rules.base import (
    NAN,
    _kernel_abs,
    _np,
    _tuple,
    _zero_lines,
    add_bias,
    block_all,
)
from surgeon.rules.linear import _contraction
from surgeon.rules.registry import register
from surgeon.spaces import RuleContext


@register(nn.Conv1d, nn.Conv2d, nn.Conv3d, traits=("weighted",))
def conv_rule(ctx: RuleContext) -> None:
    """Conv: out channels produced by weight[0] and bias; in channels read through weight[1].

    1. groups == 1: input channels are a contraction (a sink, folded into the bias when the
       conv has no padding).
    2. in/groups == 1 (depthwise, any multiplier): input channel c and the outputs of group c
       are one class: removing c removes its group; ``groups`` shrinks.
    3. otherwise (grouped): a class spans the same in-group offset in every group, so groups
       stay equal in size and ``groups`` is unchanged.
    """
    m: nn.Conv2d = ctx.module  # type: ignore[assignment]
    x = ctx.arg(0, "input")
    xs, ys = ctx.shape(x), ctx.out_shape
    k = m.weight.dim() - 2
    if xs is None or ys is None:
        return block_all(ctx)
    cdim = len(xs) - k - 1
    owner, out = str(ctx.node.target), ctx.out
    for d in range(cdim):
        ctx.identity((x.name, d), (out, d))
    for d in range(cdim + 1, len(xs)):
        ctx.block((x.name, d), "spatial dim of a convolution")
        ctx.block((out, d), "spatial dim of a convolution")
    cin, cout, g = m.in_channels, m.out_channels, m.groups
    ipg, opg = cin // g, cout // g
    xin, yc = (x.name, cdim), (out, cdim)
    ctx.produce(yc)
    ctx.param(owner, "weight", 0, yc)
    ctx.param(owner, "bias", 0, yc)  # even when None: a constant fold may create it
    if g == 1:
        ctx.param(owner, "weight", 1, xin, role="consumer")
        no_pad = all(p == 0 for p in _tuple(m.padding)) and m.padding != "same"
        ctx.sink(
            xin,
            "contract",
            ignores=_conv_ignores(m, g),
            fold=_conv_fold(m) if no_pad else None,
            out_space=yc,
        )
    elif ipg == 1:
        ctx.couple(xin, yc, np.arange(cout) // opg, np.arange(cout))
        ctx.tag(yc, "depthwise")
    else:
        ctx.couple(xin, xin, np.arange(cin), np.arange(cin) % ipg)
        ctx.couple(yc, yc, np.arange(cout), np.arange(cout) % opg)
        ctx.param(owner, "weight", 1, xin, index=np.arange(cin) % ipg, role="consumer")
        ctx.sink(xin, "contract", ignores=_conv_ignores(m, g), fold=None, out_space=yc)
        ctx.tag(yc, "grouped")

    def transfer(c):
        xz = (c(xin) == 0).reshape(g, ipg)
        if not xz.any():  # the usual case: only all-zero filters give constants
            ok = _zero_lines(m.weight, 1)
        elif g == 1:
            ok = ~(_kernel_abs(m.weight)[:, ~xz[0]] != 0).any(1)
        else:
            ok = ((_kernel_abs(m.weight) == 0) | np.repeat(xz, opg, axis=0)).all(1)
        return {yc: np.where(ok, _np(m.bias, cout), NAN)}

    ctx.transfer(transfer)

    def resize(size):
        new_in, new_out = size(xin), size(yc)
        if 1 < g and ipg == 1:
            m.groups = g * new_in // cin
        m.in_channels, m.out_channels = new_in, new_out

    ctx.on_resize(resize)


def _conv_ignores(m: nn.Module, g: int) -> Callable[[np.ndarray | None], np.ndarray]:
    """Per input channel: True where every (alive) output row of its group has zero weight."""

    def ignores(alive_rows: np.ndarray | None) -> np.ndarray:
        if g == 1 and (alive_rows is None or alive_rows.all()):
            return _zero_lines(m.weight, 0)
        if g == 1:
            return ~(_kernel_abs(m.weight)[alive_rows] != 0).any(0)
        w = _kernel_abs(m.weight)  # [cout, ipg]
        if alive_rows is not None:
            w = w * alive_rows[:, None]
        cout, ipg = w.shape
        per_group = w.reshape(g, cout // g, ipg).sum(1)  # [g, ipg]
        return (per_group == 0).reshape(-1)

    return ignores


def _conv_fold(m: nn.Module) -> Callable[[np.ndarray, np.ndarray], None]:
    """Add const * (sum over the kernel of weight[:, c]) to the bias (groups == 1, no padding)."""

    def fold(idx: np.ndarray, const: np.ndarray) -> None:
        with torch.no_grad():
            w = m.weight.detach().flatten(2).sum(-1)[:, torch.as_tensor(idx)]  # [cout, n]
            delta = (w.double() @ torch.as_tensor(const)).to(m.weight.dtype)
            add_bias(m, delta)

    return fold


@register(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, traits=("weighted",))
def conv_transpose_rule(ctx: RuleContext) -> None:
    """Transposed conv: weight is [in, out/groups, *k]; groups == 1 only, else blocked."""
    m: nn.ConvTranspose2d = ctx.module  # type: ignore[assignment]
    if m.groups != 1:
        return block_all(ctx, f"grouped ConvTranspose '{ctx.node.target}' has no rule yet")
    x = ctx.arg(0, "input")
    xs = ctx.shape(x)
    k = m.weight.dim() - 2
    cdim = len(xs) - k - 1
    out = ctx.out
    for d in range(cdim):
        ctx.identity((x.name, d), (out, d))
    for d in range(cdim + 1, len(xs)):
        ctx.block((x.name, d), "spatial dim of a convolution")
        ctx.block((out, d), "spatial dim of a convolution")
    xin, yc = (x.name, cdim), (out, cdim)
    _contraction(ctx, m, xin, yc, in_dim=0, out_dim=1, fold=None)

    def resize(size):
        m.in_channels, m.out_channels = size(xin), size(yc)

    ctx.on_resize(resize)
