"""An ONNX graph as a ``torch.fx.GraphModule`` that surgeon's rules read like any traced model.

Each ONNX op becomes the torch call a PyTorch author would have written: ``Conv`` an
``nn.Conv2d``, ``Gemm`` and ``MatMul`` by a weight an ``nn.Linear`` (a bias ``Add`` after it
folded in), ``Gather`` from a weight table an ``nn.Embedding``, ``BatchNormalization`` and
``LayerNormalization`` their modules, elementwise ops ``operator`` / ``torch`` functions,
``Reshape`` / ``Transpose`` / ``Concat`` / ``Split`` / ``Slice`` the tensor methods. Modules are
named after their weights where the file kept the PyTorch names (``layer1.0.conv1``), else after
the node.

Shape arithmetic (``Shape`` -> ``Gather`` -> ``Unsqueeze`` -> ``Concat`` -> ``Reshape``, what
the exporters write for ``x.view(x.size(0), -1)``) is not data: it becomes ``x.size(i)`` calls
and Python ints (:class:`Dims`), so a dynamic dim stays free in the graph and a channel count
the pass changes is read from the tensor, as in the source model. Constants are folded where all
inputs are known. An op no translation knows stays an :class:`~surgeon.onnxin.opaque.OnnxOp`
(run by onnxruntime, blocked for pruning). The import is built and run on the example at once,
so each translation sees real shapes; :func:`import_onnx` then checks the graph against
onnxruntime on the original file.
"""

from __future__ import annotations

import operator
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch
import torch.fx as fx
from onnx import helper, numpy_helper
from torch import nn

from surgeon.errors import SurgeonInputError
from surgeon.onnxin.opaque import OnnxOp, opaque_reason

__all__ = ["Dims", "Importer", "Unsupported", "OnnxImport"]


class Unsupported(Exception):
    """A translation cannot express this node; the importer keeps it opaque."""


@dataclass
class Dims:
    """A shape value: a 1-D int64 tensor (or a scalar) whose items are ints or fx nodes that
    give ints (``x.size(i)`` and arithmetic on them); ``floating`` when the exporter cast it
    to a float (``q.size(-1) ** -0.5``), ``boolean`` for a comparison of sizes."""

    items: list[Any]
    scalar: bool = False
    floating: bool = False
    boolean: bool = False

    def known(self) -> bool:
        return all(not isinstance(i, fx.Node) for i in self.items)

    def dtype(self) -> type:
        return np.bool_ if self.boolean else np.float32 if self.floating else np.int64

    def array(self) -> np.ndarray:
        return np.asarray(self.items[0] if self.scalar else self.items, dtype=self.dtype())


@dataclass
class OnnxImport:
    """The imported graph and what the importer kept opaque."""

    module: fx.GraphModule
    opaque: list[str] = field(default_factory=list)  # "OpType 'node' (why)" per opaque node


INT64_MAX = 2**63 - 1


def _safe(name: str) -> str:
    out = re.sub(r"\W+", "_", name).strip("_")
    return out if out and not out[0].isdigit() else f"n_{out}"


class Importer:
    """Walks the ONNX graph in order; each op's translation emits fx nodes through :meth:`call`,
    which also runs them on the example (so every node's value, shape and dtype is known)."""

    def __init__(self, proto: onnx.ModelProto, example: dict[str, torch.Tensor]) -> None:
        from surgeon.onnxin.ops import OPS

        self.proto = proto
        self.ops = OPS
        self.opsets = {o.domain or "": o.version for o in proto.opset_import}
        self.opset = self.opsets.get("", self.opsets.get("ai.onnx", 13))
        self.graph = fx.Graph()
        self.root: dict[str, Any] = {}
        self.values: dict[fx.Node, Any] = {}
        self.env: dict[str, Any] = {}
        self.skip: set[int] = set()
        self.opaque: list[str] = []
        g = proto.graph
        self.inits = {i.name: i for i in g.initializer}
        # held in a list: the wrappers stay the same objects, so id() names a node (skip)
        self.nodes = list(g.node)
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in self.nodes:
            for name in n.input:
                self.consumers.setdefault(name, []).append(n)
        self.graph_outputs = {o.name for o in g.output}
        self._taken: set[str] = set()
        self._prefixes: set[str] = set()
        self._counts: Counter[str] = Counter()
        self._held: dict[str, fx.Node] = {}  # constants made attributes of the module
        for inp in g.input:
            if inp.name in self.inits:
                continue
            node = self.graph.placeholder(_safe(inp.name))
            self.values[node] = example[inp.name]
            self.env[inp.name] = node

    # ---- values -------------------------------------------------------------------------

    def lookup(self, name: str) -> Any:
        if name in self.env:
            return self.env[name]
        if name in self.inits:
            value = numpy_helper.to_array(self.inits[name])
            self.env[name] = value
            return value
        raise SurgeonInputError(f"the ONNX graph reads {name!r}, which nothing defines")

    def value(self, v: Any) -> Any:
        """The example value of a graph value (fx node, constant array or Dims)."""
        if isinstance(v, fx.Node):
            return self.values[v]
        if isinstance(v, Dims):
            items = [self.values[i] if isinstance(i, fx.Node) else i for i in v.items]
            return np.asarray(items[0] if v.scalar else items, dtype=v.dtype())
        return v

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(np.shape(self.value(self.lookup(name))))

    def const(self, name: str) -> np.ndarray | None:
        """The constant array of input ``name``; None when it is computed at run time."""
        v = self.lookup(name)
        if isinstance(v, np.ndarray):
            return v
        if isinstance(v, Dims) and v.known():
            return v.array()
        return None

    def dims(self, name: str) -> Dims:
        """Input ``name`` as a shape value."""
        v = self.lookup(name)
        if isinstance(v, Dims):
            return v
        if isinstance(v, np.ndarray) and v.dtype.kind in "iubf" and v.ndim <= 1:
            return Dims(
                [i.item() for i in v.reshape(-1)],
                scalar=v.ndim == 0,
                floating=v.dtype.kind == "f",
                boolean=v.dtype.kind == "b",
            )
        raise Unsupported(f"{name!r} is used as a shape but is computed from data")

    def tensor(self, name: str, *, param: bool = False) -> fx.Node:
        """Input ``name`` as a graph tensor: constants become attributes of the module."""
        v = self.lookup(name)
        if isinstance(v, fx.Node):
            return v
        if name in self._held:  # one attribute per constant, however many read it
            return self._held[name]
        if isinstance(v, Dims):
            if v.known():
                v = v.array()
            else:
                raise Unsupported(f"{name!r} is a shape computed at run time, used as data")
        node = self.attribute(name, torch.from_numpy(np.array(v)), param=param)
        self._held[name] = node  # the constant stays readable as one (const, dims)
        return node

    def operand(self, name: str, other_rank: int) -> Any:
        """An elementwise operand: a one-element constant that does not add dims becomes a
        Python number (as ``x * 0.5`` in the source), anything else :meth:`tensor`."""
        v = self.lookup(name)
        if isinstance(v, Dims) and len(v.items) == 1 and (v.scalar or other_rank >= 1):
            return v.items[0]
        c = self.const(name)
        if c is not None and c.size == 1 and c.ndim <= other_rank:
            return c.reshape(-1)[0].item()
        float_param = c is not None and c.dtype.kind == "f" and c.size > 1
        return self.tensor(name, param=float_param)

    def attribute(self, hint: str, t: torch.Tensor, *, param: bool = False) -> fx.Node:
        name = self.unique(_safe(hint))
        self._taken.add(name)
        value: Any = nn.Parameter(t, requires_grad=t.is_floating_point()) if param else t
        self.root[name] = value
        node = self.graph.get_attr(name)
        self.values[node] = t
        return node

    def unique(self, base: str) -> str:
        name = base
        while (
            name in self._taken
            or name in self._prefixes
            or any(p.startswith(name + ".") for p in self._taken)
        ):
            self._counts[base] += 1
            name = f"{base}_{self._counts[base]}"
        return name

    # ---- emitting -----------------------------------------------------------------------

    def call(
        self, kind: str, target: Any, args: tuple[Any, ...], kwargs: dict | None = None
    ) -> fx.Node:
        """One fx node, run on the example at once."""
        kwargs = kwargs or {}
        node = self.graph.create_node(kind, target, args, kwargs)
        a, k = fx.node.map_arg((args, kwargs), lambda n: self.values[n])
        if kind == "call_function":
            out = target(*a, **k)
        elif kind == "call_method":
            out = getattr(a[0], target)(*a[1:], **k)
        else:
            out = self.root[target](*a, **k)
        self.values[node] = out
        return node

    def fn(self, target: Callable[..., Any], *args: Any, **kwargs: Any) -> fx.Node:
        return self.call("call_function", target, args, kwargs)

    def method(self, name: str, *args: Any, **kwargs: Any) -> fx.Node:
        return self.call("call_method", name, args, kwargs)

    def module(
        self, onnx_node: onnx.NodeProto, m: nn.Module, *args: Any, weight: str = ""
    ) -> fx.Node:
        """Add ``m`` under a name from its weight's PyTorch name (``layer1.0.conv1.weight``) or
        else from the node, and call it."""
        path = ""
        if weight.endswith((".weight", ".bias")) and re.fullmatch(r"[A-Za-z_][\w.]*", weight):
            path = weight.rsplit(".", 1)[0]
            parts = path.split(".")
            if any(not (p.isidentifier() or p.isdigit()) for p in parts) or parts[0].isdigit():
                path = ""
            elif (
                path in self._taken
                or path in self._prefixes
                or any(path.startswith(p + ".") for p in self._taken)
            ):
                path = ""
        if not path:
            path = self.unique(_safe(onnx_node.name or onnx_node.op_type.lower()))
        self._taken.add(path)
        parts = path.split(".")
        for i in range(1, len(parts)):
            self._prefixes.add(".".join(parts[:i]))
        m.eval()
        self.root[path] = m
        return self.call("call_module", path, args)

    def size(self, x: fx.Node, dim: int) -> fx.Node:
        return self.method("size", x, dim)

    # ---- the walk -----------------------------------------------------------------------

    def run(self) -> OnnxImport:
        g = self.proto.graph
        self._prefold()
        for n in self.nodes:
            if id(n) in self.skip:
                continue
            self.translate(n)
        outputs = []
        for o in g.output:
            v = self.lookup(o.name)
            if not isinstance(v, fx.Node):
                v = self.tensor(o.name)
            outputs.append(v)
        self.graph.output(outputs[0] if len(outputs) == 1 else tuple(outputs))
        module = fx.GraphModule(self.root, self.graph, class_name="OnnxGraph")
        return OnnxImport(module, self.opaque)

    def translate(self, n: onnx.NodeProto) -> None:
        rule = self.ops.get(n.op_type) if n.domain in ("", "ai.onnx") else None
        outs = list(n.output)
        if (
            all(self._known(i) for i in n.input if i)
            and n.op_type not in _NO_FOLD
            and rule is not None
        ):
            folded = self._fold(n)
            if folded is not None:
                for name, value in zip(outs, folded, strict=False):
                    self.env[name] = value
                return
        if rule is not None:
            try:
                results = rule(self, n)
            except Unsupported as exc:
                reason = str(exc)
            else:
                for name, value in zip(outs, results, strict=False):
                    if name:
                        self.env[name] = value
                return
        else:
            reason = "no translation"
        self._keep_opaque(n, reason)

    def _prefold(self) -> None:
        """Every op computed from constants alone, computed first (a bias reshaped after the
        conv that adds it, in the file's order), so the translations see constants."""
        changed = True
        while changed:
            changed = False
            for n in self.nodes:
                if id(n) in self.skip or n.op_type in _NO_FOLD:
                    continue
                if n.op_type == "Constant":
                    try:
                        values = self.ops["Constant"](self, n)
                    except Unsupported:
                        continue
                elif n.input and all(
                    not i or ((i in self.env or i in self.inits) and self._known(i))
                    for i in n.input
                ):
                    values = self._fold(n)
                    if values is None:
                        continue
                else:
                    continue
                for name, value in zip(n.output, values, strict=False):
                    self.env[name] = value
                self.skip.add(id(n))
                changed = True

    def _known(self, name: str) -> bool:
        v = self.lookup(name)
        return isinstance(v, np.ndarray) or (isinstance(v, Dims) and v.known())

    def _fold(self, n: onnx.NodeProto) -> list[np.ndarray] | None:
        """Every input of ``n`` is known: compute its outputs once (onnx's reference runtime)."""
        from onnx.reference import ReferenceEvaluator

        inputs = [self.const(i) if i else None for i in n.input]
        names = [f"i{k}" if i else "" for k, i in enumerate(n.input)]
        outs = [f"o{k}" for k in range(len(n.output))]
        node = helper.make_node(n.op_type, names, outs, domain=n.domain or None)
        node.attribute.extend(n.attribute)
        graph = helper.make_graph(
            [node],
            "fold",
            [
                helper.make_tensor_value_info(nm, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
                for nm, a in zip(names, inputs, strict=True)
                if nm
            ],
            [helper.make_empty_tensor_value_info(o) for o in outs],
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid(d, v) for d, v in self.opsets.items()]
        )
        try:
            results = ReferenceEvaluator(model).run(
                None, {nm: a for nm, a in zip(names, inputs, strict=True) if nm}
            )
        except Exception:  # noqa: BLE001 - an op the reference runtime lacks is translated instead
            return None
        return [np.asarray(r) for r in results]

    def _keep_opaque(self, n: onnx.NodeProto, reason: str) -> None:
        why = opaque_reason(n)
        label = f"{n.op_type} node {n.name!r}"
        args: list[fx.Node] = []
        if why is None:
            try:
                args = [self.tensor(i) for i in n.input if i]
            except Unsupported as exc:  # a shape computed at run time is no tensor to hand it
                why = str(exc)
        if why is not None:
            raise SurgeonInputError(
                f"the ONNX {label} cannot be imported ({reason}) nor kept as it is ({why}); "
                "cut the file before it (onnx.utils.extract_model) and slim that part"
            )
        outs = [o for o in n.output]
        m = OnnxOp(n, self.opsets, len(outs))
        node = self.module(n, m, *args)
        self.opaque.append(f"{n.op_type} {n.name or 'unnamed, output ' + n.output[0]!r} ({reason})")
        if len(outs) == 1:
            self.env[outs[0]] = node
        else:
            for j, name in enumerate(outs):
                if name:
                    self.env[name] = self.fn(operator.getitem, node, j)


# ops whose outputs are not functions of their inputs alone
_NO_FOLD = {
    "RandomNormal",
    "RandomUniform",
    "RandomNormalLike",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
    "Dropout",
}
