"""Dense contractions: ``nn.Linear``, ``nn.Embedding``, ``matmul``."""

from __future__ import annotations

import operator
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
    add_bias,
    as_values,
    block_all,
    unknown_values,
    zero_cols,
    zero_rows,
)
from surgeon.rules.registry import register
from surgeon.spaces import RuleContext, Space


def _contraction(
    ctx: RuleContext,
    m: nn.Module,
    xin: Space,
    yc: Space,
    *,
    in_dim: int,
    out_dim: int,
    fold: Callable[[np.ndarray, np.ndarray], None] | None,
) -> None:
    """A dense weighted sum from ``xin`` to ``yc`` (Linear, ungrouped ConvTranspose).

    ``weight[out_dim]`` and the bias produce ``yc``; ``weight[in_dim]`` reads ``xin``, which is
    a contraction sink; an output channel is the bias (a constant) when every input it reads
    is zero or has zero weight.
    """
    ctx.produce(yc)
    if isinstance(m, FunctionalWeights):
        w, b = m.nodes
        for d in range(2, len(ctx.shape(w))):
            ctx.block((w.name, d), "kernel dim of a convolution")
        for (node, d), space, role in (
            ((w, out_dim), yc, "producer"),
            ((w, in_dim), xin, "consumer"),
            ((b, 0), yc, "producer"),
        ):
            if node is not None:
                ctx.identity((node.name, d), space)
                ctx.role((node.name, d), role)
    else:
        owner = str(ctx.node.target)
        ctx.param(owner, "weight", out_dim, yc)
        ctx.param(owner, "bias", 0, yc)  # even when None: a constant fold may create it
        ctx.param(owner, "weight", in_dim, xin, role="consumer")

    flip = out_dim == 1  # the weight is [in, out]

    def ignores(alive_rows):
        if m.weight is None:  # a weight computed in the graph: nothing known
            return np.zeros(ctx.shapes[xin[0]][xin[1]], dtype=bool)
        return zero_cols(m.weight, alive_rows, transposed=flip)

    ctx.sink(xin, "contract", ignores=ignores, fold=fold, out_space=yc)

    def transfer(c):
        xz = c(xin) == 0
        if m.weight is None:
            return {yc: unknown_values(ctx.shapes[yc[0]][yc[1]])}
        ok = zero_rows(m.weight, xz if xz.any() else None, transposed=flip)
        return {yc: np.where(ok, as_values(m.bias, len(ok)), NAN)}

    ctx.transfer(transfer)


@register(nn.Linear, traits=("weighted",))
def linear_rule(ctx: RuleContext) -> None:
    """Linear: weight[0] and bias produce the last dim; weight[1] reads the input's last dim."""
    m: nn.Linear = ctx.module  # type: ignore[assignment]
    x = ctx.arg(0, "input")
    xs = ctx.shape(x)
    if xs is None:
        return block_all(ctx)
    out, last = ctx.out, len(xs) - 1
    for d in range(last):
        ctx.identity((x.name, d), (out, d))
    xin, yc = (x.name, last), (out, last)

    def fold(idx, const):
        with torch.no_grad():
            delta = m.weight.detach()[:, torch.as_tensor(idx)].double() @ torch.as_tensor(const)
            add_bias(m, delta.to(m.weight.dtype))

    _contraction(ctx, m, xin, yc, in_dim=1, out_dim=0, fold=fold)

    def resize(size):
        m.in_features, m.out_features = size(xin), size(yc)

    ctx.on_resize(resize)


@register(F.linear, torch.nn.functional.linear)
def linear_function_rule(ctx: RuleContext) -> None:
    """``F.linear(x, weight, bias)``: the Linear rule with the weight and bias read from the
    graph; nothing is folded into them (their values may be computed)."""
    x, w, b = ctx.arg(0, "input"), ctx.arg(1, "weight"), ctx.arg(2, "bias")
    xs, ws = ctx.shape(x), ctx.shape(w)
    if xs is None or ws is None or len(ws) != 2 or (b is not None and ctx.shape(b) is None):
        return block_all(ctx, f"{ctx.describe_name()} with a non-tensor weight")
    out, last = ctx.out, len(xs) - 1
    for d in range(last):
        ctx.identity((x.name, d), (out, d))
    view = FunctionalWeights(ctx.gm, w, b)
    _contraction(ctx, view, (x.name, last), (out, last), in_dim=1, out_dim=0, fold=None)


@register(torch.addmm)
def addmm_rule(ctx: RuleContext) -> None:
    """``torch.addmm(bias, x, weight)`` = ``bias + x @ weight`` with a ``(in, out)`` weight
    (GPT-2's Conv1D): the Linear rule with the weight transposed."""
    b, x, w = ctx.arg(0, "input"), ctx.arg(1, "mat1"), ctx.arg(2, "mat2")
    xs, ws, bs = ctx.shape(x), ctx.shape(w), ctx.shape(b)
    scaled = any(ctx.node.kwargs.get(k, 1) != 1 for k in ("beta", "alpha"))
    if xs is None or ws is None or bs is None or len(bs) != 1 or scaled:
        return block_all(ctx, f"{ctx.describe_name()} with a scaled or 2-D bias")
    ctx.identity((x.name, 0), (ctx.out, 0))
    view = FunctionalWeights(ctx.gm, w, b)
    _contraction(ctx, view, (x.name, 1), (ctx.out, 1), in_dim=0, out_dim=1, fold=None)


@register(nn.Embedding)
def embedding_rule(ctx: RuleContext) -> None:
    m: nn.Embedding = ctx.module  # type: ignore[assignment]
    yc = _embedding(ctx, ctx.arg(0, "input"), m)
    ctx.param(str(ctx.node.target), "weight", 1, yc)

    def resize(size):
        m.embedding_dim = size(yc)

    ctx.on_resize(resize)


@register(F.embedding)
def embedding_function_rule(ctx: RuleContext) -> None:
    """``F.embedding(ids, weight, ...)``: the embedding rule with the table from the graph."""
    w = ctx.arg(1, "weight")
    ws = ctx.shape(w)
    if ws is None or len(ws) != 2:
        return block_all(ctx, f"{ctx.describe_name()} with a non-tensor weight")
    ctx.block((w.name, 0), "rows of an embedding table (indexed by the input)")
    yc = _embedding(ctx, ctx.arg(0, "input"), FunctionalWeights(ctx.gm, w))
    ctx.identity((w.name, 1), yc)
    ctx.role((w.name, 1), "producer")


def _embedding(ctx: RuleContext, x: fx.Node, m: Any) -> Space:
    """Index dims identity; the new last dim is the table's dim 1 (returned)."""
    xs = ctx.shape(x)
    out = ctx.out
    for d in range(len(xs)):
        ctx.identity((x.name, d), (out, d))
    yc = (out, len(xs))
    ctx.produce(yc)

    def transfer(c):
        if m.weight is None:
            return {yc: unknown_values(ctx.out_shape[-1])}
        w = m.weight.detach()
        lo, hi = w.min(0).values, w.max(0).values
        return {yc: np.where((lo == hi).numpy(), lo.double().numpy(), NAN)}

    ctx.transfer(transfer)
    return yc


def _weight_operand(ctx: RuleContext, b: Any) -> tuple[fx.Node, bool] | None:
    """``(w, flip)`` when ``b`` is a 2-D parameter ``w`` read as it is (``x @ w``, an
    ``(in, out)`` weight: flip) or transposed (``x @ w.T``, Falcon's linear layers), else None."""
    if not isinstance(b, fx.Node) or len(ctx.shape(b) or ()) != 2:
        return None
    if b.op == "get_attr":
        return b, True
    src = b.args[0] if b.args else None
    if not isinstance(src, fx.Node) or src.op != "get_attr" or len(ctx.shape(src) or ()) != 2:
        return None
    transposed = (
        (b.target is getattr and b.args[1] in ("T", "mT"))
        or b.target is torch.t
        or (b.op == "call_method" and b.target == "t")
    )
    return (src, False) if transposed else None


@register(torch.matmul, operator.matmul, torch.bmm, "matmul", "bmm")
def matmul_rule(ctx: RuleContext) -> None:
    """a @ b: batch dims broadcast; the contracted dims are one space (a statistic sink).
    ``x @ w`` / ``x @ w.T`` with a 2-D parameter ``w`` is a Linear without bias: ``w``
    produces the output's last dim and reads ``x``'s (a contraction sink)."""
    a, b = ctx.arg(0, "input"), ctx.arg(1, "other")
    as_, bs, ys = ctx.shape(a), ctx.shape(b), ctx.out_shape
    if as_ is None or bs is None or len(as_) < 2 or len(bs) < 2:
        return block_all(ctx, f"{ctx.describe_name()} on a 1-D operand")
    out = ctx.out
    weight = _weight_operand(ctx, b)
    if weight is not None and ys is not None and len(ys) == len(as_):
        w, flip = weight
        for d in range(len(as_) - 1):
            ctx.identity((a.name, d), (out, d))
        last = len(as_) - 1
        view = FunctionalWeights(ctx.gm, w, None)
        in_dim, out_dim = (0, 1) if flip else (1, 0)
        if b is not w:  # the transpose: its dims are the contraction's too
            ctx.identity((b.name, 0), (a.name, last))
            ctx.identity((b.name, 1), (out, last))
        _contraction(
            ctx, view, (a.name, last), (out, last), in_dim=in_dim, out_dim=out_dim, fold=None
        )
        return None
    ctx.couple((a.name, len(as_) - 1), (b.name, len(bs) - 2))
    ctx.sink((a.name, len(as_) - 1), "stat")
    ctx.sink((b.name, len(bs) - 2), "stat")
    ctx.identity((a.name, len(as_) - 2), (out, len(ys) - 2))
    ctx.identity((b.name, len(bs) - 1), (out, len(ys) - 1))
    for v, vs in ((a, as_), (b, bs)):
        lead = len(ys) - len(vs)
        for di in range(len(vs) - 2):
            if vs[di] == ys[di + lead]:
                ctx.identity((v.name, di), (out, di + lead))
            else:
                ctx.block((v.name, di), "size-1 dim broadcast by matmul")


@register(torch.einsum)
def einsum_rule(ctx: RuleContext) -> None:
    """``torch.einsum(equation, *operands)``, driven by the equation: a letter kept in the
    output is that output dim in every operand that has it (identity); a contracted letter
    couples the operands' dims that carry it into one space (a statistic sink, as matmul's
    inner dim). Ellipsis, a letter repeated within one operand (a diagonal) and implicit
    output are blocked."""
    eq = ctx.node.args[0] if ctx.node.args else ctx.node.kwargs.get("equation")
    ops = list(ctx.node.args[1:])
    if len(ops) == 1 and isinstance(ops[0], (list, tuple)):
        ops = list(ops[0])
    ys = ctx.out_shape
    if (
        not isinstance(eq, str)
        or "->" not in eq
        or "." in eq
        or ys is None
        or not all(isinstance(v, fx.Node) and ctx.shape(v) is not None for v in ops)
    ):
        return block_all(ctx, f"{ctx.describe_name()} with an equation it cannot follow")
    lhs, rhs = eq.replace(" ", "").split("->")
    terms = lhs.split(",")
    if len(terms) != len(ops) or any(
        len(t) != len(ctx.shape(v)) or len(set(t)) != len(t)
        for t, v in zip(terms, ops, strict=False)
    ):
        return block_all(ctx, f"{ctx.describe_name()} with repeated or mismatched letters")
    out = ctx.out
    first: dict[str, Space] = {}
    for letter, d in ((letter, d) for d, letter in enumerate(rhs)):
        first[letter] = (out, d)
    for t, v in zip(terms, ops, strict=True):
        vs = ctx.shape(v)
        for d, letter in enumerate(t):
            here = (v.name, d)
            if letter in rhs and vs[d] != ys[rhs.index(letter)]:
                ctx.block(here, f"size-1 dim broadcast by {ctx.describe_name()}")
            elif letter in first and ctx.shapes[first[letter][0]][first[letter][1]] != vs[d]:
                ctx.block(here, f"size-1 dim broadcast by {ctx.describe_name()}")
                ctx.block(first[letter], f"size-1 dim broadcast by {ctx.describe_name()}")
            elif letter in first:
                ctx.couple(first[letter], here)
            else:
                first[letter] = here
            if letter not in rhs:
                ctx.sink(here, "stat")
    carriers = {
        d: [(v.name, k) for t, v in zip(terms, ops, strict=True) for k, m in enumerate(t) if m == L]
        for d, L in enumerate(rhs)
    }

    def transfer(c):
        """Each term of the sum is a product holding every operand: an index that is zero in
        one operand's kept dim is zero in the output (other constants are not followed)."""
        res = {}
        for d, spaces in carriers.items():
            zero = np.zeros(ys[d], dtype=bool)
            for sp in spaces:
                if ctx.shapes[sp[0]][sp[1]] == ys[d]:
                    zero |= c(sp) == 0
            res[(out, d)] = np.where(zero, 0.0, NAN)
        return res

    ctx.transfer(transfer)
