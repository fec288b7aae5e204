"""The trace check: the captured graph computes what the model computes on the example inputs,
and what in the inputs or weights is not finite."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils import _pytree as pytree

from surgeon.capture.inputs import as_args
from surgeon.capture.shapes import eval_mode
from surgeon.errors import SurgeonTraceError

__all__ = ["check_trace", "finite_outputs", "nonfinite"]


def check_trace(model: torch.nn.Module, example_inputs: Any, traced: Any) -> None:
    """The traced graph must compute what the model computes on the example inputs.

    torch.fx records ``x += y`` as an out-of-place add, so when ``x`` is also read elsewhere
    the graph and the model part ways; refuse rather than slim a different function.
    """
    args, kwargs = as_args(example_inputs)
    args = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)
    kwargs = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    with torch.no_grad(), eval_mode(model):
        eager = model(*args, **kwargs)
    want = [t for t in pytree.tree_leaves(eager) if isinstance(t, torch.Tensor)]
    got = [t for t in pytree.tree_leaves(traced) if isinstance(t, torch.Tensor)]
    name = type(model).__name__
    if len(got) != len(want):
        raise SurgeonTraceError(
            f"the torch.fx graph of {name} returns {len(got)} tensor(s) where the model returns "
            f"{len(want)} on the example inputs in eval mode: fx recorded a different path "
            "through forward"
            + (
                " (it traced the model in training mode, and forward branches on "
                "self.training, as auxiliary heads do). Way out: call model.eval() before slimming."
                if model.training
                else " (a branch on a value, a Python container it could not follow). Way out: "
                "put the module whose output differs in leaf_modules=(...), or report the model."
            )
        )
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        if a.shape != b.shape or a.dtype != b.dtype:
            raise SurgeonTraceError(
                f"the torch.fx graph of {name} gives output {i} as {a.dtype} "
                f"{tuple(a.shape)} where the model gives {b.dtype} {tuple(b.shape)}: fx "
                "recorded a different function. Way out: put the module that computes it in "
                "leaf_modules=(...), or report the model."
            )
        if not a.is_floating_point() and not a.is_complex():
            if not torch.equal(a, b):
                raise SurgeonTraceError(
                    f"the torch.fx graph of {name} does not compute what the model computes "
                    f"(output {i}, {b.dtype}, differs). Way out: put the module that computes it "
                    "in leaf_modules=(...), or report the model."
                )
            continue
        scale = float(b.abs().max()) if b.numel() else 0.0
        diff = float((a - b).abs().max()) if b.numel() else 0.0
        if diff > 1e-5 * max(scale, 1e-30) and diff > 0:
            raise SurgeonTraceError(
                f"the torch.fx graph of {name} does not compute what the model "
                f"computes (output {i} differs by {diff:.3g}, its scale is {scale:.3g}). The usual "
                "cause is an in-place update (`x += y`, `x.add_(y)`) of a tensor that is also read "
                "elsewhere, which fx records as out of place. Way out: write it out of place "
                "(`x = x + y`), or put that module in leaf_modules=(...)."
            )


def finite_outputs(outputs: Any) -> list[bool]:
    """Per floating output tensor: whether all its values are finite."""
    return [
        bool(torch.isfinite(t).all())
        for t in pytree.tree_leaves(outputs)
        if isinstance(t, torch.Tensor) and t.is_floating_point()
    ]


def nonfinite(model: torch.nn.Module, example_inputs: Any, nan_only: bool = False) -> list[str]:
    """What holds NaN (and, unless ``nan_only``, infinite) values: the example inputs by
    position or keyword, the model's parameters and buffers by name."""
    bad = torch.isnan if nan_only else (lambda t: ~torch.isfinite(t))
    args, kwargs = as_args(example_inputs)
    found = []
    items = [*((f"example input {i}", a) for i, a in enumerate(args))]
    items += [(f"example input {k!r}", v) for k, v in kwargs.items()]
    for label, value in items:
        for j, t in enumerate(pytree.tree_leaves(value)):
            if isinstance(t, torch.Tensor) and t.is_floating_point() and bool(bad(t).any()):
                found.append(label if j == 0 else f"{label} (tensor {j})")
    for kind, named in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, t in named:
            if t.is_floating_point() and bool(bad(t.detach()).any()):
                found.append(f"{kind} {name!r}")
    return found
