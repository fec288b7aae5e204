"""Offsets along a dim: ``cat``, ``split`` / ``chunk``, tuple and tensor indexing, ``unbind``."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from surgeon.rules.base import (
    NAN,
    _dim,
    block_all,
    output_spaces,
    set_arg,
)
from surgeon.rules.registry import register
from surgeon.spaces import RuleContext


@register(torch.cat, torch.concat, torch.concatenate)
def cat_rule(ctx: RuleContext) -> None:
    """cat: input k's channel i is output channel offset_k + i; other dims identity."""
    tensors, dim = ctx.arg(0, "tensors"), ctx.arg(1, "dim", 0)
    ys = ctx.out_shape
    if not isinstance(tensors, (list, tuple)) or not all(isinstance(t, fx.Node) for t in tensors):
        return block_all(ctx, f"{ctx.describe_name()} of a non-list")
    if not isinstance(dim, int):
        return block_all(ctx, f"{ctx.describe_name()} with a traced dim")
    dim = _dim(dim, len(ys))
    out, off = ctx.out, 0
    for t in tensors:
        ts = ctx.shape(t)
        for d in range(len(ys)):
            if d == dim:
                ctx.couple((t.name, d), (out, d), np.arange(ts[d]), off + np.arange(ts[d]))
            else:
                ctx.identity((t.name, d), (out, d))
        off += ts[dim]
    ctx.tag((out, dim), "concat")
    names = [t.name for t in tensors]

    def transfer(c):
        res = {(out, dim): np.concatenate([c((n, dim)) for n in names])}
        for d in range(len(ys)):
            if d != dim:
                vals = np.stack([c((n, d)) for n in names])
                res[(out, d)] = np.where((vals == vals[0]).all(0), vals[0], NAN)
        return res

    ctx.transfer(transfer)


@register(torch.stack)
def stack_rule(ctx: RuleContext) -> None:
    """stack: a new dim (fixed) in front of position ``dim``; every other dim of every input
    is the output's dim (the inputs change size together)."""
    tensors, dim = ctx.arg(0, "tensors"), ctx.arg(1, "dim", 0)
    ys = ctx.out_shape
    if (
        not isinstance(tensors, (list, tuple))
        or not all(isinstance(t, fx.Node) and ctx.shape(t) is not None for t in tensors)
        or not isinstance(dim, int)
        or ys is None
    ):
        return block_all(ctx, f"{ctx.describe_name()} of a non-list")
    dim, out = _dim(dim, len(ys)), ctx.out
    ctx.block((out, dim), f"the dim {ctx.describe_name()} makes")
    maps = [(d, d if d < dim else d + 1) for d in range(len(ys) - 1)]
    for t in tensors:
        for d, j in maps:
            ctx.identity((t.name, d), (out, j))
    names = [t.name for t in tensors]

    def transfer(c):
        res = {}
        for d, j in maps:
            vals = np.stack([c((n, d)) for n in names])
            res[(out, j)] = np.where((vals == vals[0]).all(0), vals[0], NAN)
        return res

    ctx.transfer(transfer)


@register(torch.split, torch.chunk, torch.tensor_split)
def split_function_rule(ctx: RuleContext) -> None:
    name = getattr(ctx.node.target, "__name__", "")
    if name == "chunk":
        _split(ctx, ctx.arg(0, "input"), ctx.arg(1, "chunks"), ctx.arg(2, "dim", 0), chunk=True)
    elif name == "split":
        _split(
            ctx, ctx.arg(0, "tensor"), ctx.arg(1, "split_size_or_sections"), ctx.arg(2, "dim", 0)
        )
    else:
        block_all(ctx)


@register("split", "chunk")
def split_method_rule(ctx: RuleContext) -> None:
    if ctx.node.target == "chunk":
        _split(ctx, ctx.arg(0, "self"), ctx.arg(1, "chunks"), ctx.arg(2, "dim", 0), chunk=True)
    else:
        _split(ctx, ctx.arg(0, "self"), ctx.arg(1, "split_size"), ctx.arg(2, "dim", 0))


def _split(ctx: RuleContext, x: fx.Node, size: Any, dim: Any, chunk: bool = False) -> None:
    """split / chunk: piece k's channel i is input channel offset_k + i.

    split with a list: the list is rewritten to the new piece sizes. split with an int, and
    chunk: pieces must stay equal, so a class spans the same offset in every piece.
    """
    xs = ctx.shape(x)
    pieces = output_spaces(ctx)
    if xs is None or not isinstance(dim, int) or not pieces or ctx.out_shape is not None:
        return block_all(ctx, f"{ctx.describe_name()} with traced arguments")
    dim = _dim(dim, len(xs))
    sizes = [p[1][dim] for p in pieces]
    equal = not isinstance(size, (list, tuple))
    if equal and len(set(sizes)) != 1:
        return block_all(ctx, f"{ctx.describe_name()} gives pieces of unequal size {sizes}")
    off = 0
    for (pname, _), n in zip(pieces, sizes, strict=True):
        for d in range(len(xs)):
            if d == dim:
                ctx.couple((x.name, d), (pname, d), off + np.arange(n), np.arange(n))
                if equal and off:
                    ctx.couple((pname, d), (pieces[0][0], d))
            else:
                ctx.identity((x.name, d), (pname, d))
        off += n
    if isinstance(size, fx.Node):
        return block_all(ctx, f"{ctx.describe_name()} with a traced size")
    node = ctx.node

    def transfer(c):
        res, off = {}, 0
        for (pname, _), n in zip(pieces, sizes, strict=True):
            for d in range(len(xs)):
                v = c((x.name, d))
                res[(pname, d)] = v[off : off + n] if d == dim else v
            off += n
        return res

    ctx.transfer(transfer)

    def resize(new_size):
        if chunk:
            return
        if isinstance(size, (list, tuple)):
            new = [new_size((p[0], dim)) for p in pieces]
        else:
            new = new_size((pieces[0][0], dim))
        args = list(node.args)
        if len(args) > 1:
            args[1] = new
            node.args = tuple(args)
        else:
            key = "split_size" if node.op == "call_method" else "split_size_or_sections"
            node.kwargs = {**node.kwargs, key: new}

    ctx.on_resize(resize)


@register(operator.getitem)
def getitem_rule(ctx: RuleContext) -> None:
    """getitem: an element of a tuple (identity), or tensor indexing with slices / ints / None."""
    src, idx = ctx.node.args
    if not isinstance(src, fx.Node):
        return block_all(ctx)
    if ctx.shape(src) is None:
        pieces = _pieces(ctx, src)
        if (
            pieces
            and isinstance(idx, int)
            and not isinstance(idx, bool)
            and -len(pieces) <= idx < len(pieces)
        ):
            piece = pieces[idx]
            shape = ctx.shapes[piece]
            for d in range(len(shape)):
                ctx.identity((piece, d), (ctx.out, d))
            out = ctx.out
            ctx.transfer(lambda c: {(out, d): c((piece, d)) for d in range(len(shape))})
            return
        why = f"{ctx.describe_name()} with index {idx!r} into a tuple"
        for piece in pieces:  # a slice of the tuple, or an index we cannot follow
            for d in range(len(ctx.shapes[piece])):
                ctx.block((piece, d), why)
        if ctx.out_shape is not None:
            block_all(ctx, why)
        return
    _tensor_index(ctx, src, idx)


def _pieces(ctx: RuleContext, node: fx.Node) -> list[str]:
    """Space names of the tensors in a tuple-valued node (``split#0``, ``split#1``, ...)."""
    out, i = [], 0
    while f"{node.name}#{i}" in ctx.shapes:
        out.append(f"{node.name}#{i}")
        i += 1
    return out


def _tensor_index(ctx: RuleContext, x: fx.Node, idx: Any) -> None:
    """``x[...]`` with ints, None, Ellipsis and slices: ``:`` is identity; a slice with literal
    bounds and step 1 is an offset coupling (output index k is input index start + k; the
    input's other indices are read by nothing here), its bounds rewritten on resize by what
    goes before and inside them; an int index fixes its dim."""
    xs, ys = ctx.shape(x), ctx.out_shape
    items = list(idx) if isinstance(idx, tuple) else [idx]
    if ys is not None and xs is not None and _gather(ctx, x, xs, items):
        return
    if any(isinstance(i, (fx.Node, list, torch.Tensor, bool)) for i in items) or ys is None:
        return block_all(ctx, f"{ctx.describe_name()}: advanced or traced indexing")
    if items.count(Ellipsis) > 1:
        return block_all(ctx)
    if Ellipsis in items:
        k = items.index(Ellipsis)
        fill = len(xs) - sum(1 for i in items if i is not None and i is not Ellipsis)
        items = items[:k] + [slice(None)] * fill + items[k + 1 :]
    items += [slice(None)] * (len(xs) - sum(1 for i in items if i is not None))
    i = j = 0
    out = ctx.out
    pairs, sliced = [], []
    for pos, it in enumerate(items):
        if it is None:
            ctx.block((out, j), "new axis from indexing")
            j += 1
            continue
        if isinstance(it, int):
            ctx.block((x.name, i), "dim selected by an integer index")
            i += 1
            continue
        if not isinstance(it, slice):
            return block_all(ctx)
        if it == slice(None):
            ctx.identity((x.name, i), (out, j))
            pairs.append((i, j))
        elif _literal(it) and it.indices(xs[i])[2] == 1 and ys[j] > 0:
            start, stop, _ = it.indices(xs[i])
            ctx.couple((x.name, i), (out, j), np.arange(start, stop), np.arange(stop - start))
            sliced.append((pos, i, j, start, stop))
        else:
            ctx.block((x.name, i), "dim sliced by indexing with a step or traced bounds")
            ctx.block((out, j), "dim sliced by indexing with a step or traced bounds")
        i += 1
        j += 1

    def transfer(c):
        res = {(out, jj): c((x.name, ii)) for ii, jj in pairs}
        res.update({(out, jj): c((x.name, ii))[a:b] for _, ii, jj, a, b in sliced})
        return res

    ctx.transfer(transfer)
    if sliced:
        ctx.on_resize(_rewrite_slices(ctx.node, x, items, sliced))


def _gather(ctx: RuleContext, x: fx.Node, xs: tuple[int, ...], items: list[Any]) -> bool:
    """``x[:, idx]`` / ``x[idx]`` / ``x[..., idx, :]``: one integer index tensor among full
    slices (a relative-position table read by an index buffer). The indexed dim is gathered
    (blocked: the index's values point into it), the index's dims become the output's dims
    there (blocked), every other dim passes as identity. False where the index is not that."""
    nodes = [k for k, i in enumerate(items) if isinstance(i, fx.Node)]
    if len(nodes) != 1 or items.count(Ellipsis) > 1:
        return False
    index = items[nodes[0]]
    meta = index.meta.get("tensor_meta")
    dtype = getattr(meta, "dtype", None)
    if dtype is None or dtype.is_floating_point or dtype == torch.bool or dtype.is_complex:
        return False
    rest = [i for k, i in enumerate(items) if k != nodes[0]]
    if any(i is not Ellipsis and i != slice(None) for i in rest):
        return False
    if Ellipsis in items:
        e = items.index(Ellipsis)
        items = items[:e] + [slice(None)] * (len(xs) - len(items) + 1) + items[e + 1 :]
    items = items + [slice(None)] * (len(xs) - len(items))
    at, nd = items.index(index), len(meta.shape)
    ys = ctx.out_shape
    if len(ys) != len(xs) - 1 + nd:
        return False
    why = f"dim gathered by an index tensor at {ctx.describe_name()}"
    ctx.block((x.name, at), why)
    for d in range(nd):
        ctx.block((index.name, d), why)
    for j in range(at, at + nd):
        ctx.block((ctx.out, j), why)
    pairs = [(d, d if d < at else d - 1 + nd) for d in range(len(xs)) if d != at]
    for d, j in pairs:
        ctx.identity((x.name, d), (ctx.out, j))
    out = ctx.out
    ctx.transfer(lambda c: {(out, j): c((x.name, d)) for d, j in pairs})
    return True


def _literal(s: slice) -> bool:
    return all(
        v is None or (isinstance(v, int) and not isinstance(v, bool))
        for v in (s.start, s.stop, s.step)
    )


def _rewrite_slices(
    node: fx.Node, x: fx.Node, items: list[Any], sliced: list[tuple[int, int, int, int, int]]
) -> Callable[[Any], None]:
    def resize(sizes: Any) -> None:
        new, changed = list(items), False
        for pos, i, _, start, stop in sliced:
            kept = sizes.kept((x.name, i))
            if kept.all():
                continue
            a = int(kept[:start].sum())
            new[pos] = slice(a, a + int(kept[start:stop].sum()))
            changed = True
        if changed:
            node.args = (node.args[0], tuple(new))

    return resize


@register(operator.setitem)
def setitem_rule(ctx: RuleContext) -> None:
    """``t[index] = value``, in place (a mask filled region by region): every dim of ``t`` and
    of ``value`` keeps its size."""
    block_all(ctx, f"in-place write into a tensor ({ctx.describe_name()})")


@register(torch.narrow, "narrow")
def narrow_rule(ctx: RuleContext) -> None:
    """``x.narrow(dim, start, length)``: an offset coupling along ``dim``, like ``x[..., a:b]``;
    ``start`` and ``length`` are rewritten on resize."""
    x, dim, start, length = (
        ctx.arg(k, n) for k, n in enumerate(("input", "dim", "start", "length"))
    )
    xs = ctx.shape(x)
    if xs is None or not all(isinstance(v, int) for v in (dim, start, length)):
        return block_all(ctx, f"{ctx.describe_name()} with traced arguments")
    dim, out = _dim(dim, len(xs)), ctx.out
    start = start + xs[dim] if start < 0 else start
    for d in range(len(xs)):
        if d == dim:
            idx = np.arange(start, start + length)
            ctx.couple((x.name, d), (out, d), idx, np.arange(length))
        else:
            ctx.identity((x.name, d), (out, d))
    ctx.transfer(
        lambda c: {
            (out, d): c((x.name, d))[start : start + length] if d == dim else c((x.name, d))
            for d in range(len(xs))
        }
    )
    node = ctx.node

    def resize(sizes: Any) -> None:
        kept = sizes.kept((x.name, dim))
        if not kept.all():
            a = int(kept[:start].sum())
            set_arg(node, 2, "start", a)
            set_arg(node, 3, "length", int(kept[start : start + length].sum()))

    ctx.on_resize(resize)


@register(torch.unbind)
@register("unbind")
def unbind_rule(ctx: RuleContext) -> None:
    """unbind(dim): that dim is fixed (indexed away); the others are identity in every piece."""
    x = ctx.arg(0, "input")
    dim = ctx.arg(1, "dim", 0)
    xs = ctx.shape(x)
    pieces = output_spaces(ctx)
    if xs is None or not isinstance(dim, int) or not pieces:
        return block_all(ctx)
    dim = _dim(dim, len(xs))
    ctx.block((x.name, dim), f"dim indexed away by {ctx.describe_name()}")
    maps = [d for d in range(len(xs)) if d != dim]
    for pname, _ in pieces:
        for j, d in enumerate(maps):
            ctx.identity((x.name, d), (pname, j))
    ctx.transfer(lambda c: {(p, j): c((x.name, d)) for p, _ in pieces for j, d in enumerate(maps)})
