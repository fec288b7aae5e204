"""The public entry points: ``slim`` and ``analyze``."""

from __future__ import annotations

import contextlib
import copy
import gc
import logging
import numbers
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from surgeon.cost import as_args
from surgeon.errors import SurgeonInputError, SurgeonPassError
from surgeon.graph import ChannelGraph, build_channel_graph
from surgeon.importance import DATA_CRITERIA, check_criterion, collect_stats, iter_batches
from surgeon.passes import (
    ChannelPrunePass,
    CompensatePass,
    PassManager,
    PropagatePass,
    PrunePlan,
    ResizePass,
)
from surgeon.passes.compensate import recalibrate_norms
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
    data: Iterable[Any] | None = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    compensate: bool = True,
) -> nn.Module:
    """Remove ``ratio`` of the channels of every prunable group, physically.

    Args:
        model: the network; left untouched unless ``inplace=True`` (then its submodules are
            resized and reused by the result, and the model itself must no longer be called).
        ratio: fraction of each prunable group's channels removed, ``0 <= ratio < 1``. With
            ``0`` nothing new is pruned, but channels that are already dead (all-zero filters,
            zero norm scales) are removed: the function is unchanged.
        example_inputs: a tensor, a tuple of tensors or a dict of keyword tensors.
        importance: the criterion, aggregated over each channel class: ``"l2"`` / ``"l1"``
            weight magnitude, ``"bn_scale"`` (|gamma| of the norms), ``"random"`` (a baseline),
            or, from gradients on ``data``, ``"taylor"`` (|activation x gradient| at every
            consumer input, normalised per input) and ``"grad"`` (|w x dL/dw|).
        scope: ``"local"`` (the same ratio in every group) or ``"global"`` (one threshold over
            scores normalised per group, at most ``max_group_ratio`` of any group).
        round_to: keep a multiple of this many channels per group.
        ignore: modules (or qualified names) whose parameter shapes must not change.
        leaf_modules: module types or instances torch.fx must not trace into.
        data: an iterable of ``(input, target)`` batches (a DataLoader, a list): needed by
            ``taylor`` and ``grad``; with any criterion it also gives compensation measured
            means. One pass is made over it, in eval mode, on a copy of the model.
        loss_fn: ``loss_fn(output, target)`` -> scalar tensor, for ``taylor`` and ``grad``.
        compensate: fold the expected value of every removed channel into its consumers (a
            following batch norm's running mean, else the consumer's bias), so the slim model
            loses less before fine-tuning. The expected value is measured on ``data`` when
            given, else derived from the batch norm that produced the channel; channels with
            neither are not compensated. With ``data``, the removed inputs of each consumer
            are first regressed on its kept ones (``x_R ~ A x_K + c``, from measured moments)
            and ``W_R A`` is added to the kept weights, and afterwards the batch norms'
            running statistics are re-estimated on it (one pass, no gradients). Off:
            ``compensate=False``.

    Returns:
        a ``torch.fx.GraphModule`` with the same inputs and output shapes that trains like any
        module.
    """
    return _slim(**locals())


def _slim(
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
    data: Iterable[Any] | None = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    compensate: bool = True,
    original: dict[int, int] | None = None,
    kept: dict[str, dict[int, Any]] | None = None,
) -> fx.GraphModule:
    """``slim``, plus what iterative schedules need: ``original`` class counts per group (the
    ratio is then cumulative over earlier steps; an empty dict is filled with this model's) and ``kept``, filled with the original indices
    each sliced tensor kept."""
    ratio = _check_ratio(ratio)
    check_criterion(importance, data, loss_fn)
    if not isinstance(compensate, bool):
        raise SurgeonInputError(f"compensate={compensate!r}: use True or False")
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
        if original is not None and not original:  # the first step: these are the originals
            original.update({g.index: g.n_classes for g in graph.groups})
        elif original is not None and (
            len(original) != len(graph.groups)
            or any(g.n_classes > original.get(g.index, -1) for g in graph.groups)
        ):
            raise SurgeonPassError(
                "the model's channel groups changed between prune steps (a resize merged or "
                "split them), so the schedule cannot track the original counts; prune in one "
                "step (schedule='oneshot') or report the model"
            )
        if data is not None and iter(data) is data:  # type: ignore[call-overload]
            data = list(data)  # a one-shot iterator: it is read twice (scores, norms)
        stats = None
        if ratio > 0 and (importance in DATA_CRITERIA or (compensate and data is not None)):
            stats = collect_stats(
                gm,
                graph,
                data,  # type: ignore[arg-type]
                loss_fn,
                taylor=importance == "taylor",
                grads=importance == "grad",
                means=compensate,
            )
        resize = ResizePass(plan, example_inputs)
        passes = [
            ChannelPrunePass(
                plan,
                ratio,
                importance=importance,
                scope=scope,
                round_to=round_to,
                ignore=ignored,
                max_group_ratio=max_group_ratio,
                stats=stats,
                original=original,
            )
        ]
        if compensate:
            passes.append(
                CompensatePass(
                    plan,
                    stats.means if stats is not None else None,
                    stats.moments if stats is not None else None,
                )
            )
        passes += [PropagatePass(plan, ignore=ignored), resize]
        result = PassManager(passes).run(gm)
        gm = result.module
        if compensate and data is not None and plan.n_removed():
            recalibrate_norms(gm, iter_batches(data))
            resize.output = _run(gm, example_inputs)
        _self_check(gm, expected, resize.output)
        previous = (
            getattr(model, "meta", {}).get(PLAN_KEY) if isinstance(model, fx.GraphModule) else None
        )
        gm.meta[PLAN_KEY] = {
            **plan.to_record(),
            "model": previous["model"] if previous else type(model).__name__,
            "inputs": input_spec(example_inputs),
            "leaf_modules": sorted(_leaf_name(m) for m in leaf_modules),
        }
        if previous:
            gm.meta[PLAN_KEY]["previous"] = copy.deepcopy(previous)
        if kept is not None:
            kept.update(resize.kept)
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


def _run(gm: fx.GraphModule, example_inputs: Any) -> Any:
    args, kwargs = as_args(example_inputs)
    with torch.no_grad():
        return gm(*args, **kwargs)


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
