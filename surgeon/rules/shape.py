"""Reshapes and permutations: view / reshape / flatten / unflatten / squeeze, permute / transpose, expand, pad, roll / flip, and metadata reads (size, shape)."""

from __future__ import annotations

import operator
from collections.abc import Callable

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from surgeon.rules.base import (
    NAN,
    _dim,
    _shape_args,
    block_all,
    output_spaces,
    unknown_values,
)
from surgeon.rules.registry import register
from surgeon.spaces import FactorSite, RuleContext, Space


def _reshape(
    ctx: RuleContext, x: fx.Node, literal: Callable[[Callable[[Space], int]], None] | None = None
) -> None:
    """A reshape couples dims segment by segment, where products of sizes agree.

    1. one dim to one dim of the same size: identity.
    2. one dim split into several factors (C into g x C/g; a qkv width into 3 x heads x d), or
       several merged into one (C x H x W into features; heads x d back into a width): a
       *factor site*. The channel graph picks one factor as the carrier — the outermost one not
       already fixed by something else — couples it to the whole dim through its digit
       (c // stride % size), and fixes the other factors. Flatten carries C (H and W are
       spatial); a channel shuffle carries C/g (g is fixed by the later merge); attention
       carries whole heads (the q/k/v factor is fixed by indexing).
    3. anything else (several dims to several): blocked.
    """
    xs, ys = ctx.shape(x), ctx.out_shape
    if xs is None or ys is None:
        return block_all(ctx)
    out = ctx.out
    ids: list[tuple[int, int]] = []
    sites: list[FactorSite] = []
    i = j = 0
    while i < len(xs) or j < len(ys):
        i0, j0, pi, pj = i, j, 1, 1
        if i < len(xs):
            pi *= xs[i]
            i += 1
        if j < len(ys):
            pj *= ys[j]
            j += 1
        while pi != pj:
            if pi < pj and i < len(xs):
                pi *= xs[i]
                i += 1
            elif pj < pi and j < len(ys):
                pj *= ys[j]
                j += 1
            else:
                return block_all(ctx, f"{ctx.describe_name()}: sizes do not factor")
        ins = [d for d in range(i0, i) if xs[d] != 1]
        outs = [d for d in range(j0, j) if ys[d] != 1]
        for d in range(i0, i):
            if xs[d] == 1:
                ctx.block((x.name, d), "size-1 dim of a reshape")
        for d in range(j0, j):
            if ys[d] == 1:
                ctx.block((out, d), "size-1 dim of a reshape")
        if not ins and not outs:
            continue
        if len(ins) == 1 and len(outs) == 1:
            ctx.identity((x.name, ins[0]), (out, outs[0]))
            ids.append((ins[0], outs[0]))
        elif len(outs) == 1 or len(ins) == 1:
            split = len(ins) == 1
            whole = (x.name, ins[0]) if split else (out, outs[0])
            parts = [(out, d) for d in outs] if split else [(x.name, d) for d in ins]
            sizes = [ys[d] for d in outs] if split else [xs[d] for d in ins]
            site = FactorSite(
                whole, parts, sizes, "split" if split else "merge", ctx.describe_name()
            )
            ctx.factor(site)
            sites.append(site)
        else:
            for d in ins:
                ctx.block((x.name, d), f"{ctx.describe_name()} mixes several dims")
            for d in outs:
                ctx.block((out, d), f"{ctx.describe_name()} mixes several dims")

    def transfer(c):
        res = {(out, do): c((x.name, di)) for di, do in ids}
        for site in sites:
            res.update(site.constants(c))
        return res

    ctx.transfer(transfer)
    if literal is not None:
        ctx.on_resize(literal)


def _rewrite_sizes(ctx: RuleContext, start: int) -> Callable[[Callable[[Space], int]], None]:
    """Resize hook: a size argument of a view / reshape / expand whose dim changed size becomes
    the new size, literal or traced alike (``reshape(B, N, C)`` with C read from another
    tensor's shape: a channel dim has the same size for every input, so a constant is exact;
    batch and spatial dims never change and keep their traced sizes)."""
    node, out, old = ctx.node, ctx.out, ctx.out_shape

    def resize(size):
        sizes, packed = _shape_args(node, start)
        if len(sizes) == 1 and isinstance(sizes[0], fx.Node):
            _rewrite_tail(sizes[0], size, out, old)
            return
        new = [
            size((out, d))
            if not (isinstance(s, int) and s == -1) and size((out, d)) != old[d]
            else s
            for d, s in enumerate(sizes)
        ]
        rest = list(node.args[:start])
        node.args = tuple(rest + ([tuple(new)] if packed else new))

    return resize


def _rewrite_tail(shape: fx.Node, size: Callable[[Space], int], out: str, old: tuple) -> None:
    """``x.view(x.size()[:-1] + (heads, head_dim))``: the shape is a traced prefix plus a
    tuple of literals or size reads; the entries of dims that changed take their new sizes
    (the prefix, batch and sequence dims read from the input, keeps its traced sizes)."""
    if not (shape.op == "call_function" and shape.target is operator.add and len(shape.args) == 2):
        return
    head, tail = shape.args
    if not isinstance(tail, (tuple, list)) or not all(isinstance(v, (int, fx.Node)) for v in tail):
        return
    k = len(old) - len(tail)
    new = [
        size((out, k + i))
        if not (v == -1 and isinstance(v, int)) and size((out, k + i)) != old[k + i]
        else v
        for i, v in enumerate(tail)
    ]
    shape.args = (head, type(tail)(new))


@register("view", "reshape")
def view_method_rule(ctx: RuleContext) -> None:
    if "shape" in ctx.node.kwargs or "size" in ctx.node.kwargs:
        return block_all(ctx, f"{ctx.describe_name()} with a keyword shape")
    if len(ctx.node.args) == 2 and isinstance(ctx.node.args[1], torch.dtype):
        return block_all(ctx, f"{ctx.describe_name()} reinterprets the dtype")
    _reshape(ctx, ctx.arg(0, "self"), _rewrite_sizes(ctx, 1))


@register(torch.reshape)
def reshape_function_rule(ctx: RuleContext) -> None:
    if "shape" in ctx.node.kwargs:
        return block_all(ctx, f"{ctx.describe_name()} with a keyword shape")
    _reshape(ctx, ctx.arg(0, "input"), _rewrite_sizes(ctx, 1))


@register("reshape_as", "view_as")
def reshape_as_rule(ctx: RuleContext) -> None:
    """``x.reshape_as(y)``: a reshape of ``x`` to ``y``'s shape, so every output dim is also
    ``y``'s dim (they change size together)."""
    x, y = ctx.arg(0, "self"), ctx.arg(1, "other")
    ys = ctx.shape(y)
    if ys is None or tuple(ys) != tuple(ctx.out_shape or ()):
        return block_all(ctx, f"{ctx.describe_name()} of a non-tensor")
    _reshape(ctx, x)
    for d in range(len(ys)):
        ctx.identity((y.name, d), (ctx.out, d))


@register(torch.flatten, torch.unflatten, torch.squeeze, torch.unsqueeze)
@register(torch.flatten, "flatten", traits=("flatten",))
@register("flatten", "unflatten", "squeeze", "unsqueeze")
def flatten_rule(ctx: RuleContext) -> None:
    """flatten / unflatten / squeeze / unsqueeze are reshapes with no literal sizes to rewrite
    (unflatten's sizes are rewritten like a view's)."""
    name = ctx.node.target if ctx.node.op == "call_method" else ctx.node.target.__name__
    x = ctx.arg(0, "input")
    if name == "unflatten":
        node, out = ctx.node, ctx.out
        dim = ctx.arg(1, "dim")
        sizes = ctx.arg(2, "sizes")
        if not isinstance(dim, int) or not isinstance(sizes, (tuple, list)):
            return block_all(ctx)
        d0 = _dim(dim, len(ctx.shape(x)))

        def resize(size):
            new = [size((out, d0 + k)) if s != -1 else s for k, s in enumerate(sizes)]
            args = list(node.args)
            args[2] = tuple(new)
            node.args = tuple(args)

        return _reshape(ctx, x, resize)
    _reshape(ctx, x)


@register(nn.Flatten, nn.Unflatten)
@register(nn.Flatten, traits=("flatten",))
def flatten_module_rule(ctx: RuleContext) -> None:
    m = ctx.module
    x = ctx.arg(0, "input")
    if isinstance(m, nn.Unflatten):
        out, d0 = ctx.out, _dim(m.dim, len(ctx.shape(x)))

        def resize(size):
            m.unflattened_size = tuple(
                size((out, d0 + k)) if s != -1 else s for k, s in enumerate(m.unflattened_size)
            )

        return _reshape(ctx, x, resize)
    _reshape(ctx, x)


@register(torch.permute, torch.transpose, torch.t, torch.swapaxes)
@register("permute", "transpose", "t", "swapaxes")
def permute_rule(ctx: RuleContext) -> None:
    """permute / transpose, and the attributes ``x.T`` / ``x.mT`` (``H`` / ``mH``: the same
    with a conjugate, elementwise): output dim d is input dim perm[d]."""
    x = ctx.node.args[0]
    xs, ys = ctx.shape(x), ctx.out_shape
    if xs is None or ys is None:
        return block_all(ctx)
    if ctx.node.target is getattr:
        name = ctx.node.args[1]
    else:
        name = ctx.node.target if ctx.node.op == "call_method" else ctx.node.target.__name__
    n = len(xs)
    if name == "permute":
        perm, _ = _shape_args(ctx.node, 1)
        if not perm and "dims" in ctx.node.kwargs:
            perm = list(ctx.node.kwargs["dims"])
    elif name in ("t", "T", "H"):
        perm = list(range(n))[::-1]
    elif name in ("mT", "mH"):
        perm = list(range(n - 2)) + [n - 1, n - 2]
    else:
        a = ctx.arg(1, "dim0")
        b = ctx.arg(2, "dim1")
        if not isinstance(a, int) or not isinstance(b, int):
            return block_all(ctx)
        perm = list(range(n))
        a, b = _dim(a, n), _dim(b, n)
        perm[a], perm[b] = perm[b], perm[a]
    if len(perm) != n or not all(isinstance(p, int) for p in perm):
        return block_all(ctx, f"{ctx.describe_name()} with traced dims")
    perm = [_dim(p, n) for p in perm]
    out = ctx.out
    for d, p in enumerate(perm):
        ctx.identity((x.name, p), (out, d))
    ctx.transfer(lambda c: {(out, d): c((x.name, p)) for d, p in enumerate(perm)})


@register("size", "dim", "numel", "nelement", "get_device")
def size_rule(ctx: RuleContext) -> None:
    """x.size(d) and friends read metadata only: the dims are untouched (a later reshape that
    uses the size sees the new size at run time)."""
    if ctx.out_shape is not None:
        return block_all(ctx)
    for n in ctx.tensor_inputs():
        for d in range(len(ctx.shape(n))):
            ctx.reads_metadata((n.name, d))


@register("new_zeros", "new_ones", "new_full", "new_empty", "new_tensor")
def new_tensor_rule(ctx: RuleContext) -> None:
    """``x.new_zeros(sizes)``: a fresh tensor that takes only ``x``'s dtype and device; its
    own dims keep their (literal) sizes, ``x``'s dims are untouched."""
    x = ctx.arg(0, "self")
    for n in ctx.tensor_inputs():
        for d in range(len(ctx.shape(n))):
            if n is x:
                ctx.reads_metadata((n.name, d))
            else:
                ctx.block((n.name, d), f"read by {ctx.describe_name()}")
    for name, shape in output_spaces(ctx):
        for d in range(len(shape)):
            ctx.block((name, d), f"size given to {ctx.describe_name()}")


_FILLS = {torch.zeros_like: 0.0, torch.ones_like: 1.0, torch.full_like: None}


@register(*_FILLS, torch.empty_like, torch.rand_like, torch.randn_like)
def like_rule(ctx: RuleContext) -> None:
    """``torch.zeros_like(x)`` and friends: the shape of ``x`` (every dim identity), the
    values a constant (zeros, ones, the fill) or unknown (empty, random)."""
    x, ys = ctx.arg(0, "input"), ctx.out_shape
    if ctx.shape(x) is None or ys is None or len(ctx.tensor_inputs()) != 1:
        return block_all(ctx)
    fill = _FILLS.get(ctx.node.target)
    if fill is None and ctx.node.target is torch.full_like:
        value = ctx.arg(1, "fill_value")
        fill = float(value) if isinstance(value, (int, float)) else None
    out = ctx.out
    for d in range(len(ys)):
        ctx.identity((x.name, d), (out, d))
    value = NAN if fill is None else fill
    ctx.transfer(lambda c: {(out, d): np.full(ys[d], value) for d in range(len(ys))})


_METADATA = {
    "shape",
    "dtype",
    "device",
    "ndim",
    "is_cuda",
    "requires_grad",
    "is_nested",
    "is_sparse",
    "is_quantized",
    "layout",
}


@register(getattr)
def getattr_rule(ctx: RuleContext) -> None:
    if ctx.arg(1, "name") in _METADATA:
        return size_rule(ctx)
    if ctx.arg(1, "name") in ("T", "mT", "H", "mH"):
        return permute_rule(ctx)
    block_all(ctx, f"getattr {ctx.arg(1, 'name')!r} of a traced tensor")


# -- expand / unbind -----------------------------------------------------------------------
@register("expand")
def expand_rule(ctx: RuleContext) -> None:
    """x.expand(*sizes): dims that keep their size are identity (their literal sizes are
    rewritten); size-1 dims that grow, and new leading dims, are fixed."""
    x = ctx.arg(0, "self")
    xs, ys = ctx.shape(x), ctx.out_shape
    sizes, packed = _shape_args(ctx.node, 1)
    if xs is None or ys is None or len(sizes) != len(ys):
        return block_all(ctx)
    out, lead = ctx.out, len(ys) - len(xs)
    pairs = []
    for d in range(len(ys)):
        di = d - lead
        if di >= 0 and xs[di] == ys[d]:
            ctx.identity((x.name, di), (out, d))
            pairs.append((di, d))
        else:
            ctx.block((out, d), f"dim broadcast by {ctx.describe_name()}")
            if di >= 0:
                ctx.block((x.name, di), f"dim broadcast by {ctx.describe_name()}")
    ctx.transfer(lambda c: {(out, d): c((x.name, di)) for di, d in pairs})
    ctx.on_resize(_rewrite_sizes(ctx, 1))


@register("expand_as")
def expand_as_rule(ctx: RuleContext) -> None:
    x, other = ctx.arg(0, "self"), ctx.arg(1, "other")
    xs, ys = ctx.shape(x), ctx.out_shape
    if xs is None or ys is None or len(xs) != len(ys):
        return block_all(ctx)
    out = ctx.out
    for d in range(len(ys)):
        if xs[d] == ys[d]:
            ctx.identity((x.name, d), (out, d))
        else:
            ctx.block((x.name, d), f"dim broadcast by {ctx.describe_name()}")
            ctx.block((out, d), f"dim broadcast by {ctx.describe_name()}")
    for d in range(len(ys)):
        ctx.identity((other.name, d), (out, d))


@register(F.pad)
def pad_rule(ctx: RuleContext) -> None:
    """``F.pad(x, pad, mode, value)``: a padded dim changes size (blocked: spatial pads couple
    nothing, a channel pad keeps its group as it is); the other dims are identity. Zeros stay
    zero unless a non-zero constant is padded in."""
    x, pad = ctx.arg(0, "input"), ctx.arg(1, "pad")
    mode, value = ctx.arg(2, "mode", "constant"), ctx.arg(3, "value", None)
    xs = ctx.shape(x)
    # the pad list's length says which dims are padded even when its entries are traced
    # (same-padding computed from H and W): a traced entry counts as a pad
    listed = isinstance(pad, (tuple, list)) and all(isinstance(p, (int, fx.Node)) for p in pad)
    if xs is None or not listed or len(pad) % 2 or isinstance(value, fx.Node):
        return block_all(ctx, f"{ctx.describe_name()} with a traced pad list")
    padded = {
        len(xs) - 1 - k // 2 for k, p in enumerate(pad) if not (isinstance(p, int) and p == 0)
    }
    _moves_along(ctx, x, padded, f"dim padded by {ctx.describe_name()}")
    keeps_zero = mode != "constant" or not value
    out = ctx.out
    ctx.transfer(
        lambda c: {
            (out, d): np.where(c((x.name, d)) == 0, 0.0, NAN)
            if keeps_zero
            else unknown_values(xs[d])
            for d in range(len(xs))
            if d not in padded
        }
    )


@register(torch.roll, torch.flip, "roll", "flip")
def roll_flip_rule(ctx: RuleContext) -> None:
    """``torch.roll(x, shifts, dims)`` / ``x.flip(dims)``: the moved dims are blocked (their
    indices change places), the others identity with their constants kept."""
    name = ctx.node.target if ctx.node.op == "call_method" else ctx.node.target.__name__
    x = ctx.arg(0, "input")
    dims = ctx.arg(2, "dims") if name == "roll" else ctx.arg(1, "dims")
    xs = ctx.shape(x)
    if isinstance(dims, int):
        dims = (dims,)
    if (
        xs is None
        or not isinstance(dims, (tuple, list))
        or not all(isinstance(d, int) for d in dims)
    ):
        return block_all(ctx, f"{ctx.describe_name()} over all dims, or traced dims")
    moved = {_dim(d, len(xs)) for d in dims}
    _moves_along(ctx, x, moved, f"dim reordered by {ctx.describe_name()}")
    out = ctx.out
    ctx.transfer(lambda c: {(out, d): c((x.name, d)) for d in range(len(xs)) if d not in moved})


def _moves_along(ctx: RuleContext, x: fx.Node, moved: set[int], why: str) -> None:
    """Identity on every dim but ``moved``, which keep their size (blocked, with ``why``)."""
    for d in range(len(ctx.shape(x))):
        if d in moved:
            ctx.block((x.name, d), why)
            ctx.block((ctx.out, d), why)
        else:
            ctx.identity((x.name, d), (ctx.out, d))
