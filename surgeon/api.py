"""The public entry points: ``slim`` and ``analyze``."""

from __future__ import annotations

import contextlib
import copy
import gc
import logging
import numbers
from collections.abc import Iterable
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from surgeon.errors import SurgeonInputError, SurgeonPassError
from surgeon.graph import ChannelGraph, build_channel_graph
from surgeon.importance import CRITERIA
from surgeon.passes import ChannelPrunePass, PassManager, PropagatePass, PrunePlan, ResizePass
from surgeon.trace import trace

__all__ = ["slim", "analyze", "PLAN_KEY", "input_spec", "inputs_from_spec"]

log = logging.getLogger(__name__)

Leaf = type[nn.Module] | nn.Module


@contextlib.contextmanager
def _gc_paused():
    """Analysis allocates many small objects that live until it ends: pausing the cyclic
    collector keeps its cost linear in graph size (each full collection would walk them all)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def analyze(
    model: nn.Module, example_inputs: Any, *, leaf_modules: Iterable[Leaf] = ()
) -> ChannelGraph:
    """Trace ``model`` and return its channel graph (groups, classes, blocked reasons).

    ``print(surgeon.analyze(model, x))`` lists every group that holds parameters, with its
    members, channel count and, when blocked, why. The model is not modified.
    """
    with _gc_paused():
        gm = trace(copy.deepcopy(model), example_inputs, leaf_modules=leaf_modules)
        return build_channel_graph(gm)


def _check_ratio(ratio: Any) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real):
        raise SurgeonInputError(
            f"ratio={ratio!r} is not a number: it is the fraction of each group's channels to remove, "
            "0 <= ratio < 1 (e.g. 0.5)"
        )
    if not 0 <= float(ratio) < 1:
        raise SurgeonInputError(
            f"ratio={ratio!r} is out of range: it is the fraction of each group's channels to remove, "
            "a number with 0 <= ratio < 1 (e.g. 0.5)"
        )
    return float(ratio)


def _ignore_names(model: nn.Module, ignore: Iterable[nn.Module | str]) -> list[str]:
    names = {id(m): n for n, m in model.named_modules()}
    out = []
    for item in ignore:
        if isinstance(item, str):
            if item not in dict(model.named_modules()):
                raise SurgeonInputError(
                    f"ignore names {item!r}, which is not a submodule of the model"
                )
            out.append(item)
        elif isinstance(item, nn.Module) and id(item) in names:
            out.append(names[id(item)])
        else:
            raise SurgeonInputError(
                f"ignore holds {type(item).__name__}, which is not a submodule of the model; pass the "
                "module objects (or their qualified names) that must keep their shapes"
            )
    return out


def slim(
    model: nn.Module,
    ratio: float,
    example_inputs: Any,
    *,
    importance: str = "l2",
    scope: str = "local",
    round_to: int | None = None,
    ignore: Iterable[nn.Module | str] = (),
    inplace: bool = False,
    leaf_modules: Iterable[Leaf] = (),
    max_group_ratio: float = 0.9,
) -> nn.Module:
    """Remove ``ratio`` of the channels of every prunable group, physically.

    Args:
        model: the network; left untouched unless ``inplace=True`` (then its submodules are
            resized and reused by the result, and the model itself must no longer be called).
        ratio: fraction of each prunable group's channels removed, ``0 <= ratio < 1``. With
            ``0`` nothing new is pruned, but channels that are already dead (all-zero filters,
            zero norm scales) are removed: the function is unchanged.
        example_inputs: a tensor, a tuple of tensors or a dict of keyword tensors.
        importance: ``"l2"`` or ``"l1"`` magnitude, aggregated over each channel class.
        scope: ``"local"`` (the same ratio in every group) or ``"global"`` (one threshold over
            scores normalised per group, at most ``max_group_ratio`` of any group).
        round_to: keep a multiple of this many channels per group.
        ignore: modules (or qualified names) whose parameter shapes must not change.
        leaf_modules: module types or instances torch.fx must not trace into.

    Returns:
        a ``torch.fx.GraphModule`` with the same inputs and output shapes that trains like any
        module.
    """
    ratio = _check_ratio(ratio)
    if importance not in CRITERIA:
        raise SurgeonInputError(
            f"importance={importance!r} is not a known criterion; use one of {CRITERIA}"
        )
    if scope not in ("local", "global"):
        raise SurgeonInputError(f"scope={scope!r}: use 'local' or 'global'")
    if round_to is not None and (
        isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1
    ):
        raise SurgeonInputError(f"round_to={round_to!r}: use None or a whole number >= 1 (e.g. 8)")
    if not isinstance(model, nn.Module):
        raise SurgeonInputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if (
        isinstance(max_group_ratio, bool)
        or not isinstance(max_group_ratio, numbers.Real)
        or not 0 < max_group_ratio <= 1
    ):
        raise SurgeonInputError(
            f"max_group_ratio={max_group_ratio!r}: use a number with 0 < max_group_ratio <= 1"
        )
    ignored = _ignore_names(model, ignore)
    with _gc_paused():
        work = model if inplace else copy.deepcopy(model)
        gm = trace(work, example_inputs, leaf_modules=leaf_modules)
        expected = _output_shapes(gm)
        graph = build_channel_graph(gm)
        plan = PrunePlan(graph)
        resize = ResizePass(plan, example_inputs)
        result = PassManager(
            [
                ChannelPrunePass(
                    plan,
                    ratio,
                    importance=importance,
                    scope=scope,
                    round_to=round_to,
                    ignore=ignored,
                    max_group_ratio=max_group_ratio,
                ),
                PropagatePass(plan, ignore=ignored),
                resize,
            ]
        ).run(gm)
        gm = result.module
        _self_check(gm, expected, resize.output)
        gm.meta[PLAN_KEY] = {
            **plan.to_record(),
            "model": type(model).__name__,
            "inputs": input_spec(example_inputs),
            "leaf_modules": sorted(_leaf_name(m) for m in leaf_modules),
        }
        log.info("slim: %s", result.stats)
        return gm


PLAN_KEY = "surgeon.plan"


def _leaf_name(m: Leaf) -> str:
    t = m if isinstance(m, type) else type(m)
    return f"{t.__module__}.{t.__qualname__}"


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


def inputs_from_spec(spec: Any) -> Any:
    """Zero tensors of the recorded shapes and dtypes (for re-tracing a recorded plan)."""
    if "shape" in spec:
        return torch.zeros(spec["shape"], dtype=getattr(torch, spec["dtype"]))
    if "dict" in spec:
        return {k: inputs_from_spec(v) for k, v in spec["dict"].items()}
    if "tuple" in spec:
        return tuple(inputs_from_spec(v) for v in spec["tuple"])
    return spec["value"]


def _output_shapes(gm: fx.GraphModule) -> list[tuple[int, ...]]:
    out = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
    shapes: list[tuple[int, ...]] = []

    def visit(n: fx.Node) -> fx.Node:
        meta = n.meta.get("tensor_meta")
        if meta is not None and hasattr(meta, "shape"):
            shapes.append(tuple(meta.shape))
        return n

    fx.node.map_arg(out.args, visit)
    return shapes


def _self_check(gm: fx.GraphModule, expected: list[tuple[int, ...]], output: Any) -> None:
    """The slim model's outputs keep their shapes and are finite (from ResizePass's run)."""
    got = _output_shapes(gm)
    if got != expected:
        raise SurgeonPassError(
            f"the slim model's output shapes {got} differ from the original {expected}"
        )
    tensors: list[torch.Tensor] = []
    torch.utils._pytree.tree_map(
        lambda v: tensors.append(v) if isinstance(v, torch.Tensor) else None, output
    )
    for i, t in enumerate(tensors):
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise SurgeonPassError(
                f"the slim model's output {i} has non-finite values on the example inputs; "
                "nothing is returned — report the model, or slim with a smaller ratio"
            )
