"""Convolutions: ``nn.Conv*`` (ungrouped, grouped, depthwise) and ``nn.ConvTranspose*``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from surgeon.rules.base import (
    NAN,
    FunctionalWeights,
    _tuple,
    add_bias,
    as_values,
    block_all,
    set_arg,
    unknown_values,
    zero_cols,
    zero_rows,
)
from surgeon.rules.linear import _contraction
from surgeon.rules.registry import register
from surgeon.spaces import RuleContext, Space


@register(nn.Conv1d, nn.Conv2d, nn.Conv3d, traits=("weighted",))
def conv_rule(ctx: RuleContext) -> None:
    """``nn.Conv*``: the shared body (:func:`_conv`) with the module's own weight and bias."""
    m: nn.Conv2d = ctx.module  # type: ignore[assignment]
    owner = str(ctx.node.target)

    def link(kind: str, yc: Space, xin: Space) -> None:
        ctx.param(owner, "weight", 0, yc)
        ctx.param(owner, "bias", 0, yc)  # even when None: a constant fold may create it
        if kind == "dense":
            ctx.param(owner, "weight", 1, xin, role="consumer")
        elif kind == "grouped":  # "groups": weight dim 1 (a group's width) keeps its size
            cin, ipg = m.in_channels, m.in_channels // m.groups
            ctx.param(owner, "weight", 1, xin, index=np.arange(cin) % ipg, role="consumer")

    def resize(new_in: int, new_out: int, groups: int) -> None:
        m.in_channels, m.out_channels, m.groups = new_in, new_out, groups

    _conv(ctx, ctx.arg(0, "input"), m, link, resize)


@register(F.conv1d, F.conv2d, F.conv3d, torch.conv1d, torch.conv2d, torch.conv3d)
def conv_function_rule(ctx: RuleContext) -> None:
    """``F.conv*(x, weight, bias, stride, padding, dilation, groups)``: the same body, with
    the weight and bias read from the graph (a parameter, or a computed kernel such as a
    standardised weight) and coupled to the input and output channels; a depthwise conv's
    ``groups`` argument is rewritten."""
    x, w, b = ctx.arg(0, "input"), ctx.arg(1, "weight"), ctx.arg(2, "bias")
    groups = ctx.arg(6, "groups", 1)
    ws = ctx.shape(w)
    if ws is None or not isinstance(groups, int) or (b is not None and ctx.shape(b) is None):
        return block_all(ctx, f"{ctx.describe_name()} with a traced groups or a non-tensor weight")
    view = FunctionalWeights(ctx.gm, w, b, groups=groups, padding=ctx.arg(4, "padding", 0))
    view.in_channels, view.out_channels = ws[1] * groups, ws[0]
    view.kernel_dims = len(ws) - 2
    for d in range(2, len(ws)):
        ctx.block((w.name, d), "kernel dim of a convolution")

    def link(kind: str, yc: Space, xin: Space) -> None:
        ctx.identity((w.name, 0), yc)
        ctx.role((w.name, 0), "producer")
        if b is not None:
            ctx.identity((b.name, 0), yc)
            ctx.role((b.name, 0), "producer")
        if kind != "depthwise":
            ctx.role((w.name, 1), "consumer")
        if kind == "dense":
            ctx.identity((w.name, 1), xin)
        elif kind == "grouped":
            cin = view.in_channels
            ctx.couple(xin, (w.name, 1), np.arange(cin), np.arange(cin) % ws[1])
        elif kind == "groups":
            ctx.block((w.name, 1), "in-group width of a grouped kernel (whole groups prune)")
        else:
            ctx.block((w.name, 1), "size-1 dim of a depthwise kernel")

    node = ctx.node

    def resize(new_in: int, new_out: int, new_groups: int) -> None:
        if new_groups != groups:
            set_arg(node, 6, "groups", new_groups)

    _conv(ctx, x, view, link, resize)


def _conv(
    ctx: RuleContext,
    x: fx.Node,
    m: Any,
    link: Callable[[str, Space, Space], None],
    on_resize: Callable[[int, int, int], None],
) -> None:
    """Conv: out channels produced by weight[0] and bias; in channels read through weight[1].

    ``m`` has the conv's ``weight``, ``bias``, ``groups``, ``padding``, ``in_channels`` and
    ``out_channels``; ``link(kind, out_space, in_space)`` records where the weight and bias
    follow the channels (``kind``: dense, depthwise, grouped or groups);
    ``on_resize(in, out, groups)`` writes the new sizes back.

    1. groups == 1: input channels are a contraction (a sink, folded into the bias when the
       conv has no padding and the bias can be written).
    2. in/groups == 1 (depthwise, any multiplier): input channel c and the outputs of group c
       are one class: removing c removes its group; ``groups`` shrinks.
    3. otherwise (grouped), by default: a class spans the same in-group offset in every
       group, so groups stay equal in size and ``groups`` is unchanged; where
       ``ctx.whole_groups(in/groups)``: a class is one whole group, its inputs and outputs
       (case 2 with wider groups), so each group keeps its width and ``groups`` shrinks.
    """
    xs, ys = ctx.shape(x), ctx.out_shape
    if xs is None or ys is None:
        return block_all(ctx)
    k = m.weight.dim() - 2 if m.weight is not None else m.kernel_dims
    cdim = len(xs) - k - 1
    out = ctx.out
    _batch_and_spatial(ctx, x, cdim, len(xs))
    cin, cout, g = m.in_channels, m.out_channels, m.groups
    ipg, opg = cin // g, cout // g
    xin, yc = (x.name, cdim), (out, cdim)
    ctx.produce(yc)
    if g == 1:
        link("dense", yc, xin)
        no_pad = all(p == 0 for p in _tuple(m.padding)) and m.padding != "same"
        ctx.sink(
            xin,
            "contract",
            ignores=_conv_ignores(m, g),
            fold=_conv_fold(m) if no_pad and getattr(m, "writable", True) else None,
            out_space=yc,
        )
    elif ipg == 1:
        link("depthwise", yc, xin)
        ctx.couple(xin, yc, np.arange(cout) // opg, np.arange(cout))
        ctx.tag(yc, "depthwise")
    elif ctx.whole_groups(ipg):
        link("groups", yc, xin)
        first = (np.arange(cin) // ipg) * opg  # the first output of each input's group
        ctx.couple(xin, yc, np.arange(cin), first)
        ctx.couple(yc, yc, np.arange(cout), (np.arange(cout) // opg) * opg)
        ctx.tag(yc, "grouped")
        ctx.record.whole_groups = yc
    else:
        link("grouped", yc, xin)
        ctx.couple(xin, xin, np.arange(cin), np.arange(cin) % ipg)
        ctx.couple(yc, yc, np.arange(cout), np.arange(cout) % opg)
        ctx.sink(xin, "contract", ignores=_conv_ignores(m, g), fold=None, out_space=yc)
        ctx.tag(yc, "grouped")

    def transfer(c):
        xz = (c(xin) == 0).reshape(g, ipg)
        if m.weight is None:
            return {yc: unknown_values(cout)}
        if not xz.any():  # the usual case: only all-zero filters give constants
            dead = None
        else:
            dead = xz[0] if g == 1 else np.repeat(xz, opg, axis=0)
        ok = zero_rows(m.weight, dead)
        return {yc: np.where(ok, as_values(m.bias, cout), NAN)}

    ctx.transfer(transfer)

    def resize(size):
        new_in, new_out = size(xin), size(yc)
        whole = ipg == 1 or ctx.whole_groups(ipg)  # classes are whole groups
        on_resize(new_in, new_out, g * new_in // cin if 1 < g and whole else g)

    ctx.on_resize(resize)


def _conv_ignores(m: nn.Module, g: int) -> Callable[[np.ndarray | None], np.ndarray]:
    """Per input channel: True where every (alive) output row of its group has zero weight."""

    def ignores(alive_rows: np.ndarray | None) -> np.ndarray:
        if m.weight is None:  # a kernel computed in the graph: nothing known
            return np.zeros(m.in_channels, dtype=bool)
        return zero_cols(m.weight, alive_rows, groups=g)

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
    xin, yc = _conv_transpose(ctx, ctx.arg(0, "input"), m, m.weight.dim() - 2)

    def resize(size):
        m.in_channels, m.out_channels = size(xin), size(yc)

    ctx.on_resize(resize)


@register(F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)
def conv_transpose_function_rule(ctx: RuleContext) -> None:
    """``F.conv_transpose*(x, weight, bias, stride, padding, output_padding, groups, ...)``."""
    w, b, groups = ctx.arg(1, "weight"), ctx.arg(2, "bias"), ctx.arg(6, "groups", 1)
    ws = ctx.shape(w)
    if ws is None or groups != 1 or (b is not None and ctx.shape(b) is None):
        return block_all(ctx, f"{ctx.describe_name()}: grouped, or a non-tensor weight")
    _conv_transpose(ctx, ctx.arg(0, "input"), FunctionalWeights(ctx.gm, w, b), len(ws) - 2)


def _batch_and_spatial(ctx: RuleContext, x: fx.Node, cdim: int, ndim: int) -> None:
    """Dims before the channel dim pass through; the spatial dims after it keep their size."""
    for d in range(cdim):
        ctx.identity((x.name, d), (ctx.out, d))
    for d in range(cdim + 1, ndim):
        ctx.block((x.name, d), "spatial dim of a convolution")
        ctx.block((ctx.out, d), "spatial dim of a convolution")


def _conv_transpose(ctx: RuleContext, x: fx.Node, m: Any, k: int) -> tuple[Space, Space]:
    """Batch dims identity, spatial dims blocked, the channels a dense contraction."""
    xs = ctx.shape(x)
    cdim = len(xs) - k - 1
    out = ctx.out
    _batch_and_spatial(ctx, x, cdim, len(xs))
    xin, yc = (x.name, cdim), (out, cdim)
    _contraction(ctx, m, xin, yc, in_dim=0, out_dim=1, fold=None)
    return xin, yc
