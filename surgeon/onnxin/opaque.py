"""An ONNX op that no translation knows, kept as it is: a module that runs the one op in
onnxruntime and exports as the same op.

The importer turns every op it knows into the torch call that computes the same thing, so the
channel rules apply to it. An op it does not know becomes an :class:`OnnxOp` leaf: surgeon has no
rule for it, so the groups it touches are blocked (the reason names the op type and the node),
the rest of the model is slimmed as usual, and the slim file holds the op again, unchanged
(exported by the TorchScript exporter through :meth:`_Run.symbolic`).
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper
from torch import nn

__all__ = ["OnnxOp", "opaque_reason"]

_SPECS: dict[str, OnnxOp] = {}
_COUNTER = itertools.count()

# g.op attribute suffixes by ONNX attribute type (torch.onnx's TorchScript builder)
_SUFFIX = {
    onnx.AttributeProto.FLOAT: "f",
    onnx.AttributeProto.INT: "i",
    onnx.AttributeProto.STRING: "s",
    onnx.AttributeProto.TENSOR: "t",
    onnx.AttributeProto.FLOATS: "f",
    onnx.AttributeProto.INTS: "i",
    onnx.AttributeProto.STRINGS: "s",
}


def opaque_reason(node: onnx.NodeProto) -> str | None:
    """Why ``node`` cannot be kept as an opaque op, or None when it can."""
    for a in node.attribute:
        if a.type not in _SUFFIX:
            return f"its attribute {a.name!r} is a {onnx.AttributeProto.AttributeType.Name(a.type)}"
    return None


class OnnxOp(nn.Module):
    """One ONNX node, run by onnxruntime. ``op_type`` and ``node_name`` say which; the module
    is a leaf to the tracer and has no channel rule, so its groups are blocked."""

    def __init__(self, node: onnx.NodeProto, opsets: dict[str, int], n_outputs: int) -> None:
        super().__init__()
        self.op_type = node.op_type
        self.domain = node.domain
        self.node_name = node.name or f"unnamed, output {node.output[0]}"
        self.n_outputs = n_outputs
        inputs = list(node.input)
        while inputs and not inputs[-1]:
            inputs.pop()
        # which inputs the node has: an optional one left out between others is a gap
        self.slots = tuple(bool(name) for name in inputs)
        self._attributes = [
            onnx.AttributeProto.FromString(a.SerializeToString()) for a in node.attribute
        ]
        self._opsets = dict(opsets)
        self._sessions: dict[tuple[Any, ...], Any] = {}
        self.key = f"{node.op_type}#{next(_COUNTER)}"
        _SPECS[self.key] = self

    @property
    def surgeon_label(self) -> str:
        """How the channel rules name it: its op and node, as in the file."""
        return f"ONNX op {self.op_type} (node {self.node_name!r}) at module"

    def extra_repr(self) -> str:
        return f"{self.domain + '::' if self.domain else ''}{self.op_type}, node={self.node_name!r}"

    def __deepcopy__(self, memo: dict[int, Any]) -> OnnxOp:
        # the sessions are not copyable; the copy builds its own on first use
        clone = OnnxOp.__new__(OnnxOp)
        nn.Module.__init__(clone)
        for name in ("op_type", "domain", "node_name", "n_outputs", "slots", "_opsets"):
            setattr(clone, name, getattr(self, name))
        clone._attributes = list(self._attributes)
        clone._sessions = {}
        clone.key = f"{self.op_type}#{next(_COUNTER)}"
        _SPECS[clone.key] = clone
        return clone

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_sessions"] = {}
        state["_attributes"] = [a.SerializeToString() for a in self._attributes]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state["_attributes"] = [onnx.AttributeProto.FromString(a) for a in state["_attributes"]]
        self.__dict__.update(state)
        _SPECS[self.key] = self

    def forward(self, *inputs: torch.Tensor) -> Any:
        out = _Run.apply(self.key, *inputs)
        return out if self.n_outputs > 1 else out[0] if isinstance(out, tuple) else out

    def run(self, inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        """The op on ``inputs`` in onnxruntime (a one-node model, built per input signature)."""
        import onnxruntime as ort

        arrays = [t.detach().cpu().numpy() for t in inputs]
        sig = tuple((a.dtype.str, a.ndim) for a in arrays)
        session = self._sessions.get(sig)
        if session is None:
            names = [f"in_{i}" for i in range(len(arrays))]
            slots = iter(names)
            wired = [next(slots) if present else "" for present in self.slots]
            outs = [f"out_{j}" for j in range(self.n_outputs)]
            node = helper.make_node(self.op_type, wired, outs, domain=self.domain or None)
            node.attribute.extend(self._attributes)
            graph = helper.make_graph(
                [node],
                "op",
                [
                    helper.make_tensor_value_info(
                        n, helper.np_dtype_to_tensor_dtype(a.dtype), [None] * a.ndim
                    )
                    for n, a in zip(names, arrays, strict=True)
                ],
                [helper.make_empty_tensor_value_info(o) for o in outs],
            )
            opsets = [helper.make_opsetid(d, v) for d, v in self._opsets.items()]
            proto = helper.make_model(graph, opset_imports=opsets)
            proto.ir_version = min(proto.ir_version, 10)
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            session = ort.InferenceSession(
                proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
            )
            self._sessions[sig] = session
        feed = {f"in_{i}": a for i, a in enumerate(arrays)}
        device = inputs[0].device if inputs else torch.device("cpu")
        return [torch.from_numpy(np.asarray(o)).to(device) for o in session.run(None, feed)]


class _Run(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, key: str, *inputs: torch.Tensor) -> Any:  # noqa: ARG004
        outs = _SPECS[key].run(inputs)
        return tuple(outs) if len(outs) > 1 else outs[0]

    @staticmethod
    def symbolic(g: Any, key: str, *inputs: Any) -> Any:
        spec = _SPECS[key]
        kwargs: dict[str, Any] = {}
        for a in spec._attributes:
            value = helper.get_attribute_value(a)
            if a.type == onnx.AttributeProto.TENSOR:
                value = torch.from_numpy(onnx.numpy_helper.to_array(value).copy())
            elif isinstance(value, bytes):
                value = value.decode()
            elif a.type == onnx.AttributeProto.STRINGS:
                value = [v.decode() for v in value]
            kwargs[f"{a.name}_{_SUFFIX[a.type]}"] = value
        name = f"{spec.domain}::{spec.op_type}" if spec.domain else spec.op_type
        given = iter(inputs)
        wired = [next(given) if present else _left_out(g) for present in spec.slots]
        return g.op(name, *wired, outputs=spec.n_outputs, **kwargs)


def _left_out(g: Any) -> Any:
    """An optional input left out (written as an empty name in the file)."""
    node = g.op("prim::Constant")
    node.setType(torch._C.OptionalType.ofTensor())
    return node
