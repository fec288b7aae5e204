"""Example inputs: a tensor, a tuple of tensors (positional) or a dict of keyword tensors, as
call arguments, as a JSON-able spec (what a plan records) and back, and as graph placeholders."""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.fx as fx

from surgeon.errors import SurgeonInputError

__all__ = [
    "as_args",
    "input_spec",
    "inputs_from_spec",
    "spec_shapes",
    "placeholder_args",
    "defaults_not_given",
]


def as_args(example_inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Split ``example_inputs`` (a tensor, a tuple of tensors, or a dict) into (args, kwargs)."""
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    return (example_inputs,), {}


def input_spec(example_inputs: Any) -> Any:
    """The shapes and dtypes of ``example_inputs``, JSON-able, in the same structure."""
    if isinstance(example_inputs, torch.Tensor):
        return {
            "shape": list(example_inputs.shape),
            "dtype": str(example_inputs.dtype).removeprefix("torch."),
        }
    if isinstance(example_inputs, dict):
        return {"dict": {k: input_spec(v) for k, v in example_inputs.items()}}
    if isinstance(example_inputs, (tuple, list)):
        return {"tuple": [input_spec(v) for v in example_inputs]}
    return {"value": example_inputs}


def spec_shapes(spec: Any) -> list[tuple[int, ...]]:
    """The shapes of the tensors an input spec (:func:`input_spec`) describes, in order."""
    if isinstance(spec, dict) and "shape" in spec:
        return [tuple(spec["shape"])]
    if isinstance(spec, dict) and "dict" in spec:
        return [t for v in spec["dict"].values() for t in spec_shapes(v)]
    if isinstance(spec, dict) and "tuple" in spec:
        return [t for v in spec["tuple"] for t in spec_shapes(v)]
    return []


def inputs_from_spec(spec: Any) -> Any:
    """Zero tensors of the recorded shapes and dtypes (for re-tracing a recorded plan)."""
    if "shape" in spec:
        return torch.zeros(spec["shape"], dtype=getattr(torch, spec["dtype"]))
    if "dict" in spec:
        return {k: inputs_from_spec(v) for k, v in spec["dict"].items()}
    if "tuple" in spec:
        return tuple(inputs_from_spec(v) for v in spec["tuple"])
    return spec["value"]


def placeholder_args(gm: fx.GraphModule, example_inputs: Any) -> list[Any]:
    """Positional values for the graph's placeholders, from a tensor, tuple or dict."""
    args, kwargs = as_args(example_inputs)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    values: list[Any] = []
    for i, node in enumerate(placeholders):
        name = node.target.lstrip("*")
        if i < len(args):
            values.append(args[i])
        elif name in kwargs:
            values.append(kwargs.pop(name))
        elif node.args:
            values.append(node.args[0])
        else:
            raise SurgeonInputError(
                f"example_inputs gives no value for the model input '{name}'; pass it positionally "
                f"or as a dict key (inputs: {[p.target for p in placeholders]})"
            )
    extra = len(args) - len(placeholders)
    if extra > 0 or kwargs:
        what = (
            f"{extra} extra positional value(s)"
            if extra > 0
            else f"unknown key(s) {sorted(kwargs)}"
        )
        raise SurgeonInputError(
            f"example_inputs has {what}; the model's forward takes {[p.target for p in placeholders]}"
        )
    return values


def defaults_not_given(model: torch.nn.Module, example_inputs: Any) -> dict[str, Any]:
    """forward's parameters that example_inputs leaves out and that have defaults: fx
    specialises them to the default (``scale=None`` stays ``None`` instead of a proxy)."""
    args, kwargs = as_args(example_inputs)
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return {}
    out = {}
    for i, p in enumerate(params):
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        given = i < len(args) or p.name in kwargs
        if not given and p.default is not p.empty:
            out[p.name] = p.default
    return out
