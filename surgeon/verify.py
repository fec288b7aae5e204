"""The checks a slim model passes before it is returned: its outputs keep their shapes and stay
finite where the original's were; NaN in the inputs or weights is refused up front (it hides
every difference the checks look for)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch.utils import _pytree as pytree

from surgeon.capture import as_args, eval_mode, nonfinite
from surgeon.errors import SurgeonInputError, SurgeonPassError

__all__ = ["output_shapes", "refuse_nan", "self_check"]


def eager_runs(model: nn.Module, batches: Iterable[Any]) -> Iterator[Any]:
    """Run ``model`` on each batch of inputs (every module in eval mode, no grad), yielding
    each output."""
    with eval_mode(model), torch.no_grad():
        for inputs in batches:
            args, kwargs = as_args(inputs)
            yield model(*args, **kwargs)


def eager_outputs(model: nn.Module, inputs: Any) -> list[torch.Tensor]:
    """The tensors of ``model``'s output on ``inputs`` (no grad), flattened."""
    args, kwargs = as_args(inputs)
    with torch.no_grad():
        out = model(*args, **kwargs)
    return [v for v in pytree.tree_leaves(out) if isinstance(v, torch.Tensor)]


def output_shapes(gm: fx.GraphModule) -> list[tuple[int, ...]]:
    """The shapes of the graph's output tensors, from shape propagation."""
    out = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
    shapes: list[tuple[int, ...]] = []

    def visit(n: fx.Node) -> fx.Node:
        meta = n.meta.get("tensor_meta")
        if meta is not None and hasattr(meta, "shape"):
            shapes.append(tuple(meta.shape))
        return n

    fx.node.map_arg(out.args, visit)
    return shapes


def refuse_nan(model: nn.Module, example_inputs: Any) -> None:
    """Raise where the example inputs or the weights hold NaN: the user's to fix."""
    nan = nonfinite(model, example_inputs, nan_only=True)
    if nan:
        raise SurgeonInputError(
            f"NaN values in {', '.join(nan[:3])}{' ...' if len(nan) > 3 else ''}: slim runs the "
            "model on the example inputs to check every step, and NaN hides every difference; "
            "pass finite inputs and weights",
            option="example_inputs",
        )


def self_check(
    gm: fx.GraphModule,
    expected: list[tuple[int, ...]],
    output: Any,
    model: nn.Module,
    example_inputs: Any,
    finite_before: list[bool],
) -> None:
    """The slim model's outputs (``output``, its run on the example) keep the ``expected``
    shapes and are finite where the original's were (``finite_before``, per floating output)."""
    got = output_shapes(gm)
    if got != expected:
        raise SurgeonPassError(
            f"the slim model's output shapes {got} differ from the original {expected}"
        )
    tensors = [t for t in pytree.tree_leaves(output) if isinstance(t, torch.Tensor)]
    floats = [t for t in tensors if t.is_floating_point()]
    for i, t in enumerate(floats):
        if torch.isfinite(t).all():
            continue
        if i < len(finite_before) and not finite_before[i]:
            # Infinite buffers are the model's own (a -inf attention mask); infinite inputs
            # or parameters are the user's to fix.
            where = [w for w in nonfinite(model, example_inputs) if not w.startswith("buffer")]
            if not where:
                continue  # the model's own output holds infinities: as it was
            raise SurgeonInputError(
                f"the original model's output {i} is already non-finite on the example inputs "
                f"(infinite values in {', '.join(where[:3])}), so no slim model can be checked "
                "against it; pass finite example inputs and weights",
                option="example_inputs",
            )
        raise SurgeonPassError(
            f"the slim model's output {i} has non-finite values on the example inputs where "
            "the original's are finite; nothing is returned — report the model, or slim with a "
            "smaller ratio"
        )
