"""Helpers every rule family shares: blocking, output spaces, constants, weight magnitudes."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from surgeon.spaces import RuleContext, Space

NAN = float("nan")


# -- helpers ---------------------------------------------------------------------------
def _dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


def _spaces(name: str, shape: Sequence[int]) -> list[Space]:
    return [(name, d) for d in range(len(shape))]


def unknown_values(n: int) -> np.ndarray:
    """``n`` values a constant transfer cannot tell (NaN: they vary)."""
    return np.full(n, NAN)


def as_values(t: torch.Tensor | None, n: int, fill: float = 0.0) -> np.ndarray:
    """A parameter's values as float64 numpy (``fill`` where the module has none)."""
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
            return unknown_values(len(v))
        return np.where(np.isnan(v), NAN, r)

    return apply


_DENSE_FROM = 1 / 16  # the fraction of zero pairs from which a bool matrix is kept


class _Zeros:
    """The ``[dim0, dim1]`` pairs of a weight whose kernel is all zero (they never interact):
    a bool matrix, or only their coordinates when few are (a randomly initialised Linear has
    a dozen exact zeros in 100M weights), or nothing at all (``none``)."""

    def __init__(self, w: torch.Tensor) -> None:
        self.shape = (w.shape[0], w.shape[1])
        zeros = w.numel() - int(torch.count_nonzero(w))  # NaN counts as nonzero
        self.none = zeros == 0
        self.dense: np.ndarray | None = None
        self.coords: tuple[np.ndarray, np.ndarray] | None = None
        if self.none:
            return
        if w.dim() == 2 and zeros < w.numel() * _DENSE_FROM:  # a block of rows at a time
            step = max(1, (1 << 20) // max(1, w.shape[1]))
            found = [
                (w[i : i + step] == 0).nonzero().cpu().numpy() + [i, 0]
                for i in range(0, w.shape[0], step)
            ]
            r, c = np.concatenate(found).T
            self.coords = (r, c)
            return
        z = w == 0 if w.dim() == 2 else ~(w != 0).flatten(2).any(-1)
        count = zeros if w.dim() == 2 else int(torch.count_nonzero(z))
        if count == 0:
            self.none = True
        elif count < z.numel() * _DENSE_FROM:
            r, c = z.nonzero().cpu().numpy().T
            self.coords = (r, c)
        else:
            self.dense = z.cpu().numpy()

    def transposed(self) -> _Zeros:
        t = copy.copy(self)
        t.shape = self.shape[::-1]
        t.dense = None if self.dense is None else self.dense.T
        t.coords = None if self.coords is None else self.coords[::-1]
        return t

    def rows(self, dead: np.ndarray | None) -> np.ndarray:
        """Per row: every column is zero or ``dead`` (per column, or per row and column)."""
        rows, cols = self.shape
        if self.dense is not None:
            return (self.dense if dead is None else self.dense | dead).all(1)
        if dead is None:
            dead = np.zeros(cols, dtype=bool)
        dead = np.broadcast_to(dead, (rows, cols)) if dead.ndim == 2 else dead
        need = (~dead).sum(-1) * np.ones(rows, dtype=np.int64)  # live columns per row
        if self.none:
            return need == 0
        r, c = self.coords  # type: ignore[misc]
        live = ~(dead[r, c] if dead.ndim == 2 else dead[c])
        return np.bincount(r[live], minlength=rows) == need

    def cols(self, alive: np.ndarray | None, groups: int) -> np.ndarray:
        """Per group and column: every alive row of the group is zero there."""
        rows, cols = self.shape
        live = np.ones(rows, dtype=bool) if alive is None else alive
        if self.dense is not None:
            z = self.dense | ~live[:, None]
            return z.reshape(groups, rows // groups, cols).all(1).reshape(-1)
        need = np.repeat(live.reshape(groups, -1).sum(1), cols)  # alive rows per group
        if self.none:
            return need == 0
        r, c = self.coords  # type: ignore[misc]
        keep = live[r]
        key = (r[keep] // (rows // groups)) * cols + c[keep]
        return np.bincount(key, minlength=groups * cols) == need


_ZERO_CACHE: dict[tuple[int, int, int], _Zeros] = {}


def _kernel_zeros(w: torch.Tensor, transposed: bool = False) -> _Zeros:
    """The zero pattern of ``w`` summed over its kernel (``transposed``: as ``[dim1, dim0]``),
    found with one count of nonzeros and no temporary the weight's size when there is none (a
    dense weight, the usual case, costs one pass over it and no copy).

    Cached per tensor and version: PropagatePass asks once per sink and per round, and weights
    do not change while it runs (folds only touch biases). The cache is cleared for each new
    channel graph (:func:`clear_caches`).
    """
    key = (id(w), w._version, w.data_ptr())
    z = _ZERO_CACHE.get(key)
    if z is None:
        with torch.no_grad():
            z = _ZERO_CACHE[key] = _Zeros(w.detach())
    return z.transposed() if transposed else z


def zero_rows(
    w: torch.Tensor, dead: np.ndarray | None = None, *, transposed: bool = False
) -> np.ndarray:
    """Per output index (dim 0 of ``w``, dim 1 when ``transposed``): True where every input
    it reads has zero weight or is marked in ``dead`` (a bool per input, or per output and
    input)."""
    return _kernel_zeros(w, transposed).rows(dead)


def zero_cols(
    w: torch.Tensor,
    alive: np.ndarray | None = None,
    *,
    groups: int = 1,
    transposed: bool = False,
) -> np.ndarray:
    """Per input index (dim 1 of ``w``, dim 0 when ``transposed``; for ``groups`` > 1 per
    group and in-group input, ``[groups * dim1]``): True where every output of its group that
    is ``alive`` (all when None) has zero weight on it."""
    return _kernel_zeros(w, transposed).cols(alive, groups)


def clear_caches() -> None:
    _ZERO_CACHE.clear()


def _tuple(v: Any) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,)


def add_bias(m: nn.Module, delta: torch.Tensor) -> None:
    """``m.bias += delta``, as a new tensor (the old one may be the user's own: slim shares
    the input model's parameters until it has cut them)."""
    if m.bias is None:
        m.bias = nn.Parameter(delta.clone().to(m.weight.device))
    else:
        replace_tensor(m, "bias", m.bias.detach() + delta.to(m.bias))


def replace_tensor(m: nn.Module, name: str, value: torch.Tensor) -> None:
    """Set ``m.name`` to ``value`` as what it is: a parameter, a buffer or a plain tensor."""
    old = getattr(m, name)
    if isinstance(old, nn.Parameter):
        value = nn.Parameter(value, requires_grad=old.requires_grad)
    if name in m._buffers:
        m._buffers[name] = value
    else:
        setattr(m, name, value)


def copy_module(m: nn.Module) -> nn.Module:
    """The module with in-place disabled, so a constant vector can be pushed through it."""
    if getattr(m, "inplace", False):
        m = copy.copy(m)
        m.inplace = False
    return m


def _shape_args(node: fx.Node, start: int) -> tuple[list[Any], bool]:
    args = list(node.args[start:])
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        return list(args[0]), True
    return args, False


class FunctionalWeights:
    """The tensors of a functional call (``F.conv2d(x, w, b)``, ``F.batch_norm(x, mean, var,
    w, b)``, ...) seen as a module's would be: ``view.weight`` is read through its ``get_attr``
    node when used (ResizePass replaces the tensors), ``None`` when absent. ``known`` is False
    when one of them is computed in the graph (a standardised weight): nothing is known of its
    values then, so no constant is derived and nothing is folded into it."""

    def __init__(self, gm: nn.Module, weight: Any = None, bias: Any = None, **more: Any) -> None:
        tensors = {"weight": weight, "bias": bias}
        attrs = {k: v for k, v in more.items() if not isinstance(v, fx.Node) and v is not None}
        tensors.update({k: v for k, v in more.items() if k not in attrs})
        self._gm = gm
        self.tensors = tensors
        self.nodes = (weight, bias)
        self.known = all(v is None or _attr_target(v) is not None for v in tensors.values())
        self.writable = False  # a fold would need a bias the graph reads: never created
        for k, v in attrs.items():
            setattr(self, k, v)

    def __getattr__(self, name: str) -> Any:
        tensors = self.__dict__.get("tensors", {})
        if name not in tensors:
            raise AttributeError(name)
        target = _attr_target(tensors[name])
        return None if target is None else attr_tensor(self._gm, target)


def _attr_target(node: Any) -> str | None:
    if isinstance(node, fx.Node) and node.op == "get_attr":
        return str(node.target)
    return None


def attr_tensor(gm: nn.Module, target: str) -> torch.Tensor:
    """The tensor ``gm.<target>`` (a dotted path)."""
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def set_arg(node: fx.Node, index: int, name: str, value: Any) -> None:
    """Set argument ``index`` (keyword ``name``) of ``node``, wherever it was passed."""
    if len(node.args) > index:
        args = list(node.args)
        args[index] = value
        node.args = tuple(args)
    else:
        node.kwargs = {**node.kwargs, name: value}
