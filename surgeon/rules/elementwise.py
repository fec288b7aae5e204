"""Elementwise unary ops: activations, dropout, PReLU, math functions, dtype / device moves."""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from surgeon.rules.base import (
    _same_shape_unary,
    _torch_const,
    block_all,
    copy_module,
)
from surgeon.rules.registry import register
from surgeon.spaces import RuleContext

_ACTIVATION_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Softplus,
    nn.Softsign,
    nn.Tanhshrink,
    nn.LogSigmoid,
    nn.Identity,
    nn.Hardshrink,
    nn.Softshrink,
)


@register(*_ACTIVATION_MODULES, traits=("elementwise",))
@register(nn.Identity, traits=("mean_keeping",))
def activation_module_rule(ctx: RuleContext) -> None:
    m = ctx.module
    _same_shape_unary(ctx, ctx.arg(0, "input"), _torch_const(lambda t: copy_module(m)(t)))


@register(nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, traits=("mean_keeping",))
def dropout_module_rule(ctx: RuleContext) -> None:
    """Dropout: identity coupling; a zero channel stays zero, other constants do not."""
    _same_shape_unary(ctx, ctx.arg(0, "input"), None)


@register(nn.PReLU)
def prelu_rule(ctx: RuleContext) -> None:
    m: nn.PReLU = ctx.module  # type: ignore[assignment]
    x = ctx.arg(0, "input")
    _same_shape_unary(ctx, x, None)
    if m.num_parameters > 1:
        yc = (ctx.out, 1)
        ctx.param(str(ctx.node.target), "weight", 0, yc, role="norm")

        def resize(size):
            m.num_parameters = size(yc)

        ctx.on_resize(resize)


@register(F.prelu, torch.prelu)
def prelu_function_rule(ctx: RuleContext) -> None:
    """``F.prelu(x, weight)``: a per-channel slope (or one shared slope) from the graph."""
    x, w = ctx.arg(0, "input"), ctx.arg(1, "weight")
    ws = ctx.shape(w)
    if ws is None or len(ws) != 1:
        return block_all(ctx, f"{ctx.describe_name()} with a non-tensor weight")
    _same_shape_unary(ctx, x, None)
    if ws[0] > 1:
        ctx.identity((w.name, 0), (ctx.out, 1))
        ctx.role((w.name, 0), "norm")
    else:
        ctx.block((w.name, 0), "one slope shared by every channel")


_UNARY_FUNCTIONS = (
    F.relu,
    F.relu6,
    F.leaky_relu,
    F.elu,
    F.selu,
    F.celu,
    F.gelu,
    F.silu,
    F.mish,
    F.hardswish,
    F.hardsigmoid,
    F.hardtanh,
    F.softplus,
    F.softsign,
    F.tanhshrink,
    F.logsigmoid,
    F.sigmoid,
    F.tanh,
    torch.relu,
    torch.sigmoid,
    torch.tanh,
    torch.abs,
    torch.neg,
    torch.exp,
    torch.clamp,
    torch.clip,
    torch.square,
    torch.sqrt,
    torch.rsqrt,
    torch.erf,
    torch.sin,
    torch.cos,
    torch.pow,
    torch.log,
    torch.reciprocal,
    operator.neg,
    operator.pow,
    torch.nn.functional.relu_,
    torch.relu_,
    torch.nn.functional.hardtanh_,
)
_UNARY_METHODS = (
    "relu",
    "relu_",
    "sigmoid",
    "sigmoid_",
    "tanh",
    "tanh_",
    "abs",
    "neg",
    "exp",
    "clamp",
    "clamp_",
    "clamp_min",
    "clamp_max",
    "clip",
    "square",
    "sqrt",
    "rsqrt",
    "erf",
    "hardtanh",
    "sin",
    "cos",
    "pow",
    "log",
    "reciprocal",
)
_PASS_METHODS = (
    "contiguous",
    "clone",
    "detach",
    "float",
    "double",
    "half",
    "bfloat16",
    "long",
    "int",
    "short",
    "bool",
    "to",
    "type",
    "type_as",
    "cpu",
    "cuda",
)


def _const_args(ctx: RuleContext) -> tuple[tuple, dict]:
    """The node's args after the first, with in-place turned off (for constant folding)."""
    args = tuple(ctx.node.args[1:])
    kwargs = {k: v for k, v in ctx.node.kwargs.items() if k != "inplace"}
    return args, kwargs


@register(*_UNARY_FUNCTIONS, traits=("elementwise",))
def unary_function_rule(ctx: RuleContext) -> None:
    x = ctx.arg(0, "input")
    if not isinstance(x, fx.Node):  # 2 ** t: the tensor is the exponent
        return block_all(ctx, f"{ctx.describe_name()} of a number by a tensor")
    args, kwargs = _const_args(ctx)
    if any(isinstance(a, fx.Node) for a in (*args, *kwargs.values())):
        return block_all(ctx, f"{ctx.describe_name()} takes a traced value as a parameter")
    fn = ctx.node.target
    if fn in (torch.nn.functional.relu_, torch.relu_):
        fn = torch.relu
    elif fn is torch.nn.functional.hardtanh_:
        fn = F.hardtanh
    _same_shape_unary(ctx, x, _torch_const(lambda t: fn(t, *args, **kwargs)))


@register(*_UNARY_METHODS, traits=("elementwise",))
def unary_method_rule(ctx: RuleContext) -> None:
    x = ctx.arg(0, "self")
    args, kwargs = _const_args(ctx)
    if any(isinstance(a, fx.Node) for a in (*args, *kwargs.values())):
        return block_all(ctx, f"{ctx.describe_name()} takes a traced value as a parameter")
    name = str(ctx.node.target).rstrip("_")
    _same_shape_unary(ctx, x, _torch_const(lambda t: getattr(t, name)(*args, **kwargs)))


@register(*_PASS_METHODS)
def passthrough_method_rule(ctx: RuleContext) -> None:
    """Identity coupling. clone / contiguous / detach / device moves keep constants exactly;
    a dtype change (to, half, float, type_as) keeps only zeros (other values round)."""
    exact = ctx.node.target in ("contiguous", "clone", "detach", "cpu", "cuda")
    x = ctx.arg(0, "self")
    for other in ctx.tensor_inputs():  # x.type_as(y), x.to(y): only y's dtype and device
        if other is not x:
            for d in range(len(ctx.shape(other) or ())):
                ctx.reads_metadata((other.name, d))
    _same_shape_unary(ctx, x, (lambda v: v) if exact else None)


@register(F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, traits=("mean_keeping",))
def dropout_function_rule(ctx: RuleContext) -> None:
    _same_shape_unary(ctx, ctx.arg(0, "input"), None)
