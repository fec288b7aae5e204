"""One translation per ONNX op: the torch calls that compute what the op computes.

A translation reads its inputs from the :class:`~surgeon.onnxin.importer.Importer` (a graph
tensor, a constant array or a shape value), emits fx nodes and returns one value per output.
It raises :class:`~surgeon.onnxin.importer.Unsupported` for a form it does not express (the
node is then kept opaque). Opsets 11 to 21 are read: where an attribute became an input
(``Split``'s sizes, ``Squeeze`` / ``Unsqueeze``'s axes, the ``Reduce*`` axes) both are taken.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import torch
import torch.fx as fx
import torch.nn.functional as F
from onnx import helper
from torch import nn

from surgeon.onnxin.importer import INT64_MAX, Dims, Importer, Unsupported

__all__ = ["OPS"]

OPS: dict[str, Callable[[Importer, onnx.NodeProto], list[Any]]] = {}

_DTYPES = {
    onnx.TensorProto.FLOAT: torch.float32,
    onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.FLOAT16: torch.float16,
    onnx.TensorProto.BFLOAT16: torch.bfloat16,
    onnx.TensorProto.INT64: torch.int64,
    onnx.TensorProto.INT32: torch.int32,
    onnx.TensorProto.INT16: torch.int16,
    onnx.TensorProto.INT8: torch.int8,
    onnx.TensorProto.UINT8: torch.uint8,
    onnx.TensorProto.BOOL: torch.bool,
}


def torch_dtype(onnx_type: int) -> torch.dtype:
    if onnx_type not in _DTYPES:
        raise Unsupported(f"element type {onnx.TensorProto.DataType.Name(onnx_type)}")
    return _DTYPES[onnx_type]


def op(*names: str) -> Callable[[Callable[..., list[Any]]], Callable[..., list[Any]]]:
    def register(f: Callable[..., list[Any]]) -> Callable[..., list[Any]]:
        for name in names:
            OPS[name] = f
        return f

    return register


def attrs(n: onnx.NodeProto) -> dict[str, Any]:
    out = {}
    for a in n.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        out[a.name] = v
    return out


def _input(n: onnx.NodeProto, i: int) -> str:
    return n.input[i] if len(n.input) > i else ""


def _rank(imp: Importer, name: str) -> int:
    return len(imp.shape(name))


def _to_tensor(t: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(t))


def _is_node(v: Any) -> bool:
    return isinstance(v, fx.Node)


# ---- shape values -----------------------------------------------------------------------


def _dims_binary(imp: Importer, a: Dims, b: Dims, fn: Callable[[Any, Any], Any]) -> Dims:
    n = max(len(a.items), len(b.items))
    xs = a.items * n if len(a.items) == 1 else a.items
    ys = b.items * n if len(b.items) == 1 else b.items
    if len(xs) != len(ys):
        raise Unsupported("shape values of different lengths")
    floating = a.floating or b.floating
    if fn is torch.pow:
        fn = operator.pow
    if fn is operator.floordiv and floating:
        fn = operator.truediv
    items = []
    for x, y in zip(xs, ys, strict=True):
        if _is_node(x) or _is_node(y):
            items.append(imp.fn(fn, x, y))
        else:
            items.append(fn(x, y))
    boolean = fn in (operator.eq, operator.lt, operator.gt, operator.le, operator.ge)
    if not floating and not boolean:
        items = [i if _is_node(i) else int(i) for i in items]
    return Dims(items, scalar=a.scalar and b.scalar, floating=floating, boolean=boolean)


def _dims_value(imp: Importer, name: str, limit: int | None = 8) -> bool:
    """Whether input ``name`` is a shape value, or a known 1-D array of at most ``limit``
    numbers (None: any length), and no graph tensor."""
    v = imp.lookup(name)
    return isinstance(v, Dims) or (
        isinstance(v, np.ndarray)
        and v.ndim <= 1
        and (limit is None or v.size <= limit)
        and v.dtype.kind in "iufb"
    )


# ---- weighted layers ----------------------------------------------------------------------


def _pads(
    imp: Importer,
    n: onnx.NodeProto,
    x: fx.Node,
    k: int,
    a: dict[str, Any],
    kernel: list[int],
    value: float = 0.0,
) -> tuple[fx.Node, list[int]]:
    """ONNX pads -> a symmetric padding for the torch op, with an ``F.pad`` before it where
    the begin and end pads differ (or ``auto_pad`` asks for SAME)."""
    pads = list(a.get("pads", [0] * (2 * k)))
    auto = a.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        return _same_pads(imp, x, k, a, kernel, upper=auto == "SAME_UPPER", value=value)
    elif auto == "VALID":
        pads = [0] * (2 * k)
    begin, end = pads[:k], pads[k:]
    if begin == end:
        return x, begin
    torch_pads: list[int] = []
    for d in reversed(range(k)):
        torch_pads += [begin[d], end[d]]
    return imp.fn(F.pad, x, torch_pads, value=value), [0] * k


def _same_pads(
    imp: Importer,
    x: fx.Node,
    k: int,
    a: dict[str, Any],
    kernel: list[int],
    *,
    upper: bool,
    value: float,
) -> tuple[fx.Node, list[int]]:
    """``auto_pad`` SAME: the output is ``ceil(in / stride)`` at every input size, so the pads
    follow the input's size (``x.size(d)``), not the example's. With ``in = q * stride + r``
    the total pad is ``span - stride + (stride - r) % stride`` (span: the dilated kernel),
    never negative where ``span >= stride``; a smaller kernel is kept opaque."""
    strides = list(a.get("strides", [1] * k))
    dil = list(a.get("dilations", [1] * k))
    torch_pads: list[Any] = []
    for d in reversed(range(k)):
        span, stride = (kernel[d] - 1) * dil[d] + 1, strides[d]
        if span < stride:
            raise Unsupported("SAME padding of a kernel smaller than its stride")
        if stride == 1:
            total: Any = span - 1
        else:
            size = imp.size(x, 2 + d)
            rest = imp.fn(
                operator.mod,
                imp.fn(operator.sub, stride, imp.fn(operator.mod, size, stride)),
                stride,
            )
            total = imp.fn(operator.add, rest, span - stride)
        if isinstance(total, int):
            small, big = total // 2, total - total // 2
        else:
            small = imp.fn(operator.floordiv, total, 2)
            big = imp.fn(operator.sub, total, small)
        torch_pads += [small, big] if upper else [big, small]
    if all(isinstance(p, int) and p == 0 for p in torch_pads):
        return x, [0] * k
    if all(isinstance(p, int) for p in torch_pads) and torch_pads[0::2] == torch_pads[1::2]:
        return x, list(reversed(torch_pads[0::2]))
    return imp.fn(F.pad, x, torch_pads, value=value), [0] * k


def _weight_and_bias(imp: Importer, n: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray | None]:
    """Inputs 1 and 2 (the bias optional) as constants."""
    w = imp.const(n.input[1])
    b_name = _input(n, 2)
    b = imp.const(b_name) if b_name else None
    if w is None or (b_name and b is None):
        raise Unsupported("a weight computed at run time")
    return w, b


def _bias_after(
    imp: Importer, n: onnx.NodeProto, width: int, dim: int
) -> tuple[np.ndarray, onnx.NodeProto] | None:
    """The ``Add`` that alone reads ``n``'s output, of a constant with one value per output
    channel along ``dim`` (1 for a conv, -1 for a Linear): a bias written as its own op."""
    out = n.output[0]
    users = imp.consumers.get(out, [])
    if len(users) != 1 or out in imp.graph_outputs or users[0].op_type != "Add":
        return None
    add = users[0]
    other = add.input[1] if add.input[0] == out else add.input[0]
    if other not in imp.env and other not in imp.inits:  # computed later: no constant
        return None
    c = imp.const(other)
    rank = len(imp.shape(n.input[0]))  # the output's rank too (a conv, a Linear)
    if c is None or c.dtype.kind != "f" or c.size != width or c.ndim > rank:
        return None
    shape = (1,) * (rank - c.ndim) + tuple(c.shape)  # as it broadcasts
    if shape[dim] != width:
        return None
    return c.reshape(-1), add


def _weighted(
    imp: Importer,
    n: onnx.NodeProto,
    m: nn.Module,
    x: fx.Node,
    w: np.ndarray,
    b: np.ndarray | None,
    dim: int,
) -> fx.Node:
    """``m`` with the weight and bias, and a bias added after it folded in; called on ``x``."""
    m.weight = nn.Parameter(_to_tensor(np.ascontiguousarray(w)))
    fused = _bias_after(imp, n, w.shape[0], dim)
    if fused is not None:
        extra, add = fused
        b = extra.astype(w.dtype) if b is None else b + extra.astype(b.dtype)
        imp.skip.add(id(add))
    if b is not None:
        m.bias = nn.Parameter(_to_tensor(b.reshape(-1)))
    node = imp.module(n, m, x, weight=n.input[1])
    if fused is not None:
        imp.env[fused[1].output[0]] = node
    return node


@op("Conv")
def conv(imp: Importer, n: onnx.NodeProto) -> list[Any]:
    a = attrs(n)
    w, b = _weight_and_bias(imp, n)
    k = w.ndim - 2
    if k not in (1, 2, 3):
        raise Unsupported(f"a {k}-d convolution")
    x, padding = _pads(imp, n, imp.tensor(n.input[0]), k, a, list(w.shape[2:]))
    groups = int(a.get("group", 1))
    cls = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[k - 1]
    with torch.device("meta"):
        m = cls(
            w.shape[1] * groups,
            w.shape[0],
            tuple(w.shape[2:]),
            stride=tuple(a.get("strides", [1] * k)),
            padding=tuple(padding),
            dilation=tuple(a.get("dilations", [1] * k)),
            groups=groups,
            bias=True,  # replaced or removed by _weighted
        )
    m.bias = None
    return [_weighted(imp, n, m, x, w, b, dim=1)]


@op("ConvTranspose")
def conv_transpose(imp: Importer, n: onnx.NodeProto) -> list[Any]:
    a = attrs(n)
    w, b = _weight_and_bias(imp, n)
    k = w.ndim - 2
    if k not in (1, 2, 3) or "output_shape" in a or a.get("auto_pad", "NOTSET") != "NOTSET":
        raise Unsupported("an output_shape / auto_pad form")
    pads = list(a.get("pads", [0] * (2 * k)))
    if pads[:k] != pads[k:]:
        raise Unsupported("asymmetric pads")
    groups = int(a.get("group", 1))
    cls = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)[k - 1]
    with torch.device("meta"):
        m = cls(
            w.shape[0],
            w.shape[1] * groups,
            tuple(w.shape[2:]),
            stride=tuple(a.get("strides", [1] * k)),
            padding=tuple(pads[:k]),
            output_padding=tuple(a.get("output_padding", [0] * k)),
            dilation=tuple(a.get("dilations", [1] * k)),
            groups=groups,
            bias=True,
        )
    m.bias = None
    m.weight = nn.Parameter(_to_tensor(w))
    if b is not None:
        m.bias = nn.Parameter(_to_tensor(b))
    return [imp.module(n, m, imp.tensor(n.input[0]), weight=n.input[1])]


def _linear(
    imp: Importer,
    n: onnx.NodeProto,
    x: fx.Node,
    weight: np.ndarray,
    bias: np.ndarray | None,
) -> fx.Node:
    """An ``nn.Linear`` of ``weight`` ``[out, in]`` (a bias ``Add`` after it folded in)."""
    with torch.device("meta"):
        m = nn.Linear(weight.shape[1], weight.shape[0], bias=True)
    m.bias = None
    return _weighted(imp, n, m, x, weight, bias, dim=-1)


@op("Gemm")
def gemm(imp: Importer, n: onnx.NodeProto) -> list[Any]:
    a = attrs(n)
    b, c = _weight_and_bias(imp, n)
    if a.get("transA", 0):
        raise Unsupported("a transposed input")
    w = (b if a.get("transB", 0) else b.T) * a.get("alpha", 1.0)
    bias = None
    if c is not None:
        if c.size not in (1, w.shape[0]):
            raise Unsupported("a bias that is not per output")
        bias = np.broadcast_to(c * a.get("beta", 1.0), (w.shape[0],))
    return [
        _linear(
            imp,
            n,
            imp.tensor(n.input[0]),
            w.astype(b.dtype),
            None if bias is None else np.array(bias, dtype=b.dtype),
        )  # fmt: skip
    ]


@op("MatMul")
def matmul(imp: Importer, n: onnx.NodeProto) -> list[Any]:
    b = imp.const(n.input[1])
    if b is not None and b.ndim == 2 and imp.const(n.input[0]) is None:
        return [_linear(imp, n, imp.tensor(n.input[0]), b.T, None)]
    return [imp.fn(torch.matmul, imp.tensor(n.input[0]), imp.tensor(n.input[1]))]


@op("Gather")
def gather(imp: Importer, n: onnx.NodeProto) -> list[Any]:
    axis = int(attrs(n).get("axis", 0))
    data, idx_name = n.input[0], n.input[1]
    if isinstance(imp.lookup(data), Dims) and imp.const(idx_name) is not None:
        d = imp.dims(data)
        idx = imp.const(idx_name)
        items = [d.items[int(i)] for i in idx.reshape(-1)]
        return [Dims(items, scalar=idx.ndim == 0)]
    table = imp.const(data)
    idx = imp.const(idx_name)
    if (
        table is not None
        and idx is None
        and axis == 0
        and table.ndim == 2
        and table.dtype.kind == "f"
    ):
        with torch.device("meta"):
            m = nn.Embedding(table.shape[0], table.shape[1])
        m.weight = nn.Parameter(_to_tensor(table))
        return [imp.module(n, m, imp.tensor(idx_name), weight=data)]
    x = imp.tensor(data)
    rank = len(imp.shape(data))
    axis %= rank
    if idx is not None and idx.ndim == 0:
        key = (slice(None),) * axis + (int(idx),)
        return [imp.fn(operator.getitem, x, key)]
    if idx is not None and idx.ndim == 1 and len(idx):
        # a run of indices of one sign is a slice at any length ([-2, -1] is x[..., -2:]);
        # never normalised by the example's length, which a free dim does not keep
        flat = [int(i) for i in idx]
        run = flat == list(range(flat[0], flat[0] + len(flat)))
        if run and (flat[0] >= 0 or flat[-1] < 0):
            end = flat[-1] + 1
            key = (slice(None),) * axis + (slice(flat[0], end if end != 0 else None),)
            return [imp.fn(operator.getitem, x, key)]
        if all(i >= 0 for i in flat):
            return [imp.fn(torch.index_select, x, axis, imp.tensor(idx_name))]
    # numpy's take, as ONNX defines Gather (negative indices count from the end): x[:, ...,
    # index] with the index's dims in place
    return [imp.fn(operator.getitem, x, (slice(None),) * axis + (imp.tensor(idx_name),))]


@op("GatherElements")
def gather_elements(imp: Importer, n: onnx.NodeProto) -> list[Any]:
    axis = int(attrs(n).get("axis", 0))
    return [imp.fn(torch.gather, imp.tensor(n.input[0]), axis, imp.tensor(n.input[1]))]


@op("BatchNormalization")
def batch_norm(imp: Importer, n: onnx.NodeProto) -> list[Any]:
    a = attrs(n)
    if len([o for o in n.output if o]) > 1:
        raise Unsupported("the training outputs")
    scale, bias, mean, var = (imp.const(n.input[i]) for i in range(1, 5))
    if any(t is None for t in (scale, bias, mean, var)):
        raise Unsupported("statistics computed at run time")
    rank = _rank(imp, n.input[0])
    cls = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}.get(rank)
    if cls is None:
        raise Unsupported(f"a rank-{rank} input")
    m = cls(
        scale.shape[0],
        eps=float(a.get("epsilon", 1e-5)),
        momentum=float(1 - a.get("momentum", 0.9)),
    )
    m.weight = nn.Parameter(_to_tensor(scale))
    m.bias = nn.Parameter(_to_tensor(bias))
    m.running_mean = _to_tensor(mean)
    m.running_var = _to_tensor(var)
    return [imp.module(n, m, imp.tensor(n.input[0]), weight=n.input[1])]


@op("LayerNormalization")
def layer_norm(imp: Importer, n: onnx.NodeProto) -> list[Any]:
    a = attrs(n)
    if len([o for o in n.output if o]) > 1:
        raise Unsupported("the mean / inverse deviation outputs")
    shape = imp.shape(n.input[0])
    axis = int(a.get("axis", -1)) % len(shape)
    normalized = tuple(shape[axis:])
    scale = imp.const(n.input[1])
    b_name = _input(n, 2)
    bias = imp.const(b_name) if b_name else None
    if scale is None or (b_name and bias is None) or tuple(scale.shape) != normalized:
        raise Unsupported("a scale that is not one per normalised element")
    m = nn.LayerNorm(normalized, eps=float(a.get("epsilon", 1e-5)), bias=bias is not None)
    m.weight = nn.Parameter(_to_tensor(scale))
    if bias is not None:
        m.bias = nn.Parameter(_to_tensor(bias))
    return [imp.module(n, m.to(m.weight.dtype), imp.tensor(n.input[0]), weight=n.input[1])]


@op("InstanceNormalization")
def instance_norm(imp: Importer, n: onnx.NodeProto) -> list[Any]:
    scale, bias = imp.const(n.input[1]), imp.const(n.input[2])
    rank = _rank(imp, n.input[0])
    cls = {3: nn.InstanceNorm1d, 4: nn.InstanceNorm2d, 5: nn.InstanceNorm3d}.get(rank)
    if scale is None or bias is None or cls is None:
        raise Unsupported("a rank or scale it does not take")
    m = cls(scale.shape[0], eps=float(attrs(n).get("epsilon", 1e-5)), affine=True)
    m.weight = nn.Parameter(_to_tensor(scale))
    m.bias = nn.Parameter(_to_tensor(bias))
    return [imp.module(n, m, imp.tensor(n.input[0]), weight=n.input[1])]


@op("GroupNormalization")
def group_norm(imp: Importer, n: onnx.NodeProto) -> list[Any]:
    a = attrs(n)
    groups = int(a["num_groups"])
    scale, bias = imp.const(n.input[1]), imp.const(n.input[2])
    channels = imp.shape(n.input[0])[1]
    if scale is None or bias is None or scale.shape != (channels,):
        raise Unsupported("a scale per group (opset 18's form)")
    m = nn.GroupNorm(groups, channels, eps=float(a.get("epsilon", 1e-5)))
    m.weight = nn.Parameter(_to_tensor(scale))
    m.bias = nn.Parameter(_to_tensor(bias))
    return [imp.module(n, m, imp.tensor(n.input[0]), weight=n.input[1])]


@op("PRelu")
def prelu(imp: Importer, n: onnx.NodeProto) -> list[Any]:
    slope = imp.const(n.input[1])
    shape = imp.shape(n.input[0])
    if slope is None:
        raise Unsupported("a slope computed at run time")
    padded = (1,) * (len(shape) - slope.ndim) + tuple(slope.shape)
    if slope.size == 1:
        m = nn.PReLU(1)
    elif len(shape) >= 2 and padded[1] == shape[1] and slope.size == shape[1]:
        m = nn.PReLU(shape[1])
    else:
        raise Unsupported("a slope that is not one per channel")
    m.weight = nn.Parameter(_to_tensor(slope.reshape(-1)))
    return [imp.module(n, m, imp.tensor(n.input[0]), weight=n.input[1])]


# ---- elementwise --------------------------------------------------------------------------

_BINARY = {
    "Add": operator.add,
    "Sub": operator.sub,
    "Mul": operator.mul,
    "Pow": torch.pow,
}
_COMPARE = {
    "Equal": torch.eq,
    "Less": torch.lt,
    "LessOrEqual": torch.le,
    "Greater": torch.gt,
    "GreaterOrEqual": torch.ge,
    "And": torch.logical_and,
    "Or": torch.logical_or,
    "Xor": torch.logical_xor,
    "Max": torch.maximum,
    "Min": torch.minimum,
}


def _binary(imp: Importer, n: onnx.NodeProto, fn: Callable[[Any, Any], Any]) -> list[Any]:
    a_name, b_name = n.input[0], n.input[1]
    if (
        _dims_value(imp, a_name)
        and _dims_value(imp, b_name)
        and (isinstance(imp.lookup(a_name), Dims) or isinstance(imp.lookup(b_name), Dims))
    ):
        return [_dims_binary(imp, imp.dims(a_name), imp.dims(b_name), fn)]
    ra, rb = _rank(imp, a_name), _rank(imp, b_name)
    x = imp.operand(a_name, rb)
    y = imp.operand(b_name, ra)
    if not _is_node(x) and not _is_node(y):
        raise Unsupported("two constants")
    if fn is torch.pow and not _is_node(x):
        x = imp.tensor(a_name)
    return [imp.fn(fn, x, y)]


for _name, _fn in _BINARY.items():
    OPS[_name] = lambda imp, n, _fn=_fn: _binary(imp, n, _fn)


@op("Div")
def div(imp: Importer, n: onnx.NodeProto) -> list[Any]:
    a_name, b_name = n.input[0], n.input[1]
    if (
        _dims_value(imp, a_name)
        and _dims_value(imp, b_name)
        and (isinstance(imp.lookup(a_name), Dims) or isinstance(imp.lookup(b_name), Dims))
    ):
        return [_dims_binary(imp, imp.dims(a_name), imp.dims(b_name), operator.floordiv)]
    x = imp.value(imp.lookup(a_name))
    if isinstance(x, torch.Tensor) and not x.is_floating_point():
        return [imp.fn(torch.div, imp.tensor(a_name), imp.tensor(b_name), rounding_mode="trunc")]
    return _binary(imp, n, operator.truediv)


_DIMS_COMPARE = {"Equal": operator.eq, "Less": operator.lt, "Greater": operator.gt}


def _compare_dims(imp: Importer, n: onnx.NodeProto) -> Dims:
    """A comparison of shape values, item by item: a size never equals (nor is below) a
    negative constant, which is what the exporters' ``-1`` checks ask."""
    a, b = imp.dims(n.input[0]), imp.dims(n.input[1])
    fn = _DIMS_COMPARE[n.op_type]
    k = max(len(a.items), len(b.items))
    xs = a.items * k if len(a.items) == 1 else a.items
    ys = b.items * k if len(b.items) == 1 else b.items
    items = []
    for x, y in zip(xs, ys, strict=True):
        if not _is_node(x) and not _is_node(y):
            items.append(bool(fn(x, y)))
        elif n.op_type in ("Equal", "Less") and (_is_node(x) and isinstance(y, int) and y < 0):
            items.append(False)
        elif n.op_type == "Equal" and _is_node(y) and isinstance(x, int) and x < 0:
            items.append(False)
        else:
            raise Unsupported("a comparison of run-time sizes")
    return Dims(items, scalar=a.scalar and b.scalar, boolean=True)


@op(*_COMPARE)
def compare(imp: Importer, n: onnx.NodeProto) -> list[Any]:
    fn = _COMPARE[n.op_type]
    if (
        n.op_type in _DIMS_COMPARE
        and all(_dims_value(imp, i) for i in n.input)
        and any(isinstance(imp.lookup(i), Dims) for i in n.input)
    ):
        return [_compare_dims(imp, n)]
    if len(n.input) != 2:
        if n.op_type in ("Max", "Min") and len(n.input) > 2:
            out = imp.tensor(n.input[0])
            for name in n.input[1:]:
                out = imp.fn(fn, out, imp.tensor(name))
            return [out]
        raise Unsupported(f"{len(n.input)} inputs")
    if fn in (torch.maximum, torch.minimum):
        c = imp.const(n.input[1])
        if c is not None and c.size == 1:
            kw = "min" if fn is torch.maximum else "max"
            return [imp.fn(torch.clamp, imp.tensor(n.input[0]), **{kw: c.reshape(-1)[0].item()})]
    return [imp.fn(fn, imp.tensor(n.input[0]), imp.tensor(n.input[1]))]


@op("Sum", "Mean")
def variadic_sum(imp: Importer, n: onnx.NodeProto) -> list[Any]:
    out = imp.tensor(n.input[0])
    for name in n.input[1:]:
        out = imp.fn(operator.add, out, imp.tensor(name))
    if n.op_type == "Mean" and len(n.input) > 1:
        out = imp.fn(operator.truediv, out, float(len(n.input)))
    return [out]


@op("Where")
def where(imp: Importer, n: onnx.NodeProto) -> list[Any]:
    if all(_dims_value(imp, i) for i in n.input) and any(
        isinstance(imp.lookup(i), Dims) for i in n.input
    ):
        c, a, b = (imp.dims(i) for i in n.input)
        if not c.known():
            raise Unsupported("a choice by run-time sizes")
        k = max(len(c.items), len(a.items), len(b.items))
        pick = [
            (a.items if len(a.items) > 1 else a.items * k)[i]
            if (c.items if len(c.items) > 1 else c.items * k)[i]
            else (b.items if len(b.items) > 1 else b.items * k)[i]
            for i in range(k)
        ]
        return [Dims(pick, scalar=c.scalar and a.scalar and b.scalar)]
    cond, a, b = (imp.tensor(i) for i in n.input)
    return [imp.fn(torch.where, cond, a, b)]


@op("Not")
def logical_not(imp: Importer, n: onnx.NodeProto) -> list[Any]:
    return [imp.fn(torch.logical_not, imp.tensor(n.input[0]))]


_UNARY: dict[str, Callable[..., Any]] = {
    "Relu": F.relu,
    "Sigmoid": torch.sigmoid,
    "Tanh": torch.tanh,
    "Erf": torch.erf,
    "Sqrt": torch.sqrt,
    "Exp": torch.exp,
    "Log": torch.log,
    "Neg": torch.neg,
    "Abs": torch.abs,
    "Reciprocal": torch.reciprocal,
    "Sin": torch.sin,
    "Cos": torch.cos,
    "Floor": torch.floor,
    "Ceil": torch.ceil,
    "Round": torch.round,
    "Sign": torch.sign,
    "Softsign": F.softsign,
    "Softplus": F.softplus,
    "Mish": F.mish,
    "HardSwish": F.hardswish,
    "IsNaN": torch.isnan,
}


_DIMS_UNARY = {
    "Sqrt": (operator.pow, 0.5),
    "Reciprocal": (operator.truediv, None),
    "Neg": (operator.mul, -1),
}


def _unary(imp: Importer, n: onnx.NodeProto, fn: Callable[..., Any]) -> list[Any]:
    v = imp.lookup(n.input[0])
    if isinstance(v, Dims) and n.op_type in _DIMS_UNARY:
        f, arg = _DIMS_UNARY[n.op_type]
        items = []
        for i in v.items:
            args = (1.0, i) if arg is None else (i, arg)
            items.append(imp.fn(f, *args) if _is_node(i) else f(*args))
        return [Dims(items, scalar=v.scalar, floating=v.floating or n.op_type != "Neg")]
    return [imp.fn(fn, imp.tensor(n.input[0]))]


for _name, _fn in _UNARY.items():
    OPS[_name] = lambda imp, n, _fn=_fn: _unary(imp, n, _fn)


@op("LeakyRelu")
def leaky_relu(imp: Importer, n: onnx.NodeProto) -> list[Any]:
    return [imp.fn(F.leaky_relu, imp.tensor(n.input[0]), float(attrs(n).get("alpha", 0.01)))]


@op("Elu")
def elu(imp: Importer, n: onnx.NodeProto) -> list[Any]:
    return [imp.fn(F.elu, imp.tensor(n.input[0]), float(attrs(n).get("alpha", 1.0)))]


@op("Selu")
def selu(imp: Importer, n: onnx.NodeProto) -> list[Any]:
    a = attrs(n)
    if (
        abs(a.get("alpha", 1.6732632) - 1.6732632) > 1e-6
        or abs(a.get("gamma", 1.0507010) - 1.0507010) > 1e-6
    ):
        raise Unsupported("alpha / gamma other than torch's")
    return [imp.fn(F.selu, imp.tensor(n.input[0]))]


@op("Gelu")
def gelu(imp: Importer, n: onnx.NodeProto) -> list[Any]:
    return [imp.fn(F.gelu, imp.tensor(n.input[0]), approximate=attrs(n).get("approximate", "none"))]


@op("HardSigmoid")
def hard_sigmoid(imp: Importer, n: onnx.NodeProto) -> list[Any]:
    a = attrs(n)
    alpha, beta = float(a.get("alpha", 0.2)), float(a.get("beta", 0.5))
    x = imp.tensor(n.input[0])
    if abs(alpha - 1 / 6) < 1e-6 and abs(beta - 0.5) < 1e-6:
        return [imp.fn(F.hardsigmoid, x)]
    y = imp.fn(operator.add, imp.fn(operator.mul, x, alpha), beta)
    return [imp.fn(torch.clamp, y, 0.0, 1.0)]


@op("Clip")
def clip(imp: Importer, n: onnx.NodeProto) -> list[Any]:
    a = attrs(n)
    bounds: list[float | None] = [a.get("min"), a.get("max")]
    for k in (1, 2):
        name = _input(n, k)
        if name:
            c = imp.const(name)
            if c is None:
                raise Unsupported("bounds computed at run time")
            bounds[k - 1] = c.reshape(-1)[0].item()
    x = imp.tensor(n.input[0])
    if bounds[0] == 0 and bounds[1] == 6:
        return [imp.fn(F.relu6, x)]
    return [imp.fn(torch.clamp, x, bounds[0], bounds[1])]


@op("Softmax", "LogSoftmax")
def softmax(imp: Importer, n: onnx.NodeProto) -> list[Any]:
    rank = _rank(imp, n.input[0])
    axis = int(attrs(n).get("axis", -1 if imp.opset >= 13 else 1)) % rank
    if imp.opset < 13 and axis != rank - 1:
        raise Unsupported("opset < 13's flattening softmax over several dims")
    fn = F.softmax if n.op_type == "Softmax" else F.log_softmax
    return [imp.fn(fn, imp.tensor(n.input[0]), axis)]


@op("Cast", "CastLike")
def cast(imp: Importer, n: onnx.NodeProto) -> list[Any]:
    v = imp.lookup(n.input[0])
    if n.op_type == "Cast":
        dtype = torch_dtype(int(attrs(n)["to"]))
    else:
        dtype = imp.value(imp.lookup(n.input[1])).dtype
        dtype = (
            dtype if isinstance(dtype, torch.dtype) else torch.from_numpy(np.zeros(1, dtype)).dtype
        )
    if isinstance(v, Dims):
        if dtype in (torch.int64, torch.int32) and not v.floating:
            return [Dims(list(v.items), scalar=v.scalar)]
        if dtype in (torch.float32, torch.float64, torch.float16) and not v.boolean:
            items = [imp.fn(operator.mul, i, 1.0) if _is_node(i) else float(i) for i in v.items]
            return [Dims(items, scalar=v.scalar, floating=True)]
        if v.known():
            return [v.array().astype(torch.empty(0, dtype=dtype).numpy().dtype)]
        raise Unsupported("a run-time shape cast to another type")
    return [imp.method("to", imp.tensor(n.input[0]), dtype)]


@op("Identity", "Dropout")
def identity(imp: Importer, n: onnx.NodeProto) -> list[Any]:
    if len([o for o in n.output if o]) > 1 and n.output[1] in imp.consumers:
        raise Unsupported("the dropout mask is read")
    return [imp.lookup(n.input[0])]


# ---- pooling and reductions ---------------------------------------------------------------


def _pool(imp: Importer, n: onnx.NodeProto, kind: str) -> list[Any]:
    a = attrs(n)
    kernel = list(a["kernel_shape"])
    k = len(kernel)
    if len([o for o in n.output if o]) > 1:
        raise Unsupported("the indices output")
    x = imp.tensor(n.input[0])
    pads = list(a.get("pads", [0] * 2 * k))
    auto = a.get("auto_pad", "NOTSET")
    strides = list(a.get("strides", [1] * k))
    ceil = bool(a.get("ceil_mode", 0))
    if auto != "NOTSET" or pads[:k] != pads[k:]:
        if kind == "avg" and not a.get("count_include_pad", 0):
            raise Unsupported("asymmetric pads that the average does not count")
        x, padding = _pads(imp, n, x, k, a, kernel, value=float("-inf") if kind == "max" else 0.0)
        pads = padding * 2
    fn = {
        ("max", 1): F.max_pool1d,
        ("max", 2): F.max_pool2d,
        ("max", 3): F.max_pool3d,
        ("avg", 1): F.avg_pool1d,
        ("avg", 2): F.avg_pool2d,
        ("avg", 3): F.avg_pool3d,
    }[(kind, k)]
    kwargs: dict[str, Any] = {"stride": strides, "padding": pads[:k], "ceil_mode": ceil}
    if kind == "max":
        dil = list(a.get("dilations", [1] * k))
        if dil != [1] * k:
            kwargs["dilation"] = dil
    else:
        kwargs["count_include_pad"] = bool(a.get("count_include_pad", 0))
        if a.get("dilations", [1] * k) != [1] * k:
            raise Unsupported("a dilated average")
    return [imp.fn(fn, x, kernel, **kwargs)]


@op("MaxPool")
def max_pool(imp: Importer, n: onnx.NodeProto) -> list[Any]:
    return _pool(imp, n, "max")


@op("AveragePool")
def avg_pool(imp: Importer, n: onnx.NodeProto) -> list[Any]:
    return _pool(imp, n, "avg")


@op("GlobalAveragePool", "GlobalMaxPool")
def global_pool(imp: Importer, n: onnx.NodeProto) -> list[Any]:
    dims = list(range(2, _rank(imp, n.input[0])))
    fn = torch.mean if n.op_type == "GlobalAveragePool" else torch.amax
    return [imp.fn(fn, imp.tensor(n.input[0]), dims, keepdim=True)]


_REDUCE = {
    "ReduceMean": torch.mean,
    "ReduceSum": torch.sum,
    "ReduceMax": torch.amax,
    "ReduceMin": torch.amin,
}


@op(*_REDUCE)
def reduce(imp: Importer, n: onnx.NodeProto) -> list[Any]:
    a = attrs(n)
    axes = a.get("axes")
    if axes is None and _input(n, 1):
        c = imp.const(n.input[1])
        if c is None:
            raise Unsupported("axes computed at run time")
        axes = [int(i) for i in c.reshape(-1)]
    rank = _rank(imp, n.input[0])
    keep = bool(a.get("keepdims", 1))
    x = imp.tensor(n.input[0])
    if not axes:
        if a.get("noop_with_empty_axes", 0):
            return [x]
        axes = list(range(rank))
    axes = sorted(int(i) % rank for i in axes)
    return [imp.fn(_REDUCE[n.op_type], x, axes, keepdim=keep)]


@op("ArgMax", "ArgMin")
def argmax(imp: Importer, n: onnx.NodeProto) -> list[Any]:
    a = attrs(n)
    if a.get("select_last_index", 0):
        raise Unsupported("select_last_index")
    fn = torch.argmax if n.op_type == "ArgMax" else torch.argmin
    return [
        imp.fn(
            fn, imp.tensor(n.input[0]), int(a.get("axis", 0)), keepdim=bool(a.get("keepdims", 1))
        )
    ]


# ---- shapes -------------------------------------------------------------------------------


@op("Shape")
def shape(imp: Importer, n: onnx.NodeProto) -> list[Any]:
    a = attrs(n)
    v = imp.lookup(n.input[0])
    rank = len(imp.shape(n.input[0]))
    start = int(a.get("start", 0))
    end = int(a.get("end", rank))
    start, end = (
        max(0, start + rank if start < 0 else start),
        min(rank, end + rank if end < 0 else end),
    )
    if not isinstance(v, fx.Node):  # the shape of a constant or of a shape value: known
        return [np.asarray(imp.shape(n.input[0])[start:end], dtype=np.int64)]
    return [Dims([imp.size(v, d) for d in range(start, end)])]


@op("Size")
def size(imp: Importer, n: onnx.NodeProto) -> list[Any]:
    return [Dims([imp.method("numel", imp.tensor(n.input[0]))], scalar=True)]


def _reshape_items(imp: Importer, x: fx.Node, d: Dims, allow_zero: bool) -> list[Any]:
    items = list(d.items)
    if not allow_zero:
        items = [
            imp.size(x, i) if (isinstance(v, int) and v == 0) else v for i, v in enumerate(items)
        ]
    return items


@op("Reshape")
def reshape(imp: Importer, n: onnx.NodeProto) -> list[Any]:
    v = imp.lookup(n.input[0])
    d = imp.dims(n.input[1])
    if isinstance(v, Dims):
        if d.items in ([1], [-1]):
            return [Dims(list(v.items))]
        if d.items == [] and len(v.items) == 1:
            return [Dims(list(v.items), scalar=True)]
        raise Unsupported("a reshape of a shape value")
    x = imp.tensor(n.input[0])
    items = _reshape_items(imp, x, d, bool(attrs(n).get("allowzero", 0)))
    return [imp.method("reshape", x, *items) if items else imp.method("reshape", x, ())]


@op("Flatten")
def flatten(imp: Importer, n: onnx.NodeProto) -> list[Any]:
    x = imp.tensor(n.input[0])
    rank = _rank(imp, n.input[0])
    axis = int(attrs(n).get("axis", 1)) % (rank + 1) if rank else 0
    if axis == 0:
        return [imp.method("reshape", imp.fn(torch.flatten, x), 1, -1)]
    if axis == 1:
        return [imp.fn(torch.flatten, x, 1)]
    if axis == rank:
        return [imp.fn(torch.unsqueeze, imp.fn(torch.flatten, x), -1)]
    return [imp.fn(torch.flatten, imp.fn(torch.flatten, x, 0, axis - 1), 1)]


@op("Transpose")
def transpose(imp: Importer, n: onnx.NodeProto) -> list[Any]:
    rank = _rank(imp, n.input[0])
    perm = list(attrs(n).get("perm", list(reversed(range(rank)))))
    return [imp.method("permute", imp.tensor(n.input[0]), *perm)]


@op("Concat")
def concat(imp: Importer, n: onnx.NodeProto) -> list[Any]:
    axis = int(attrs(n)["axis"])
    if all(_dims_value(imp, i, limit=None) for i in n.input):
        items: list[Any] = []
        for name in n.input:
            items += imp.dims(name).items
        return [Dims(items)]
    tensors = [imp.tensor(i) for i in n.input if i]
    rank = len(imp.shape(n.input[0]))
    # an input empty in the example (a key / value cache of length 0) stays: it is free
    return [imp.fn(torch.cat, tensors, axis % rank)]


@op("Split")
def split(imp: Importer, n: onnx.NodeProto) -> list[Any]:
    a = attrs(n)
    rank = _rank(imp, n.input[0])
    axis = int(a.get("axis", 0)) % rank
    outs = len(n.output)
    sizes = a.get("split")
    if sizes is None and _input(n, 1):
        c = imp.const(n.input[1])
        if c is None:
            raise Unsupported("sizes computed at run time")
        sizes = [int(i) for i in c]
    length = imp.shape(n.input[0])[axis]
    x = imp.tensor(n.input[0])
    if sizes is None:
        if length % outs == 0:  # equal parts at any length: chunk, as the source wrote it
            parts = imp.fn(torch.chunk, x, outs, axis)
            return [imp.fn(operator.getitem, parts, j) for j in range(outs)]
        per = -(-length // outs)
        sizes = [per] * (outs - 1) + [length - per * (outs - 1)]
    parts = imp.fn(torch.split, x, list(sizes), axis)
    return [imp.fn(operator.getitem, parts, j) for j in range(outs)]


def _slice_args(imp: Importer, n: onnx.NodeProto, rank: int) -> list[tuple[int, Any, Any, int]]:
    a = attrs(n)
    if imp.opset < 10 or "starts" in a:
        starts, ends = a["starts"], a["ends"]
        axes = a.get("axes", list(range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts = imp.dims(n.input[1]).items
        ends = imp.dims(n.input[2]).items
        axes_c = imp.const(n.input[3]) if _input(n, 3) else None
        if _input(n, 3) and axes_c is None:
            raise Unsupported("axes computed at run time")
        axes = [int(i) for i in axes_c] if axes_c is not None else list(range(len(starts)))
        steps_c = imp.const(n.input[4]) if _input(n, 4) else None
        if _input(n, 4) and steps_c is None:
            raise Unsupported("steps computed at run time")
        steps = [int(i) for i in steps_c] if steps_c is not None else [1] * len(starts)
    out = []
    for ax, s, e, st in zip(axes, starts, ends, steps, strict=True):
        if isinstance(e, int) and e >= INT64_MAX // 2:
            e = None
        if isinstance(e, int) and e <= -(INT64_MAX // 2):
            raise Unsupported("a reversed slice to the start")
        out.append((int(ax) % rank, s, e, st))
    return out


@op("Slice")
def slice_(imp: Importer, n: onnx.NodeProto) -> list[Any]:
    v = imp.lookup(n.input[0])
    if isinstance(v, Dims):
        ((ax, s, e, st),) = _slice_args(imp, n, 1)
        if not all(isinstance(i, int) or i is None for i in (s, e)):
            raise Unsupported("a shape sliced at run-time bounds")
        return [Dims(v.items[slice(s, e, st)])]
    rank = _rank(imp, n.input[0])
    key: list[Any] = [slice(None)] * rank
    for ax, s, e, st in _slice_args(imp, n, rank):
        if st < 0:
            raise Unsupported("a negative step")
        key[ax] = slice(s, e, st if st != 1 else None)
    while key and key[-1] == slice(None):
        key.pop()
    x = imp.tensor(n.input[0])
    if not key:
        return [x]
    return [imp.fn(operator.getitem, x, tuple(key))]


def _axes(imp: Importer, n: onnx.NodeProto) -> list[int] | None:
    a = attrs(n)
    if "axes" in a:
        return [int(i) for i in a["axes"]]
    if _input(n, 1):
        c = imp.const(n.input[1])
        if c is None:
            raise Unsupported("axes computed at run time")
        return [int(i) for i in c.reshape(-1)]
    return None


@op("Squeeze")
def squeeze(imp: Importer, n: onnx.NodeProto) -> list[Any]:
    axes = _axes(imp, n)
    v = imp.lookup(n.input[0])
    if isinstance(v, Dims):
        if len(v.items) == 1:
            return [Dims(list(v.items), scalar=True)]
        raise Unsupported("a squeeze of a shape value")
    x = imp.tensor(n.input[0])
    rank = _rank(imp, n.input[0])
    if axes is None:
        return [imp.method("squeeze", x)]
    axes = sorted(i % rank for i in axes)
    return [
        imp.method("squeeze", x, tuple(axes))
        if len(axes) > 1
        else imp.method("squeeze", x, axes[0])
    ]


@op("Unsqueeze")
def unsqueeze(imp: Importer, n: onnx.NodeProto) -> list[Any]:
    axes = _axes(imp, n) or []
    v = imp.lookup(n.input[0])
    if isinstance(v, Dims):
        if v.scalar and len(axes) == 1:
            return [Dims(list(v.items))]
        raise Unsupported("an unsqueeze of a shape value")
    x = imp.tensor(n.input[0])
    out_rank = _rank(imp, n.input[0]) + len(axes)
    for ax in sorted(i % out_rank for i in axes):
        x = imp.method("unsqueeze", x, ax)
    return [x]


@op("Expand")
def expand(imp: Importer, n: onnx.NodeProto) -> list[Any]:
    d = imp.dims(n.input[1])
    x = imp.tensor(n.input[0])
    xs = imp.shape(n.input[0])
    items = list(d.items)
    rank = max(len(items), len(xs))
    items = [1] * (rank - len(items)) + items
    new = rank - len(xs)
    out: list[Any] = []
    for i, want in enumerate(items):
        if i < new:
            out.append(want)
        elif isinstance(want, int) and (want == 1 or want == xs[i - new]):
            out.append(-1)  # x's own size: a channel dim stays free to change
        else:
            out.append(want)
    return [imp.method("expand", x, *out)]


@op("Tile")
def tile(imp: Importer, n: onnx.NodeProto) -> list[Any]:
    reps = imp.dims(n.input[1])
    return [imp.method("repeat", imp.tensor(n.input[0]), *reps.items)]


@op("ConstantOfShape")
def constant_of_shape(imp: Importer, n: onnx.NodeProto) -> list[Any]:
    a = attrs(n)
    value = onnx.numpy_helper.to_array(a["value"]) if "value" in a else np.zeros(1, np.float32)
    d = imp.dims(n.input[0])
    dtype = torch.from_numpy(value.reshape(-1)[:1].copy()).dtype
    return [imp.fn(torch.full, list(d.items), value.reshape(-1)[0].item(), dtype=dtype)]


@op("Range")
def range_(imp: Importer, n: onnx.NodeProto) -> list[Any]:
    vals = []
    for name in n.input:
        v = imp.lookup(name)
        if isinstance(v, Dims) and v.scalar:
            vals.append(v.items[0])
        elif isinstance(v, np.ndarray) and v.size == 1:
            vals.append(v.reshape(-1)[0].item())
        else:
            raise Unsupported("bounds that are tensors")
    dtype = torch.float32 if any(isinstance(v, float) for v in vals) else torch.int64
    return [imp.fn(torch.arange, *vals, dtype=dtype)]


@op("Constant")
def constant(imp: Importer, n: onnx.NodeProto) -> list[Any]:
    a = n.attribute[0]
    v = helper.get_attribute_value(a)
    if a.name == "value":
        return [onnx.numpy_helper.to_array(v)]
    if a.name in ("value_float", "value_int"):
        return [np.asarray(v, dtype=np.float32 if a.name == "value_float" else np.int64)]
    if a.name in ("value_floats", "value_ints"):
        return [np.asarray(v, dtype=np.float32 if a.name == "value_floats" else np.int64)]
    raise Unsupported(f"a {a.name} constant")


# ---- resampling, padding, attention building blocks -----------------------------------------


@op("Resize", "Upsample")
def resize(imp: Importer, n: onnx.NodeProto) -> list[Any]:
    a = attrs(n)
    mode = a.get("mode", "nearest")
    coord = a.get(
        "coordinate_transformation_mode", "half_pixel" if n.op_type == "Resize" else "asymmetric"
    )
    rank = _rank(imp, n.input[0])
    k = rank - 2
    x = imp.tensor(n.input[0])
    scales_name = _input(n, 2) if n.op_type == "Resize" else _input(n, 1)
    sizes_name = _input(n, 3)
    kwargs: dict[str, Any] = {}
    if sizes_name:
        d = imp.dims(sizes_name)
        if len(d.items) != rank:
            raise Unsupported("sizes for some axes only")
        kwargs["size"] = d.items[2:]
    elif scales_name:
        s = imp.const(scales_name)
        if s is None or s.size != rank or list(s[:2]) != [1, 1]:
            raise Unsupported("scales of the batch or channel dims, or computed at run time")
        kwargs["scale_factor"] = [float(f) for f in s[2:]]
    else:
        raise Unsupported("neither scales nor sizes")
    if mode == "nearest":
        # torch's nearest: source index floor(dst * in / out), the ONNX asymmetric + floor
        # (Upsample, before Resize, has no other form)
        rounding = a.get("nearest_mode", "round_prefer_floor")
        if n.op_type == "Resize" and (coord != "asymmetric" or rounding != "floor"):
            raise Unsupported(f"nearest with {coord} / {rounding}")
        return [imp.fn(F.interpolate, x, mode="nearest", **kwargs)]
    if mode == "linear" and coord in ("half_pixel", "pytorch_half_pixel", "align_corners"):
        torch_mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[k]
        if a.get("antialias", 0):
            raise Unsupported("antialias")
        return [
            imp.fn(
                F.interpolate, x, mode=torch_mode, align_corners=coord == "align_corners", **kwargs
            )
        ]
    raise Unsupported(f"mode {mode} with {coord}")


@op("Pad")
def pad(imp: Importer, n: onnx.NodeProto) -> list[Any]:
    a = attrs(n)
    mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}.get(
        a.get("mode", "constant")
    )
    if mode is None:
        raise Unsupported(f"mode {a.get('mode')}")
    rank = _rank(imp, n.input[0])
    if "pads" in a:
        pads = list(a["pads"])
        value = float(a.get("value", 0.0))
    else:
        pads = imp.dims(n.input[1]).items
        value = 0.0
        if _input(n, 2):
            c = imp.const(n.input[2])
            if c is None:
                raise Unsupported("a fill value computed at run time")
            value = c.reshape(-1)[0].item() if c.size else 0.0
        if _input(n, 3):
            raise Unsupported("axes")
    if not all(isinstance(p, int) for p in pads):
        raise Unsupported("pads computed at run time")
    torch_pads: list[int] = []
    for d in reversed(range(rank)):
        torch_pads += [pads[d], pads[d + rank]]
    while len(torch_pads) >= 2 and torch_pads[-2:] == [0, 0]:
        torch_pads = torch_pads[:-2]
    x = imp.tensor(n.input[0])
    if not torch_pads:
        return [x]
    kwargs = {"value": value} if mode == "constant" else {}
    return [imp.fn(F.pad, x, torch_pads, mode=mode, **kwargs)]


@op("Einsum")
def einsum(imp: Importer, n: onnx.NodeProto) -> list[Any]:
    return [imp.fn(torch.einsum, attrs(n)["equation"], *[imp.tensor(i) for i in n.input])]


@op("DepthToSpace", "SpaceToDepth")
def depth_to_space(imp: Importer, n: onnx.NodeProto) -> list[Any]:
    a = attrs(n)
    if n.op_type == "DepthToSpace" and a.get("mode", "DCR") != "CRD":
        raise Unsupported("DCR mode")
    fn = F.pixel_shuffle if n.op_type == "DepthToSpace" else F.pixel_unshuffle
    return [imp.fn(fn, imp.tensor(n.input[0]), int(a["blocksize"]))]


@op("TopK")
def topk(imp: Importer, n: onnx.NodeProto) -> list[Any]:
    a = attrs(n)
    k = imp.dims(n.input[1])
    node = imp.fn(
        torch.topk,
        imp.tensor(n.input[0]),
        k.items[0],
        int(a.get("axis", -1)),
        largest=bool(a.get("largest", 1)),
        sorted=bool(a.get("sorted", 1)),
    )
    return [imp.fn(operator.getitem, node, 0), imp.fn(operator.getitem, node, 1)]
