"""Capture: a model becomes an fx graph with shape metadata, in one value (:class:`Captured`).

The ladder (:mod:`~surgeon.capture.ladder`): torch.fx symbolic tracing; where it fails on code
that branches on sizes, a tracer whose size queries answer with the example's integers
(:mod:`~surgeon.capture.concrete`); then a submodule that still fails becomes a leaf. A
decorated or ``**kwargs`` forward is traced through an adapter whose signature is the example
inputs' keys (:mod:`~surgeon.capture.keywords`). Every node then carries
``node.meta["tensor_meta"]`` (:mod:`~surgeon.capture.shapes`), and the graph is checked to
compute what the model computes (:mod:`~surgeon.capture.check`). A model fx cannot trace raises
:class:`SurgeonTraceError` naming the module and the source line, with the way out.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx

from surgeon.capture.check import check_trace, finite_outputs, nonfinite
from surgeon.capture.inputs import as_args, input_spec, inputs_from_spec, placeholder_args
from surgeon.capture.keywords import explicit_forward
from surgeon.capture.ladder import ladder
from surgeon.capture.shapes import eval_mode, propagate_shapes
from surgeon.copying import keep_unreached
from surgeon.errors import SurgeonInputError
from surgeon.keys import plan_of

__all__ = [
    "Captured",
    "capture",
    "trace",
    "as_args",
    "input_spec",
    "inputs_from_spec",
    "placeholder_args",
    "propagate_shapes",
    "eval_mode",
    "check_trace",
    "nonfinite",
]

log = logging.getLogger(__name__)

MAX_RECORDED = 8  # places a specialised capture records


@dataclass(frozen=True)
class Captured:
    """A model as a graph.

    Attributes:
        gm: the graph module (it shares submodules with the model it was captured from), every
            node carrying ``tensor_meta``.
        output: the graph's output on the example inputs.
        how: ``"symbolic"`` (torch.fx symbolic trace), ``"specialised"`` (sizes answered with
            the example's integers somewhere, see ``specialised``) or ``"graph"`` (a
            ``GraphModule`` handed in, used as it is).
        specialised: where sizes were specialised (``{"inputs": spec, "where": [lines]}``), or
            ``None``: the graph holds for other sizes too.
        auto_leaves: the submodules traced as leaves because they could not be captured, each
            with its reason.
        checked: the graph was run against the model itself (:func:`check_trace`).
    """

    gm: fx.GraphModule
    output: Any
    how: str
    specialised: dict[str, Any] | None = None
    auto_leaves: list[str] = field(default_factory=list)
    checked: bool = False

    @property
    def finite(self) -> list[bool]:
        """Per floating output tensor: whether all its values are finite."""
        return finite_outputs(self.output)

    def record(self) -> dict[str, Any]:
        """What a plan keeps of the capture (JSON-able)."""
        return {
            "captured": self.how,
            "specialised": self.specialised,
            "auto_leaves": self.auto_leaves,
        }


def capture(
    model: torch.nn.Module,
    example_inputs: Any,
    *,
    leaf_modules: Iterable[type[torch.nn.Module] | torch.nn.Module | str] = (),
    check: bool = True,
) -> Captured:
    """Capture ``model`` as a graph and propagate shapes from ``example_inputs`` (a tensor, a
    tuple of positional tensors or a dict of keyword tensors).

    ``leaf_modules`` are module types, instances or qualified submodule names fx must not
    trace into (their dims are then blocked by the channel analysis). The graph shares
    submodules with ``model``: copy first to keep it intact. A ``GraphModule`` is used as it
    is. ``check``: run ``model`` itself too and refuse a graph that computes something else;
    ``False`` leaves that to the caller (``Captured.output`` is what to compare).
    """
    if not isinstance(model, torch.nn.Module):
        raise SurgeonInputError(
            f"model must be a torch.nn.Module, got {type(model).__name__}", option="model"
        )
    if isinstance(model, fx.GraphModule):  # already a graph (a slim model, a user's capture)
        meta = plan_of(model) or {}  # a slim graph: the sizes its capture specialised
        output = propagate_shapes(model, example_inputs)
        return Captured(model, output, "graph", meta.get("specialised"), checked=True)
    with explicit_forward(model, example_inputs):
        tracer, graph, auto = ladder(model, example_inputs, list(leaf_modules))
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    keep_unreached(model, gm)
    where = getattr(tracer, "specialised", [])
    specialised = (
        {"inputs": input_spec(example_inputs), "where": where[:MAX_RECORDED]} if where else None
    )
    if specialised:
        log.warning(
            "surgeon: %s branches on sizes (%s); its graph is specialised to the example "
            "inputs' sizes (the model's own forward is not)",
            type(model).__name__,
            where[0],
        )
    output = propagate_shapes(gm, example_inputs)
    if check:
        check_trace(model, example_inputs, output)
    how = "specialised" if specialised else "symbolic"
    return Captured(gm, output, how, specialised, auto, checked=check)


def trace(
    model: torch.nn.Module,
    example_inputs: Any,
    *,
    leaf_modules: Iterable[type[torch.nn.Module] | torch.nn.Module | str] = (),
    check: bool = True,
) -> fx.GraphModule:
    """The graph of :func:`capture`, for callers that need nothing else."""
    return capture(model, example_inputs, leaf_modules=leaf_modules, check=check).gm
