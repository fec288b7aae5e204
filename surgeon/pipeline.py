"""The pipeline: a model through [whole layers and experts ->] capture -> channel graph -> block
-> plan -> passes -> verify -> adopt, each stage a function of values that returns what it made.

:func:`slim_model` runs it for :func:`surgeon.slim` (and for every candidate the
``round_to="auto"`` search times, and for every step of :func:`surgeon.prune_iteratively`);
:func:`analyze_model` runs its first two stages for :func:`surgeon.analyze`; :func:`replay`
runs it with a saved plan in place of the decision, for :func:`surgeon.load`. Nothing else
builds the flow by hand.

A pass that fails at a node blocks the groups around that node and the model goes through
again from a fresh copy (the group is refused, never the model), at most
:data:`MAX_BLOCK_RETRIES` groups in all.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import gc
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.utils._pytree as pytree

from surgeon.adopt import adopt, int_args, returned_form, with_config
from surgeon.capture import Captured, as_args, capture, check_trace, input_spec
from surgeon.copying import unshare_parameters, working_copy
from surgeon.diagnose import dense_macs, logged_diagnosis
from surgeon.errors import SurgeonError, SurgeonInputError, SurgeonPassError
from surgeon.experts import cut_experts, find_moes
from surgeon.graph import ChannelGraph, build_channel_graph
from surgeon.hardware import channel_multiple, grouped_widths
from surgeon.importance import (
    DATA_CRITERIA,
    GRADIENT_CRITERIA,
    DataStats,
    collect_stats,
    iter_batches,
    with_own_loss,
)
from surgeon.keys import DIAGNOSIS_KEY, PLAN_KEY, STATE_KEY, plan_of
from surgeon.modelconfig import changed_counts, config_follows
from surgeon.names import leaf_name, resolve_ignore, resolve_leaves
from surgeon.options import SlimOptions, check_grouped
from surgeon.passes import (
    ChannelPrunePass,
    CompensatePass,
    Pass,
    PassManager,
    PropagatePass,
    ResizePass,
    SurgeryState,
)
from surgeon.passes.compensate import recalibrate_norms
from surgeon.stacks import cut_stacks, find_stacks
from surgeon.verify import output_shapes, refuse_nan, self_check

__all__ = [
    "Slimmed",
    "slim_model",
    "analyze_model",
    "replay",
    "channel_graph",
    "with_blocked",
    "surgery_passes",
    "gc_paused",
    "MAX_BLOCK_RETRIES",
]

log = logging.getLogger(__name__)

MAX_BLOCK_RETRIES = 16


@dataclass(frozen=True)
class Slimmed:
    """What one run of the pipeline made.

    Attributes:
        model: the slim model, in the form ``options.returns`` asked for; its plan is in
            ``model.meta[PLAN_KEY]``.
        state: the final decision (what each group lost, what each tensor kept).
        counts: class count per group of the model as it was captured (the originals an
            iterative schedule keeps its ratio to).
    """

    model: nn.Module
    state: SurgeryState
    counts: dict[int, int]


# -- settings the stages read --------------------------------------------------------------
def prepared(model: nn.Module, options: SlimOptions) -> SlimOptions:
    """``options`` with ``ignore`` and ``leaf_modules`` resolved against ``model`` (names and
    types, which still match in a copy) and one-shot data listed (it is read more than once)."""
    if not isinstance(model, nn.Module):
        raise SurgeonInputError(
            f"model must be a torch.nn.Module, got {type(model).__name__}", option="model"
        )
    options = options.replace(
        ignore=resolve_ignore(model, options.ignore),
        leaf_modules=resolve_leaves(model, options.leaf_modules),
    )
    data = options.data
    if data is not None and iter(data) is data:  # type: ignore[call-overload]
        options = options.replace(data=list(data))
    if options.importance in GRADIENT_CRITERIA and options.loss_fn is None:
        data, loss_fn = with_own_loss(model, list(options.data or ()), None, options.importance)
        options = options.replace(data=data, loss_fn=loss_fn)
    return options


def grouped_form(
    grouped: str | tuple[int, ...] | None, provider: str = "cpu", threads: int | None = 1
) -> str | tuple[int, ...]:
    """What the channel graph takes for ``grouped`` (validated; None: ``"offsets"``): ``"auto"``
    becomes the in-group widths measured on ``provider`` (this CPU, one thread) to lose whole
    groups faster."""
    grouped = "offsets" if grouped is None else check_grouped(grouped)
    return grouped_widths(provider, threads=threads) if grouped == "auto" else grouped


def whole_groups_kept(model: nn.Module, grouped: str | tuple[int, ...]) -> list[str] | None:
    """The grouped convs (node names) that lost whole groups when ``model``, a slim model, was
    made with measured widths: slimmed again with widths, they keep that choice, so a conv
    narrowed by offsets does not switch now. None: nothing to keep."""
    earlier = plan_of(model)
    if not earlier or not isinstance(earlier.get("grouped"), list) or isinstance(grouped, str):
        return None
    return earlier.get("whole_groups")


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Analysis allocates many small objects that live until it ends: pausing the cyclic
    collector keeps its cost linear in graph size (each full collection would walk them all)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# -- 1. capture ---------------------------------------------------------------------------
def capture_copy(
    model: nn.Module, inputs: Any, options: SlimOptions, *, check: bool
) -> tuple[nn.Module, Captured]:
    """The model the passes will cut (``model`` itself with ``inplace``, else a copy sharing
    its parameters) and its capture."""
    work = model if options.inplace else working_copy(model)
    return work, capture(work, inputs, leaf_modules=options.leaf_modules, check=check)


# -- 2. channel graph -----------------------------------------------------------------------
def channel_graph(
    gm: fx.GraphModule,
    attention: str,
    grouped: str | tuple[int, ...],
    whole: Iterable[str] | None = None,
) -> ChannelGraph:
    """:func:`build_channel_graph`. With measured widths (``grouped`` a tuple), a grouped conv
    whose whole groups leave its channels unprunable (a GroupNorm or a channel shuffle ties
    every group into one class, where narrowing each group prunes) loses offsets instead: the
    graph is built again without it. ``whole`` (node names) keeps an earlier choice."""
    whole = None if whole is None else set(whole)
    graph = build_channel_graph(gm, attention=attention, grouped=grouped, whole=whole)
    if isinstance(grouped, str) or whole is not None:
        return graph
    stuck = {
        n
        for n, space in graph.whole_groups.items()
        if not graph.groups[graph.group_of[space]].prunable
    }
    if not stuck:
        return graph
    kept = set(graph.whole_groups) - stuck
    return build_channel_graph(gm, attention=attention, grouped=grouped, whole=kept)


def analyze_model(model: nn.Module, inputs: Any, options: SlimOptions) -> ChannelGraph:
    """Capture a copy of ``model`` and return its channel graph; ``model`` is not modified.
    With a target, the graph's ``planned`` says what its first round would remove."""
    options = prepared(model, options)
    if options.target is not None:
        from surgeon.autotune import planned_graph

        return planned_graph(model, inputs, options)
    with gc_paused():
        _, captured = capture_copy(model, inputs, options, check=True)
        return channel_graph(captured.gm, options.attention, grouped_form(options.grouped))


# -- 0. whole layers and experts (structures with "layers" / "experts") -----------------------
def cut_wholes(
    model: nn.Module,
    inputs: Any,
    options: SlimOptions,
    chosen: Mapping[str, Mapping[str, Iterable[int]]] | None = None,
) -> tuple[nn.Module, dict[str, list[dict[str, Any]]]]:
    """The model without the experts and stack layers ``options`` take (scored on the
    calibration data; ``chosen``: a saved plan's, by kind and path), cut from a copy sharing
    its parameters (``model`` itself with ``inplace``), and the record per layer / stack.
    ``model`` itself when there is nothing to cut. The model keeps its class."""
    kinds = [
        (kind, cut)
        for kind, find, cut in (
            ("experts", find_moes, cut_experts),
            ("layers", find_stacks, cut_stacks),
        )
        if kind in options.structures and (chosen is None or kind in chosen) and find(model)
    ]
    if not kinds:
        return model, {}
    work = model if options.inplace else working_copy(model)
    batches = calibration(inputs, options)
    ratio = options.ratio if options.target is None else 0.0
    records = {
        kind: cut(work, batches, ratio, None if chosen is None else chosen[kind])
        for kind, cut in kinds
    }
    if not any(r["removed"] for rs in records.values() for r in rs):
        return model, records
    return work, records


# -- 2b. whole blocks (structures with "layers") ------------------------------------------------
def calibration(inputs: Any, options: SlimOptions) -> list[Any]:
    """What blocks are scored and their constants measured on: the example inputs, and the
    inputs of ``options.data``'s batches."""
    return [inputs, *(batch[0] for batch in options.data or ())]


def cut_blocks(
    gm: fx.GraphModule,
    inputs: Any,
    options: SlimOptions,
    keys: Iterable[tuple[str, int]] | None,
) -> list[Any]:
    """Remove from ``gm`` (in place) the residual branches ``keys`` names, or, where none
    are named, those that compute a constant (exact); nothing without ``"layers"`` in
    ``options.structures``. Returns the blocks removed."""
    if "layers" not in options.structures:
        return []
    from surgeon.blocks import EXACT, find_blocks, remove_blocks, score_blocks

    found = find_blocks(gm)
    if keys is not None:
        wanted = {tuple(k) for k in keys}
        found = [b for b in found if b.key() in wanted]
    if not found:
        return []
    scored = score_blocks(gm, found, calibration(inputs, options))
    chosen = scored if keys is not None else [b for b in scored if b.score <= EXACT]
    if not chosen:
        return []
    before = _run(gm, inputs) if keys is None else None
    removed = remove_blocks(gm, chosen, calibration(inputs, options))
    if before is not None:  # computed a constant: the graph must compute what it did
        after = _run(gm, inputs)
        for a, b in zip(pytree.tree_leaves(before), pytree.tree_leaves(after), strict=True):
            if isinstance(a, torch.Tensor) and not torch.allclose(a, b, rtol=1e-4, atol=1e-5):
                raise SurgeonPassError(
                    f"cutting the constant block(s) {[r.add for r in removed]} changed the "
                    "model's output (a branch shares state with its skip); slim without "
                    "'layers' in structures, or report the model"
                )
    return removed


# -- 3. block -----------------------------------------------------------------------------
def with_blocked(graph: ChannelGraph, blocked: Mapping[int | str, str]) -> ChannelGraph:
    """``graph`` with the groups of ``blocked`` (index -> reason) blocked: a new graph value
    (the groups it blocks are new; the rest is shared with ``graph``)."""
    if not blocked:
        return graph
    groups = list(graph.groups)
    for key, why in blocked.items():
        g = groups[int(key)]
        if why not in g.reasons:
            groups[int(key)] = dataclasses.replace(g, reasons=[*g.reasons, why])
    out = copy.copy(graph)
    out.groups = groups
    return out


def blocked_after(
    graph: ChannelGraph, exc: SurgeonPassError, blocked: Mapping[int, str]
) -> dict[int, str] | None:
    """``blocked`` and the prunable groups around the node a pass failed at (the node and what
    its sizes are read from), so the next run leaves them alone; None when there is nothing
    new to block or the retries are spent."""
    if exc.node is None or len(blocked) >= MAX_BLOCK_RETRIES:
        return None
    node = next((n for n in graph.gm.graph.nodes if n.name == exc.node), None)
    if node is None:
        return None
    names = {node.name, *_size_sources(node)}
    found = {
        gi
        for (name, _), gi in graph.group_of.items()
        if name in names and graph.groups[gi].prunable
    }
    if not found:
        return None
    why = f"resizing it failed at node '{exc.node}' (this group is left as it is)"
    log.warning("surgeon: %s; retrying with %d group(s) blocked: %s", exc, len(found), why)
    return {**blocked, **dict.fromkeys(found, why)}


def _size_sources(node: fx.Node) -> set[str]:
    """The tensors ``node`` reads, directly or through size arithmetic (``C // heads`` from
    ``x.shape``): the spaces a failed resize at ``node`` depends on."""
    out: set[str] = set()
    todo, seen = list(node.all_input_nodes), set()
    while todo:
        n = todo.pop()
        if n.name in seen:
            continue
        seen.add(n.name)
        out.add(n.name)
        if not hasattr(n.meta.get("tensor_meta"), "shape"):  # a Python value: follow it up
            todo.extend(n.all_input_nodes)
    return out


# -- 4. plan ------------------------------------------------------------------------------
def plan(
    gm: fx.GraphModule,
    graph: ChannelGraph,
    inputs: Any,
    options: SlimOptions,
    original: Mapping[int, int] | None,
) -> SurgeryState:
    """The decision the passes start from: nothing removed yet, with what the criterion and
    compensation measured on ``options.data`` and the class counts the ratio refers to
    (``original``: the model before earlier prune steps; None: this one)."""
    if original is not None and (
        len(original) != len(graph.groups)
        or any(g.n_classes > original.get(g.index, -1) for g in graph.groups)
    ):
        raise SurgeonPassError(
            "the model's channel groups changed between prune steps (a resize merged or split "
            "them), so the schedule cannot track the original counts; prune in one step "
            "(schedule='oneshot') or report the model"
        )
    return SurgeryState.start(graph, inputs, stats=measured(gm, graph, options), original=original)


def measured(gm: fx.GraphModule, graph: ChannelGraph, options: SlimOptions) -> DataStats | None:
    """What the criterion and compensation need from ``options.data`` (None: nothing)."""
    crit = options.importance
    wanted = crit in DATA_CRITERIA or (options.compensate and options.data is not None)
    if not options.prunes or not wanted:
        return None
    return collect_stats(
        gm,
        graph,
        options.data,  # type: ignore[arg-type]
        options.loss_fn,
        taylor=crit == "taylor",
        grads=crit == "grad",
        means=options.compensate or crit == "fluctuation",
        squares=crit in ("activation", "fluctuation"),
    )


# -- 5. passes ----------------------------------------------------------------------------
def surgery_passes(options: SlimOptions, decision: Mapping[int, Any] | None = None) -> list[Pass]:
    """The passes ``slim`` runs for ``options``: prune (or apply ``decision``, a target's
    removed masks per group), [compensate], propagate, resize."""
    passes: list[Pass] = [ChannelPrunePass(options, decision)]
    if options.compensate:
        passes.append(CompensatePass(new_bias=options.returns == "graph"))
    ignore = tuple(str(i) for i in options.ignore)
    return passes + [PropagatePass(ignore=ignore), ResizePass()]


def run_passes(
    gm: fx.GraphModule, state: SurgeryState, passes: list[Pass]
) -> tuple[fx.GraphModule, SurgeryState, dict[str, Any]]:
    """Run ``passes`` on ``gm`` from ``state``; the slim graph, the final decision and the
    passes' statistics. The state travels in ``gm.meta[STATE_KEY]`` between passes only."""
    gm.meta[STATE_KEY] = state
    try:
        result = PassManager(passes).run(gm)
    except BaseException:
        gm.meta.pop(STATE_KEY, None)
        raise
    return result.module, result.module.meta.pop(STATE_KEY), result.stats


# -- the whole ----------------------------------------------------------------------------
def slim_model(
    model: nn.Module,
    inputs: Any,
    options: SlimOptions,
    original: Mapping[int, int] | None = None,
    decision: Mapping[int, Any] | None = None,
    blocks: Iterable[tuple[str, int]] | None = None,
) -> Slimmed:
    """Slim ``model`` as ``options`` say (``round_to="auto"`` included: then the timed search
    of :mod:`surgeon.autotune` runs this pipeline once per candidate; a target: then
    :func:`surgeon.autotune.slim_to_target` runs it once per round, each with its
    ``decision``, and with ``"layers"`` in ``structures`` its ``blocks``, ``(sum node, side)``
    pairs). ``original``: class counts per group before earlier prune steps, which make the
    ratio cumulative."""
    options = prepared(model, options)
    auto = options.round_to == "auto"
    if options.target is not None and decision is None:
        from surgeon.autotune import slim_to_target

        return slim_to_target(model, inputs, options)
    if auto and not options.inplace:  # inplace: one try only, the probe's multiple
        from surgeon.autotune import timed_round_to

        return timed_round_to(model, inputs, options, original=original)
    if auto:
        options = options.replace(round_to=channel_multiple("cpu", threads=1))
    grouped = grouped_form(
        options.grouped if options.grouped is not None else "auto" if auto else None,
        *_where(options),
    )
    with gc_paused():
        return _slim_once(model, inputs, options, original, grouped, auto, decision, blocks)


def _where(options: SlimOptions) -> tuple[str, int | None]:
    """The provider and thread count the measured choices are made for: the target's, else
    this CPU with one thread."""
    t = options.target
    return (t.device, t.threads) if t is not None and t.measured else ("cpu", 1)


def _slim_once(
    model: nn.Module,
    inputs: Any,
    options: SlimOptions,
    original: Mapping[int, int] | None,
    grouped: str | tuple[int, ...],
    auto: bool,
    decision: Mapping[int, Any] | None = None,
    blocks: Iterable[tuple[str, int]] | None = None,
) -> Slimmed:
    """Stages 0-7 for resolved ``options``; a failed resize blocks its groups and goes again."""
    model, wholes = cut_wholes(model, inputs, options)
    if "channels" not in options.structures:  # the ratio is the layers' / experts' only
        options = options.replace(ratio=0.0)
    whole = whole_groups_kept(model, grouped)
    # The user's own forward on the slim model is compared with the slim graph before the own
    # class comes back: that covers the check that the graph computes what the model does,
    # which then runs (on the untouched input model) only where the graph comes back.
    defer = not options.inplace and options.returns != "graph"
    blocked: dict[int, str] = {}
    while True:
        work, captured = capture_copy(model, inputs, options, check=not defer)
        finite = captured.finite
        if not all(finite):
            refuse_nan(model, inputs)
        graph = None
        try:
            removed = cut_blocks(captured.gm, inputs, options, blocks)
            graph = with_blocked(
                channel_graph(captured.gm, options.attention, grouped, whole), blocked
            )
            sizes_before = int_args(captured.gm)
            expected = output_shapes(captured.gm)
            macs_before = dense_macs(captured.gm)
            state = plan(captured.gm, graph, inputs, options, original)
            gm, state, stats = run_passes(captured.gm, state, surgery_passes(options, decision))
            break
        except Exception as exc:
            if not captured.checked:  # a graph that is not the model's function explains it
                check_trace(model, inputs, captured.output)
            retry = (
                blocked_after(graph, exc, blocked)
                if isinstance(exc, SurgeonPassError) and not options.inplace and graph is not None
                else None
            )
            if retry is None:
                raise
            blocked = retry
    if not options.inplace:  # the weights no pass cut are still the input model's
        unshare_parameters(model, gm, work)
    output = state.output
    if options.compensate and options.data is not None and state.n_removed():
        recalibrate_norms(gm, iter_batches(options.data))
        output = _run(gm, inputs)
    self_check(gm, expected, output, model, inputs, finite)
    gm.meta[PLAN_KEY] = plan_record(
        model, state, inputs, options, captured, graph, blocked, grouped, auto
    )
    gm.meta[PLAN_KEY]["blocks"] = [b.to_record() for b in removed]
    gm.meta[PLAN_KEY].update(wholes)
    gm.meta[DIAGNOSIS_KEY] = logged_diagnosis(gm, graph, macs_before, options.ratio)
    log.info("slim: %s", stats)
    changed = changed_counts(state)
    out = returned_form(model, work, gm, inputs, sizes_before, options, output, captured, changed)
    if gm.meta[PLAN_KEY].get("config") != "updated":  # not followed already, for its forward
        out = config_follows(model, out, gm, state, inputs)
    counts = {g.index: g.n_classes for g in graph.groups}
    return Slimmed(out, state, counts)


def _run(gm: fx.GraphModule, inputs: Any) -> Any:
    args, kwargs = as_args(inputs)
    with torch.no_grad():
        return gm(*args, **kwargs)


def plan_record(
    model: nn.Module,
    state: SurgeryState,
    inputs: Any,
    options: SlimOptions,
    captured: Captured,
    graph: ChannelGraph,
    blocked: Mapping[int, str],
    grouped: str | tuple[int, ...],
    auto: bool,
) -> dict[str, Any]:
    """What ``PLAN_KEY`` keeps (see :data:`surgeon.keys.PLAN_KEY`), JSON-able."""
    previous = plan_of(model)
    record = {
        **state.to_record(),
        "model": previous["model"] if previous else type(model).__name__,
        "inputs": input_spec(inputs),
        "leaf_modules": sorted(leaf_name(m) for m in options.leaf_modules),
        "attention": options.attention,
    }
    if previous:
        record["previous"] = copy.deepcopy(previous)
    return {
        **record,
        "widths": group_widths(graph, state),
        "blocked": dict(blocked),
        "round_to": options.round_to,
        "round_to_auto": auto,
        "grouped": grouped if isinstance(grouped, str) else list(grouped),
        "whole_groups": sorted(graph.whole_groups),
        **captured.record(),  # how it was captured, where sizes were specialised, auto leaves
    }


def group_widths(graph: ChannelGraph, state: SurgeryState) -> list[dict[str, Any]]:
    """Per group with parameters, in model order: a name (its first producer), its channels
    before and after, and for a group that could not prune, why (its first reason)."""
    out = []
    for g in graph.groups:
        if not g.params:
            continue
        owners = [sl.owner for sl in g.params if sl.role == "producer"] or [
            sl.owner for sl in g.params
        ]
        mask = state.removed.get(g.index)
        gone = g.channels_in(list(np.flatnonzero(mask))) if mask is not None else 0
        entry: dict[str, Any] = {
            "group": g.index,
            "name": owners[0] or "<root>",
            "channels": [g.channels, g.channels - gone],
        }
        if not g.prunable:
            entry["reason"] = g.reasons[0] if g.reasons else "a single channel class"
            where = _blocked_at(graph, g)
            if where:
                entry["source"] = where
        out.append(entry)
    return out


def _blocked_at(graph: ChannelGraph, g: Any) -> str | None:
    """The user's source line of the node whose rule gave ``g`` its first reason
    (``file.py:12: x = x.view(...)``), from the trace's stack (None: not known)."""
    if not g.reasons:
        return None
    spaces = set(g.spaces)
    nodes = {n.name: n for n in graph.gm.graph.nodes}
    for name, rec in graph.records.items():
        for s, why in rec.blocks:
            if s in spaces and g.reasons[0].startswith(why):
                node = nodes.get(name) or nodes.get(s[0])  # a record of the whole graph
                return user_line(getattr(node, "stack_trace", None))
    return None


def user_line(stack: str | None) -> str | None:
    """The innermost frame of a node's ``stack_trace`` outside torch and surgeon, as
    ``file.py:12: code``."""
    import os
    import re

    if not stack:
        return None
    frames = re.findall(r'File "([^"]+)", line (\d+), in [^\n]*\n\s*([^\n]*)', stack)
    ours = (os.sep + "surgeon" + os.sep, os.sep + "torch" + os.sep)
    for path, line, code in reversed(frames):
        if not any(part in path for part in ours):
            return f"{os.path.basename(path)}:{line}: {code.strip()}"
    return None


# -- a saved plan, replayed ------------------------------------------------------------------
class ReplayError(SurgeonError):
    """A saved plan does not fit the model it is replayed on; ``stage`` says where."""

    def __init__(self, message: str, stage: str) -> None:
        super().__init__(message)
        self.stage = stage


def replay(model: nn.Module, record: Mapping[str, Any], inputs: Any, leaves: tuple) -> nn.Module:
    """The slim model a plan ``record`` describes, cut from a copy of ``model`` by the same
    stages :func:`slim_model` runs, the recorded decision standing in for the prune pass.
    Raises :class:`ReplayError` (``stage``: ``"capture"``, ``"plan"``, ``"record"`` or
    ``"passes"``) where the plan does not fit."""
    try:
        grouped = record.get("grouped", "offsets")
        grouped = grouped if isinstance(grouped, str) else tuple(grouped)
        # a plan that names its whole-group convs keeps them; one that does not chose by width
        whole = None if isinstance(grouped, str) else record.get("whole_groups")
        attention = record.get("attention", "heads")
        options = SlimOptions(0.0, leaf_modules=leaves, attention=attention)
        chosen = {
            kind: {r["path"]: r["removed"] for r in record[kind] if r["removed"]}
            for kind in ("experts", "layers")
            if any(r["removed"] for r in record.get(kind, ()))
        }
        if chosen:  # the layers and experts it lost, as they were chosen
            every = options.replace(structures=("channels", "heads", *chosen))
            model, _ = cut_wholes(model, inputs, every, chosen)
        work, captured = capture_copy(model, inputs, options, check=True)
        before = int_args(captured.gm)
        keys = [(b["add"], int(b["side"])) for b in record.get("blocks", [])]
        if keys:  # the blocks it lost (their constants then come from the saved weights)
            layered = options.replace(structures=("channels", "heads", "layers"))
            if len(cut_blocks(captured.gm, inputs, layered, keys)) != len(keys):
                raise ReplayError("the saved plan's blocks are not in this model", "plan")
        graph = with_blocked(
            channel_graph(captured.gm, options.attention, grouped, whole), record.get("blocked", {})
        )
        state = SurgeryState.start(graph, inputs)
    except (SurgeonError, RuntimeError, TypeError, ValueError) as exc:
        raise ReplayError(str(exc), "capture") from exc
    try:
        state = state.with_record(record)
    except SurgeonPassError as exc:
        raise ReplayError(str(exc), "plan") from exc
    except (IndexError, KeyError, TypeError, ValueError) as exc:
        raise ReplayError(str(exc), "record") from exc
    try:
        gm, _, _ = run_passes(captured.gm, state, [ResizePass()])
    except (SurgeonError, RuntimeError, IndexError, TypeError, ValueError) as exc:
        raise ReplayError(str(exc), "passes") from exc
    unshare_parameters(model, gm, work)  # the saved weights are loaded into these in place
    if record.get("form") == "module":  # it was slimmed into its own class: so is the copy
        module, why, _ = adopt(work, gm, inputs, before)
        followed = None
        if module is None:  # a forward that reads its config: the config follows first
            followed = with_config(work, gm, inputs, None, changed_counts(state))
        if followed is not None:
            followed.meta = {PLAN_KEY: copy.deepcopy(dict(record))}
            return followed
        if module is not None:  # its config follows, as slim's did
            module.meta = {PLAN_KEY: copy.deepcopy(dict(record))}
            return config_follows(model, module, gm, state, inputs)
        log.warning(
            "surgeon: %s is loaded as a torch.fx.GraphModule: %s", type(model).__name__, why
        )
    return gm
