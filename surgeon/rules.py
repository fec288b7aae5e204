"""Op rules: how each op relates the channel spaces of its inputs, outputs and parameters.

One registry, keyed by module type, function or method name. A rule gets a
:class:`~surgeon.spaces.RuleContext` and records:

- couplings (index maps between spaces: identity, offset, block expansion, same-offset-in-
  every-group), blocks (dims that must keep their size, with the reason),
- parameter slices (which tensor dim follows which space),
- sinks (where values leave their channel class: a weighted sum, a statistic),
- a constant transfer (which output channels are constant, for exact dead-channel removal),
- resize hooks (module attributes and size constants in the graph).

Anything a rule does not describe is blocked by :mod:`surgeon.graph`. An op with no rule has
every dim it touches blocked: unknown is never treated as elementwise.
"""

from __future__ import annotations

import copy
import math
import operator
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from surgeon.spaces import FactorSite, RuleContext, Space

__all__ = [
    "Rule",
    "lookup",
    "register_module",
    "register_function",
    "register_method",
    "block_all",
    "output_spaces",
    "attr_tensor",
    "get_attr_rule",
]

Rule = Callable[[RuleContext], None]

_MODULES: dict[type, Rule] = {}
_FUNCTIONS: dict[Any, Rule] = {}
_METHODS: dict[str, Rule] = {}

NAN = float("nan")


def register_module(*types: type) -> Callable[[Rule], Rule]:
    def deco(rule: Rule) -> Rule:
        for t in types:
            _MODULES[t] = rule
        return rule

    return deco


def register_function(*fns: Any) -> Callable[[Rule], Rule]:
    def deco(rule: Rule) -> Rule:
        for f in fns:
            _FUNCTIONS[f] = rule
        return rule

    return deco


def register_method(*names: str) -> Callable[[Rule], Rule]:
    def deco(rule: Rule) -> Rule:
        for n in names:
            _METHODS[n] = rule
        return rule

    return deco


def lookup(ctx: RuleContext) -> Rule:
    """The rule for ``ctx.node``; :func:`block_all` when there is none."""
    node = ctx.node
    if node.op == "call_module":
        cls = type(ctx.module)
        for i, base in enumerate(cls.__mro__):
            rule = _MODULES.get(base)
            if rule is not None:
                # a subclass that overrides any method (forward, _conv_forward, ...) may compute
                # something else: only trust the rule for the class it was written for, or for
                # subclasses that add nothing but construction
                if all(_adds_no_methods(sub) for sub in cls.__mro__[:i]):
                    return rule
                break
        return block_all
    if node.op == "call_function":
        return _FUNCTIONS.get(node.target, block_all)
    if node.op == "call_method":
        return _METHODS.get(node.target, block_all)
    return block_all


_HARMLESS = {"__init__", "extra_repr", "reset_parameters", "__repr__", "_get_name"}


def _adds_no_methods(klass: type) -> bool:
    return not any(
        callable(v)
        and not isinstance(v, type)
        and k not in _HARMLESS
        and not k.startswith("__")
        or k in ("forward", "__call__")
        for k, v in vars(klass).items()
    )


# -- helpers ---------------------------------------------------------------------------
def _dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


def _spaces(name: str, shape: Sequence[int]) -> list[Space]:
    return [(name, d) for d in range(len(shape))]


def _nan(n: int) -> np.ndarray:
    return np.full(n, NAN)


def _np(t: torch.Tensor | None, n: int, fill: float = 0.0) -> np.ndarray:
    if t is None:
        return np.full(n, fill)
    return t.detach().float().cpu().numpy().astype(np.float64)


def block_all(ctx: RuleContext, reason: str | None = None) -> None:
    """Block every dim of every tensor input and output of the node."""
    why = reason or f"no rule for {ctx.describe_name()}"
    for n in ctx.tensor_inputs():
        for s in _spaces(n.name, ctx.shape(n)):
            ctx.block(s, why)
    for name, shape in output_spaces(ctx):
        for s in _spaces(name, shape):
            ctx.block(s, why)


def output_spaces(ctx: RuleContext) -> list[tuple[str, tuple[int, ...]]]:
    out = []
    if ctx.out_shape is not None:
        out.append((ctx.out, ctx.out_shape))
    i = 0
    while f"{ctx.out}#{i}" in ctx.shapes:
        out.append((f"{ctx.out}#{i}", ctx.shapes[f"{ctx.out}#{i}"]))
        i += 1
    return out


def _same_shape_unary(
    ctx: RuleContext, x: fx.Node, const: Callable[[np.ndarray], np.ndarray] | None
) -> None:
    """Out has x's shape, every dim identity; ``const`` maps a channel constant elementwise."""
    xs, ys = ctx.shape(x), ctx.out_shape
    if xs is None or ys is None or tuple(xs) != tuple(ys):
        block_all(ctx, f"{ctx.describe_name()} changes the shape")
        return
    for d in range(len(xs)):
        ctx.identity((x.name, d), (ctx.out, d))
    out = ctx.out

    def transfer(c):
        res = {}
        for d in range(len(xs)):
            v = c((x.name, d))
            if const is None:
                res[(out, d)] = np.where(v == 0, 0.0, NAN)
            else:
                res[(out, d)] = const(v)
        return res

    ctx.transfer(transfer)


def _torch_const(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[np.ndarray], np.ndarray]:
    """Apply an elementwise torch function to a vector of channel constants."""

    def apply(v: np.ndarray) -> np.ndarray:
        try:
            with torch.no_grad():
                r = fn(torch.from_numpy(v.copy())).double().numpy()
        except Exception:  # an op that rejects the dtype: not constant-foldable
            return _nan(len(v))
        return np.where(np.isnan(v), NAN, r)

    return apply


# -- parameters used directly in forward --------------------------------------------------
def get_attr_rule(ctx: RuleContext) -> None:
    """A parameter / buffer read in forward: every dim is a space of its own (a source)."""
    shape = ctx.out_shape
    if shape is None:
        return
    owner, _, name = str(ctx.node.target).rpartition(".")
    is_param = isinstance(attr_tensor(ctx.gm, str(ctx.node.target)), nn.Parameter)
    for d in range(len(shape)):
        ctx.produce((ctx.out, d))
        ctx.param(owner, name, d, (ctx.out, d), role="param" if is_param else "buffer")
    out, gm, target = ctx.out, ctx.gm, str(ctx.node.target)

    def transfer(c):
        t = attr_tensor(gm, target).detach().double()
        res = {}
        for d in range(t.dim()):
            flat = t.movedim(d, 0).reshape(t.shape[d], -1)
            if flat.shape[1] == 0:
                res[(out, d)] = _nan(t.shape[d])
                continue
            lo, hi = flat.min(1).values, flat.max(1).values
            res[(out, d)] = np.where((lo == hi).numpy(), lo.numpy(), NAN)
        return res

    ctx.transfer(transfer)


def attr_tensor(gm: nn.Module, target: str) -> torch.Tensor:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


# -- convolutions ----------------------------------------------------------------------
@register_module(nn.Conv1d, nn.Conv2d, nn.Conv3d)
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


_ABS_CACHE: dict[tuple[int, int, int], np.ndarray] = {}


def _kernel_abs(w: torch.Tensor) -> np.ndarray:
    """|w| summed over the kernel: [dim0, dim1] (a zero entry means that pair never interacts).

    Cached per tensor and version: PropagatePass asks for it once per sink and per round, and
    weights do not change while it runs (folds only touch biases). The cache is cleared for
    each new channel graph (:func:`clear_caches`).
    """
    key = (id(w), w._version, w.data_ptr())
    hit = _ABS_CACHE.get(key)
    if hit is not None:
        return hit
    with torch.no_grad():
        a = w.detach().abs()
        if a.dim() > 2:
            a = a.flatten(2).sum(-1)
        out = a.float().cpu().numpy()
    _ABS_CACHE[key] = out
    return out


def _zero_lines(w: torch.Tensor, axis: int) -> np.ndarray:
    """Of ``|w|`` summed over the kernel ([dim0, dim1]): which entries along dim ``1 - axis``
    have all-zero weights (``axis=1``: per dim-0 index; ``axis=0``: per dim-1 index). Cached."""
    key = (id(w), w._version, w.data_ptr(), axis)
    hit = _LINE_CACHE.get(key)
    if hit is None:
        hit = _LINE_CACHE[key] = (_kernel_abs(w) == 0).all(axis)
    return hit


_LINE_CACHE: dict[tuple[int, int, int, int], np.ndarray] = {}


def clear_caches() -> None:
    _LINE_CACHE.clear()
    _ABS_CACHE.clear()


def _tuple(v: Any) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,)


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
            _add_bias(m, delta)

    return fold


def _add_bias(m: nn.Module, delta: torch.Tensor) -> None:
    if m.bias is None:
        m.bias = nn.Parameter(delta.clone().to(m.weight.device))
    else:
        m.bias.add_(delta.to(m.bias.device))


@register_module(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
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
    owner = str(ctx.node.target)
    ctx.produce(yc)
    ctx.param(owner, "weight", out_dim, yc)
    ctx.param(owner, "bias", 0, yc)  # even when None: a constant fold may create it
    ctx.param(owner, "weight", in_dim, xin, role="consumer")

    def weights() -> np.ndarray:  # |w| as [out, in]
        w = _kernel_abs(m.weight)
        return w.T if out_dim == 1 else w

    def ignores(alive_rows):
        if alive_rows is None or alive_rows.all():
            return _zero_lines(m.weight, 0 if out_dim == 0 else 1)
        w = weights()
        return (w * alive_rows[:, None]).sum(0) == 0

    ctx.sink(xin, "contract", ignores=ignores, fold=fold, out_space=yc)

    def transfer(c):
        xz = c(xin) == 0
        if not xz.any():
            ok = _zero_lines(m.weight, 1 if out_dim == 0 else 0)
        else:
            ok = ((weights() == 0) | xz[None, :]).all(1)
        return {yc: np.where(ok, _np(m.bias, len(ok)), NAN)}

    ctx.transfer(transfer)


@register_module(nn.Linear)
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
            _add_bias(m, delta.to(m.weight.dtype))

    _contraction(ctx, m, xin, yc, in_dim=1, out_dim=0, fold=fold)

    def resize(size):
        m.in_features, m.out_features = size(xin), size(yc)

    ctx.on_resize(resize)


@register_module(nn.Embedding)
def embedding_rule(ctx: RuleContext) -> None:
    m: nn.Embedding = ctx.module  # type: ignore[assignment]
    x = ctx.arg(0, "input")
    xs = ctx.shape(x)
    out, owner = ctx.out, str(ctx.node.target)
    for d in range(len(xs)):
        ctx.identity((x.name, d), (out, d))
    yc = (out, len(xs))
    ctx.produce(yc)
    ctx.param(owner, "weight", 1, yc)

    def transfer(c):
        w = m.weight.detach()
        lo, hi = w.min(0).values, w.max(0).values
        return {yc: np.where((lo == hi).numpy(), lo.double().numpy(), NAN)}

    ctx.transfer(transfer)

    def resize(size):
        m.embedding_dim = size(yc)

    ctx.on_resize(resize)


# -- normalisation -----------------------------------------------------------------------
@register_module(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
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


@register_module(nn.LayerNorm)
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


@register_module(nn.GroupNorm)
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


# -- activations and other elementwise unary ops ------------------------------------------
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


@register_module(*_ACTIVATION_MODULES)
def activation_module_rule(ctx: RuleContext) -> None:
    m = ctx.module
    _same_shape_unary(ctx, ctx.arg(0, "input"), _torch_const(lambda t: _copy_module(m)(t)))


def _copy_module(m: nn.Module) -> nn.Module:
    """The module with in-place disabled, so a constant vector can be pushed through it."""
    if getattr(m, "inplace", False):
        m = copy.copy(m)
        m.inplace = False
    return m


@register_module(nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
def dropout_module_rule(ctx: RuleContext) -> None:
    """Dropout: identity coupling; a zero channel stays zero, other constants do not."""
    _same_shape_unary(ctx, ctx.arg(0, "input"), None)


@register_module(nn.PReLU)
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
    operator.neg,
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
)
# Elementwise ops, public for other passes (compensation pushes a distribution through them).
ELEMENTWISE_MODULES = _ACTIVATION_MODULES
ELEMENTWISE_FUNCTIONS = _UNARY_FUNCTIONS
ELEMENTWISE_METHODS = _UNARY_METHODS
_PASS_METHODS = (
    "contiguous",
    "clone",
    "detach",
    "float",
    "double",
    "half",
    "to",
    "type_as",
    "cpu",
    "cuda",
)


def _const_args(ctx: RuleContext) -> tuple[tuple, dict]:
    """The node's args after the first, with in-place turned off (for constant folding)."""
    args = tuple(ctx.node.args[1:])
    kwargs = {k: v for k, v in ctx.node.kwargs.items() if k != "inplace"}
    return args, kwargs


@register_function(*_UNARY_FUNCTIONS)
def unary_function_rule(ctx: RuleContext) -> None:
    x = ctx.arg(0, "input")
    args, kwargs = _const_args(ctx)
    if any(isinstance(a, fx.Node) for a in (*args, *kwargs.values())):
        return block_all(ctx, f"{ctx.describe_name()} takes a traced value as a parameter")
    fn = ctx.node.target
    if fn in (torch.nn.functional.relu_, torch.relu_):
        fn = torch.relu
    elif fn is torch.nn.functional.hardtanh_:
        fn = F.hardtanh
    _same_shape_unary(ctx, x, _torch_const(lambda t: fn(t, *args, **kwargs)))


@register_method(*_UNARY_METHODS)
def unary_method_rule(ctx: RuleContext) -> None:
    x = ctx.arg(0, "self")
    args, kwargs = _const_args(ctx)
    if any(isinstance(a, fx.Node) for a in (*args, *kwargs.values())):
        return block_all(ctx, f"{ctx.describe_name()} takes a traced value as a parameter")
    name = str(ctx.node.target).rstrip("_")
    _same_shape_unary(ctx, x, _torch_const(lambda t: getattr(t, name)(*args, **kwargs)))


@register_method(*_PASS_METHODS)
def passthrough_method_rule(ctx: RuleContext) -> None:
    """Identity coupling. clone / contiguous / detach / device moves keep constants exactly;
    a dtype change (to, half, float, type_as) keeps only zeros (other values round)."""
    exact = ctx.node.target in ("contiguous", "clone", "detach", "cpu", "cuda")
    _same_shape_unary(ctx, ctx.arg(0, "self"), (lambda v: v) if exact else None)


@register_function(F.dropout, F.dropout1d, F.dropout2d, F.dropout3d)
def dropout_function_rule(ctx: RuleContext) -> None:
    _same_shape_unary(ctx, ctx.arg(0, "input"), None)


@register_module(nn.Softmax, nn.LogSoftmax)
def softmax_module_rule(ctx: RuleContext) -> None:
    _softmax(ctx, ctx.arg(0, "input"), ctx.module.dim)


@register_function(F.softmax, F.log_softmax, torch.softmax, torch.log_softmax)
def softmax_function_rule(ctx: RuleContext) -> None:
    _softmax(ctx, ctx.arg(0, "input"), ctx.arg(1, "dim"))


@register_method("softmax", "log_softmax")
def softmax_method_rule(ctx: RuleContext) -> None:
    _softmax(ctx, ctx.arg(0, "self"), ctx.arg(1, "dim"))


def _softmax(ctx: RuleContext, x: fx.Node, dim: Any) -> None:
    xs = ctx.shape(x)
    if not isinstance(dim, int) or xs is None:
        return block_all(ctx, f"{ctx.describe_name()} without a constant dim")
    _same_shape_unary(ctx, x, lambda v: _nan(len(v)))
    ctx.sink((x.name, _dim(dim, len(xs))), "stat")


# -- binary arithmetic with broadcasting -------------------------------------------------
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


@register_function(*_OPS)
def binary_function_rule(ctx: RuleContext) -> None:
    _broadcast_binary(ctx, _OPS[ctx.node.target])


@register_method(*_METHOD_OPS)
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
            vals = []
            for kind, val in items:
                if kind == "space":
                    vals.append(c(val))
                elif kind == "scalar" and val is not None:
                    vals.append(np.full(ys[d], val))
                else:
                    vals.append(_nan(ys[d]))
            x, y = vals
            with np.errstate(all="ignore"):
                if op == "add":
                    r = x + alpha * y
                elif op == "sub":
                    r = x - alpha * y
                elif op == "mul":
                    r = np.where((x == 0) | (y == 0), 0.0, x * y)
                else:
                    r = np.where((x == 0) & ~np.isnan(y) & (y != 0), 0.0, x / y)
            res[(out, d)] = np.where(np.isfinite(r), r, NAN)
        return res

    ctx.transfer(transfer)


# -- matmul ----------------------------------------------------------------------------------
@register_function(torch.matmul, operator.matmul, torch.bmm)
def matmul_rule(ctx: RuleContext) -> None:
    """a @ b: batch dims broadcast; the contracted dims are one space (a statistic sink)."""
    a, b = ctx.arg(0, "input"), ctx.arg(1, "other")
    as_, bs, ys = ctx.shape(a), ctx.shape(b), ctx.out_shape
    if as_ is None or bs is None or len(as_) < 2 or len(bs) < 2:
        return block_all(ctx, f"{ctx.describe_name()} on a 1-D operand")
    out = ctx.out
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


# -- concatenation and splitting ---------------------------------------------------------
@register_function(torch.cat, torch.concat, torch.concatenate)
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


@register_function(torch.split, torch.chunk, torch.tensor_split)
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


@register_method("split", "chunk")
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


@register_function(operator.getitem)
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
    xs, ys = ctx.shape(x), ctx.out_shape
    items = list(idx) if isinstance(idx, tuple) else [idx]
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
    pairs = []
    for it in items:
        if it is None:
            ctx.block((out, j), "new axis from indexing")
            j += 1
        elif isinstance(it, int):
            ctx.block((x.name, i), "dim selected by an integer index")
            i += 1
        elif isinstance(it, slice):
            if it == slice(None):
                ctx.identity((x.name, i), (out, j))
                pairs.append((i, j))
            else:
                ctx.block((x.name, i), "dim sliced by indexing")
                ctx.block((out, j), "dim sliced by indexing")
            i += 1
            j += 1
        else:
            return block_all(ctx)
    ctx.transfer(lambda c: {(out, jj): c((x.name, ii)) for ii, jj in pairs})


# -- reshapes ----------------------------------------------------------------------------------
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


def _shape_args(node: fx.Node, start: int) -> tuple[list[Any], bool]:
    args = list(node.args[start:])
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        return list(args[0]), True
    return args, False


def _rewrite_sizes(ctx: RuleContext, start: int) -> Callable[[Callable[[Space], int]], None]:
    """Resize hook: a size argument of a view / reshape / expand whose dim changed size becomes
    the new size, literal or traced alike (``reshape(B, N, C)`` with C read from another
    tensor's shape: a channel dim has the same size for every input, so a constant is exact;
    batch and spatial dims never change and keep their traced sizes)."""
    node, out, old = ctx.node, ctx.out, ctx.out_shape

    def resize(size):
        sizes, packed = _shape_args(node, start)
        new = [
            size((out, d))
            if not (isinstance(s, int) and s == -1) and size((out, d)) != old[d]
            else s
            for d, s in enumerate(sizes)
        ]
        rest = list(node.args[:start])
        node.args = tuple(rest + ([tuple(new)] if packed else new))

    return resize


@register_method("view", "reshape")
def view_method_rule(ctx: RuleContext) -> None:
    if "shape" in ctx.node.kwargs or "size" in ctx.node.kwargs:
        return block_all(ctx, f"{ctx.describe_name()} with a keyword shape")
    if len(ctx.node.args) == 2 and isinstance(ctx.node.args[1], torch.dtype):
        return block_all(ctx, f"{ctx.describe_name()} reinterprets the dtype")
    _reshape(ctx, ctx.arg(0, "self"), _rewrite_sizes(ctx, 1))


@register_function(torch.reshape)
def reshape_function_rule(ctx: RuleContext) -> None:
    if "shape" in ctx.node.kwargs:
        return block_all(ctx, f"{ctx.describe_name()} with a keyword shape")
    _reshape(ctx, ctx.arg(0, "input"), _rewrite_sizes(ctx, 1))


@register_function(torch.flatten, torch.unflatten, torch.squeeze, torch.unsqueeze)
@register_method("flatten", "unflatten", "squeeze", "unsqueeze")
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


@register_module(nn.Flatten, nn.Unflatten)
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


@register_function(torch.permute, torch.transpose, torch.t, torch.swapaxes)
@register_method("permute", "transpose", "t", "swapaxes", "mT")
def permute_rule(ctx: RuleContext) -> None:
    """permute / transpose: output dim d is input dim perm[d]."""
    x = ctx.node.args[0]
    xs, ys = ctx.shape(x), ctx.out_shape
    if xs is None or ys is None:
        return block_all(ctx)
    name = ctx.node.target if ctx.node.op == "call_method" else ctx.node.target.__name__
    n = len(xs)
    if name == "permute":
        perm, _ = _shape_args(ctx.node, 1)
        if not perm and "dims" in ctx.node.kwargs:
            perm = list(ctx.node.kwargs["dims"])
    elif name == "t":
        perm = list(range(n))[::-1]
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


# -- pooling, resampling and reductions ---------------------------------------------------------
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


@register_module(*_POOL_MODULES)
def pool_module_rule(ctx: RuleContext) -> None:
    k, kind = _POOL_MODULES[type(ctx.module)]
    if getattr(ctx.module, "return_indices", False):
        return block_all(ctx, f"{ctx.describe_name()} returns indices")
    _pool(ctx, ctx.arg(0, "input"), k, kind)


@register_function(*_POOL_FUNCTIONS)
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


@register_function(torch.mean, torch.sum, torch.amax, torch.amin)
@register_method("mean", "sum", "amax", "amin")
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


# -- metadata reads ---------------------------------------------------------------------------
@register_method("size", "dim", "numel", "nelement", "get_device")
def size_rule(ctx: RuleContext) -> None:
    """x.size(d) and friends read metadata only: the dims are untouched (a later reshape that
    uses the size sees the new size at run time)."""
    if ctx.out_shape is not None:
        return block_all(ctx)
    for n in ctx.tensor_inputs():
        for d in range(len(ctx.shape(n))):
            ctx.passes((n.name, d))


@register_function(getattr)
def getattr_rule(ctx: RuleContext) -> None:
    if ctx.arg(1, "name") in ("shape", "dtype", "device", "ndim", "is_cuda", "requires_grad"):
        return size_rule(ctx)
    block_all(ctx, f"getattr {ctx.arg(1, 'name')!r} of a traced tensor")


# -- expand / unbind -----------------------------------------------------------------------
@register_method("expand")
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


@register_method("expand_as")
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


@register_function(torch.unbind)
@register_method("unbind")
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
