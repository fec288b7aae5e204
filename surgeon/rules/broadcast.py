"""Elementwise ops with broadcasting: add, sub, mul, div (residuals, gates, scales), and
``torch.where`` / ``masked_fill`` (masks)."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from surgeon.rules.base import (
    NAN,
    block_all,
    unknown_values,
)
from surgeon.rules.registry import register
from surgeon.spaces import RuleContext, Space

_ADD = (operator.add, operator.iadd, torch.add)
_SUB = (operator.sub, operator.isub, torch.sub, torch.subtract)
_MUL = (operator.mul, operator.imul, torch.mul, torch.multiply)
_DIV = (operator.truediv, operator.itruediv, torch.div, torch.true_divide)
_OPS = {}
for _f in _ADD:
    _OPS[_f] = "add"
for _f in _SUB:
    _OPS[_f] = "sub"
for _f in _MUL:
    _OPS[_f] = "mul"
for _f in _DIV:
    _OPS[_f] = "div"
_METHOD_OPS = {
    "add": "add",
    "add_": "add",
    "sub": "sub",
    "sub_": "sub",
    "mul": "mul",
    "mul_": "mul",
    "div": "div",
    "div_": "div",
    "__add__": "add",
    "__mul__": "mul",
    "__radd__": "add",
    "__rmul__": "mul",
}


@register(*_OPS)
def binary_function_rule(ctx: RuleContext) -> None:
    _broadcast_binary(ctx, _OPS[ctx.node.target])


@register(*_METHOD_OPS)
def binary_method_rule(ctx: RuleContext) -> None:
    _broadcast_binary(ctx, _METHOD_OPS[str(ctx.node.target)])


def _broadcast_binary(ctx: RuleContext, op: str) -> None:
    """Elementwise a (op) b with numpy broadcasting.

    Dims of equal size are one space (a residual add couples its branches); a size-1 dim
    broadcast against a larger one couples nothing (an SE gate's spatial dims).
    """
    a, b = (
        ctx.node.args[0],
        ctx.node.args[1] if len(ctx.node.args) > 1 else ctx.node.kwargs.get("other"),
    )
    extra = {k: v for k, v in ctx.node.kwargs.items() if k != "other"}
    if (
        any(k not in ("alpha", "rounding_mode") for k in extra)
        or extra.get("rounding_mode") is not None
    ):
        return block_all(ctx, f"{ctx.describe_name()} with {sorted(extra)}")
    alpha = extra.get("alpha", 1)
    ys = ctx.out_shape
    if ys is None or isinstance(alpha, fx.Node):
        return block_all(ctx)
    operands = []
    for v in (a, b):
        if isinstance(v, fx.Node):
            vs = ctx.shape(v)
            if vs is None:  # a traced Python number (e.g. from .size())
                operands.append(("scalar_node", None))
                continue
            operands.append((v, vs))
        elif isinstance(v, (int, float, bool)):
            operands.append(("scalar", float(v)))
        else:
            return block_all(
                ctx, f"{ctx.describe_name()} with an operand of type {type(v).__name__}"
            )
    out = ctx.out
    aligned: dict[int, list[Any]] = {d: [] for d in range(len(ys))}
    for v, vs in operands:
        if not isinstance(v, fx.Node):
            for d in aligned:
                aligned[d].append(("scalar", vs))
            continue
        lead = len(ys) - len(vs)
        for d in range(len(ys)):
            di = d - lead
            if di < 0:
                aligned[d].append(("none", None))
            elif vs[di] == ys[d]:
                ctx.identity((v.name, di), (out, d))
                aligned[d].append(("space", (v.name, di)))
            else:
                ctx.block((v.name, di), "size-1 dim broadcast by an elementwise op")
                aligned[d].append(("none", None))
    if sum(isinstance(v, fx.Node) for v, _ in operands) == 2:
        for d in range(len(ys)):
            ctx.tag((out, d), "residual" if op in ("add", "sub") else "gate")

    def transfer(c):
        res = {}
        for d, items in aligned.items():
            x, y = (_operand_constant(c, kind, val, ys[d]) for kind, val in items)
            res[(out, d)] = _combine(op, x, y, alpha)
        return res

    ctx.transfer(transfer)


def _operand_constant(c: Callable, kind: str, val: Any, n: int) -> np.ndarray:
    """The per-index constants of one operand along an output dim (NaN: not constant)."""
    if kind == "space":
        return c(val)
    if kind == "scalar" and val is not None:
        return np.full(n, val)
    return unknown_values(n)


def _combine(op: str, x: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """``x (op) y`` on constants; a zero times anything (or divided) stays zero."""
    with np.errstate(all="ignore"):
        if op == "add":
            r = x + alpha * y
        elif op == "sub":
            r = x - alpha * y
        elif op == "mul":
            r = np.where((x == 0) | (y == 0), 0.0, x * y)
        else:
            r = np.where((x == 0) & ~np.isnan(y) & (y != 0), 0.0, x / y)
    return np.where(np.isfinite(r), r, NAN)


def _couple_broadcast(ctx: RuleContext, operands: list[fx.Node]) -> dict[int, list[Space]]:
    """Every tensor operand against the output, numpy-broadcast: a dim of the output's size
    is the output's dim (identity), a size-1 dim broadcast against it is blocked. Returns,
    per output dim, the operand spaces that are that dim."""
    ys = ctx.out_shape
    out, spaces = ctx.out, {d: [] for d in range(len(ys))}
    for v in operands:
        vs = ctx.shape(v)
        lead = len(ys) - len(vs)
        for di, n in enumerate(vs):
            if n == ys[di + lead]:
                ctx.identity((v.name, di), (out, di + lead))
                spaces[di + lead].append((v.name, di))
            else:
                ctx.block((v.name, di), "size-1 dim broadcast by an elementwise op")
    for d in range(len(ys)):
        ctx.reads_metadata((out, d))
    return spaces


@register(torch.where)
def where_rule(ctx: RuleContext) -> None:
    """``torch.where(cond, a, b)``: elementwise with broadcasting over all three. A channel is
    constant where ``a`` and ``b`` are the same constant on it (whatever ``cond`` says)."""
    args = [ctx.arg(0, "condition"), ctx.arg(1, "input"), ctx.arg(2, "other")]
    if ctx.out_shape is None or any(
        not isinstance(v, (fx.Node, int, float, bool))
        or (isinstance(v, fx.Node) and ctx.shape(v) is None)
        for v in args
    ):
        return block_all(ctx)
    _select(ctx, [v for v in args if isinstance(v, fx.Node)], args[1], args[2])


@register(torch.masked_fill, "masked_fill")
def masked_fill_rule(ctx: RuleContext) -> None:
    """``x.masked_fill(mask, value)``: ``torch.where(mask, value, x)``."""
    x, mask, value = ctx.arg(0, "input"), ctx.arg(1, "mask"), ctx.arg(2, "value")
    if (
        ctx.out_shape is None
        or ctx.shape(x) is None
        or ctx.shape(mask) is None
        or not isinstance(value, (int, float, bool))
    ):
        return block_all(ctx)
    _select(ctx, [x, mask], value, x)


def _select(ctx: RuleContext, tensors: list[fx.Node], a: Any, b: Any) -> None:
    spaces = _couple_broadcast(ctx, tensors)
    ys, out = ctx.out_shape, ctx.out

    def value(c: Callable, v: Any, d: int) -> np.ndarray:
        if not isinstance(v, fx.Node):
            return np.full(ys[d], float(v))
        lead = len(ys) - len(ctx.shape(v))
        space = (v.name, d - lead)
        return c(space) if d >= lead and space in spaces[d] else unknown_values(ys[d])

    def transfer(c):
        res = {}
        for d in range(len(ys)):
            x, y = value(c, a, d), value(c, b, d)
            res[(out, d)] = np.where(x == y, x, NAN)
        return res

    ctx.transfer(transfer)


@register(torch.addcmul, "addcmul")
def addcmul_rule(ctx: RuleContext) -> None:
    """``torch.addcmul(b, a, x, value=v)`` = ``b + v * a * x`` with broadcasting (timm's
    Affine layer: a per-channel scale and shift)."""
    ops = [ctx.arg(0, "input"), ctx.arg(1, "tensor1"), ctx.arg(2, "tensor2")]
    value = ctx.node.kwargs.get("value", 1)
    if (
        ctx.out_shape is None
        or not isinstance(value, (int, float))
        or any(not isinstance(v, fx.Node) or ctx.shape(v) is None for v in ops)
    ):
        return block_all(ctx)
    spaces = _couple_broadcast(ctx, ops)
    ys, out = ctx.out_shape, ctx.out

    def const(c: Callable, v: fx.Node, d: int) -> np.ndarray:
        lead = len(ys) - len(ctx.shape(v))
        space = (v.name, d - lead)
        if d < lead:
            return unknown_values(ys[d])
        return c(space) if space in spaces[d] else unknown_values(ys[d])

    def transfer(c):
        res = {}
        for d in range(len(ys)):
            b, a, x = (const(c, v, d) for v in ops)
            prod = _combine("mul", _combine("mul", a, x, 1), np.full(ys[d], float(value)), 1)
            res[(out, d)] = _combine("add", b, prod, 1)
        return res

    ctx.transfer(transfer)
