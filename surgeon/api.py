"""The public entry points: ``slim`` and ``analyze``."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import gc
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from surgeon.adopt import adopt, int_args
from surgeon.capture import SPECIALISED_KEY
from surgeon.diagnose import dense_macs, diagnose
from surgeon.errors import SurgeonInputError, SurgeonPassError
from surgeon.graph import ChannelGraph, build_channel_graph
from surgeon.hardware import channel_multiple, grouped_widths
from surgeon.importance import DATA_CRITERIA, DataStats, collect_stats, iter_batches
from surgeon.keys import DIAGNOSIS_KEY, PLAN_KEY
from surgeon.modelconfig import update_config
from surgeon.names import leaf_name, resolve_ignore, resolve_leaves
from surgeon.options import Leaf, SlimOptions, check_grouped
from surgeon.passes import (
    STATE_KEY,
    ChannelPrunePass,
    CompensatePass,
    Pass,
    PassManager,
    PropagatePass,
    ResizePass,
    SurgeryState,
    begin,
)
from surgeon.passes.compensate import recalibrate_norms
from surgeon.trace import (
    FINITE_KEY,
    TRACED_KEY,
    as_args,
    check_trace,
    deep_copy,
    input_spec,
    inputs_from_spec,
    nonfinite,
    trace,
    unshare_parameters,
)

__all__ = [
    "slim",
    "analyze",
    "options_from",
    "surgery_passes",
    "PLAN_KEY",
    "gc_paused",
    "input_spec",
    "inputs_from_spec",
]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def gc_paused():
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
    model: nn.Module,
    example_inputs: Any,
    *,
    leaf_modules: Iterable[Leaf] = (),
    attention: str = "heads",
    grouped: str | tuple[int, ...] = "offsets",
) -> ChannelGraph:
    """Trace ``model`` and return its channel graph (groups, classes, blocked reasons).

    ``print(surgeon.analyze(model, x))`` lists every group that holds parameters, with its
    members, channel count and, when blocked, why. The model is not modified. ``attention``
    and ``grouped`` shape the classes as in :func:`slim`.
    """
    leaves = resolve_leaves(model, leaf_modules)
    with gc_paused():
        gm = trace(_copy(model), example_inputs, leaf_modules=leaves)
        return channel_graph(gm, attention, _grouped_form(grouped))


def channel_graph(
    gm: fx.GraphModule,
    attention: str,
    grouped: str | tuple[int, ...],
    whole: Iterable[str] | None = None,
) -> ChannelGraph:
    """:func:`build_channel_graph`. With measured widths (``grouped`` a tuple), a grouped
    conv whose whole groups leave its channels unprunable (a GroupNorm or a channel shuffle
    ties every group into one class, where narrowing each group prunes) loses offsets
    instead: the graph is built again without it. ``whole`` (node names) keeps the decision
    an earlier slim made, for the same model slimmed again."""
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


def _grouped_form(grouped: str | tuple[int, ...] | None) -> str | tuple[int, ...]:
    """What the channel graph takes for ``grouped`` (validated; None: ``"offsets"``):
    ``"auto"`` becomes the in-group widths measured on this CPU to lose whole groups faster."""
    grouped = "offsets" if grouped is None else check_grouped(grouped)
    return grouped_widths("cpu", threads=1) if grouped == "auto" else grouped


def _copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` that holds the model's own parameter objects (slim never mutates its
    input unless ``inplace=True``: the passes assign new tensors, never change one in place,
    and what is left shared at the end gets a copy, :func:`unshare_parameters`)."""
    try:
        return deep_copy(model, share_parameters=True)
    except RuntimeError as exc:
        if "deepcopy" not in str(exc):
            raise
        raise SurgeonInputError(
            f"the {type(model).__name__} cannot be copied ({exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0]}); the usual cause is the deprecated "
            "torch.nn.utils.weight_norm / spectral_norm, which keep a computed weight: use "
            "torch.nn.utils.parametrizations.weight_norm / spectral_norm, or pass inplace=True"
        ) from exc


def slim(
    model: nn.Module,
    ratio: float | SlimOptions,
    example_inputs: Any,
    *,
    importance: str = "l2",
    scope: str = "local",
    round_to: int | str | None = None,
    ignore: Iterable[nn.Module | str] = (),
    inplace: bool = False,
    leaf_modules: Iterable[Leaf] = (),
    max_group_ratio: float = 0.9,
    data: Iterable[Any] | None = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    compensate: bool = True,
    returns: str = "auto",
    attention: str = "heads",
    grouped: str | tuple[int, ...] | None = None,
) -> nn.Module:
    """Remove ``ratio`` of the channels of every prunable group, physically.

    Args:
        model: the network; left untouched unless ``inplace=True`` (then its submodules are
            resized and reused by the result, and the model itself must no longer be called).
        ratio: fraction of each prunable group's channels removed, ``0 <= ratio < 1``. With
            ``0`` nothing new is pruned, but channels that are already dead (all-zero filters,
            zero norm scales) are removed: the function is unchanged. A
            :class:`~surgeon.options.SlimOptions` holds every setting at once (then leave the
            keyword arguments out).
        example_inputs: a tensor, a tuple of tensors or a dict of keyword tensors.
        importance: the criterion, aggregated over each channel class: ``"l2"`` / ``"l1"``
            weight magnitude, ``"bn_scale"`` (|gamma| of the norms), ``"random"`` (a baseline),
            or, from gradients on ``data``, ``"taylor"`` (|activation x gradient| at every
            consumer input, normalised per input) and ``"grad"`` (|w x dL/dw|).
        scope: ``"local"`` (the same ratio in every group) or ``"global"`` (one threshold over
            scores normalised per group, at most ``max_group_ratio`` of any group).
        round_to: keep a multiple of this many channels per group (rounded up: never more
            removed than ``ratio`` asks; a whole head or conv group counts by its channels);
            ``"auto"``: the multiple at which onnxruntime runs this slim model fastest on this
            CPU with one thread: slimmed at the probe's multiple
            (:func:`surgeon.hardware.channel_multiple`, measured once and cached) and each
            larger one, each timed (:func:`timed_round_to`; with ``inplace``, the probe's
            multiple alone); the plan records ``round_to_auto`` and ``round_to_timed``.
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
        attention: where a width is split into heads x head_dim (attention), what prunes:
            ``"heads"`` (whole heads across q, k, v and the output projection; the default) or
            ``"head_dim"`` (every head keeps its count and loses the same offsets of its width;
            rotary embeddings keep their rotated halves paired). The plan records which.
        grouped: what a grouped (not depthwise) conv loses: ``"offsets"`` (the same in-group
            offsets of every group: each group narrows, the most MACs go), ``"groups"`` (whole
            groups: each keeps its width, ``groups`` shrinks; fewer MACs go, but onnxruntime
            can compute a narrowed group slowly) or ``"auto"`` (whole groups at the in-group
            widths measured to run faster so on this CPU,
            :func:`surgeon.hardware.grouped_widths`: 16 with AVX-512, where regnet_x_400mf at
            ratio 0.5 then runs 1.4x faster). ``None``: ``"auto"`` with ``round_to="auto"``,
            else ``"offsets"``. The plan records what was used.
        returns: ``"auto"``: the model's own class (its methods, attributes and state-dict
            names), its modules cut as the graph's, when its own ``forward`` then computes
            what the slim graph computes on ``example_inputs`` (to 1e-5 of the output scale);
            else the graph, with the reason logged and kept in ``meta["surgeon.plan"]``
            (``form``, ``form_reason``). ``"module"``: that, or ``SurgeonPassError`` with the
            reason. ``"graph"``: always the ``torch.fx.GraphModule``.

    Returns:
        the slim model, with the same inputs and output shapes, that trains like any module;
        in either form it carries its plan in ``meta["surgeon.plan"]``.
    """
    settings = dict(locals())
    for name in ("model", "ratio", "example_inputs"):
        del settings[name]
    return _slim(model, example_inputs, options_from(ratio, settings))[0]


def options_from(ratio: float | SlimOptions, settings: dict[str, Any]) -> SlimOptions:
    """``ratio`` and keyword settings as one :class:`SlimOptions`; a ``SlimOptions`` passed as
    the ratio is used as it is, and then no setting may be given beside it."""
    if not isinstance(ratio, SlimOptions):
        names = {f.name for f in dataclasses.fields(SlimOptions)}
        unknown = sorted(set(settings) - names)
        if unknown:
            raise SurgeonInputError(
                f"unknown setting(s) {unknown}: the settings are {sorted(names - {'ratio'})}"
            )
        return SlimOptions(ratio, **settings)
    defaults = {f.name: f.default for f in dataclasses.fields(SlimOptions)}
    given = [k for k, v in settings.items() if not _is_default(v, defaults[k])]
    if given:
        raise SurgeonInputError(
            f"ratio is a SlimOptions, and {given} were given beside it: put every setting in "
            "the SlimOptions (options.replace(...)) or pass a number as the ratio"
        )
    return ratio


def _is_default(value: Any, default: Any) -> bool:
    if isinstance(value, (tuple, list)) and isinstance(default, tuple):
        return tuple(value) == default
    return value is default or (isinstance(value, (bool, int, float, str)) and value == default)


def _slim(
    model: nn.Module,
    example_inputs: Any,
    options: SlimOptions,
    original: dict[int, int] | None = None,
) -> tuple[nn.Module, SurgeryState]:
    """``slim`` with its settings in ``options``; returns the slim model and the final
    decision. ``original`` (class counts per group of the model before earlier prune steps;
    an empty dict is filled with this model's) makes the ratio cumulative over those steps."""
    if not isinstance(model, nn.Module):
        raise SurgeonInputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    options = options.replace(
        ignore=resolve_ignore(model, options.ignore),
        leaf_modules=resolve_leaves(model, options.leaf_modules),
    )
    options = _data_listed(options)
    auto = options.round_to == "auto"
    if auto and not options.inplace:  # inplace: one try only, the probe's multiple
        return timed_round_to(model, example_inputs, options, original=original)
    if auto:
        options = options.replace(round_to=channel_multiple("cpu", threads=1))
    grouped = options.grouped
    grouped_form = _grouped_form(grouped if grouped is not None else "auto" if auto else None)
    earlier_whole = _earlier_whole(model, grouped_form)
    blocked: dict[int, str] = {}  # groups whose resizing failed in an earlier attempt
    # The user's own forward on the slim model is compared with the slim graph before the own
    # class comes back: that covers the check that the trace computes what the model computes,
    # which then runs (on the untouched input model) only where the graph is what comes back.
    defer = not options.inplace and options.returns != "graph"
    traced: Any = None

    def check() -> None:  # before a failure is raised, the graph comes back or 'module' refuses
        if defer:
            check_trace(model, example_inputs, traced)

    with gc_paused():
        while True:
            work = model if options.inplace else _copy(model)
            gm = trace(work, example_inputs, leaf_modules=options.leaf_modules, check=not defer)
            traced = gm.meta.pop(TRACED_KEY, traced)
            graph = None
            if not all(gm.meta[FINITE_KEY]):
                _refuse_nan(model, example_inputs)
            try:
                sizes_before = int_args(gm)
                expected = _output_shapes(gm)
                built = channel_graph(gm, options.attention, grouped_form, earlier_whole)
                graph = block_groups(built, blocked)
                macs_before = dense_macs(gm)
                _check_original(graph, original)
                stats = _measure(gm, graph, options)
                begin(gm, graph, example_inputs, stats=stats, original=original)
                result = PassManager(surgery_passes(options)).run(gm)
                break
            except Exception as exc:
                check()  # a graph that is not the model's function explains any failure
                if (
                    not isinstance(exc, SurgeonPassError)
                    or options.inplace
                    or graph is None
                    or not _block_failed(graph, exc, blocked)
                ):
                    raise
        gm = result.module
        if not options.inplace:  # the weights no pass cut are still the input model's
            unshare_parameters(model, gm, work)
        state = gm.meta.pop(STATE_KEY)
        output = state.output
        if options.compensate and options.data is not None and state.n_removed():
            recalibrate_norms(gm, iter_batches(options.data))
            output = _run(gm, example_inputs)
        _self_check(gm, expected, output, model, example_inputs)
        gm.meta[PLAN_KEY] = {
            **_plan_record(model, state, example_inputs, options),
            "blocked": blocked,
            "round_to": options.round_to,
            "round_to_auto": auto,  # round_to was measured (round_to='auto')
            # what grouped convs lose: "offsets", "groups" or the in-group widths that lose
            # whole groups (grouped="auto", measured)
            "grouped": grouped_form if isinstance(grouped_form, str) else list(grouped_form),
            "whole_groups": sorted(graph.whole_groups),  # the grouped convs that did (nodes)
            # where capture answered a size question with the example's ints (None: nowhere)
            "specialised": gm.meta.get(SPECIALISED_KEY),
        }
        _warn_if_little(gm, graph, macs_before, options.ratio)
        log.info("slim: %s", result.stats)
        out = _as_returned(model, work, gm, example_inputs, sizes_before, options, output, check)
        if out is not gm and hasattr(getattr(out, "config", None), "to_dict"):
            # the model's own class, built from a config: the config follows the sizes
            why = update_config(out, _changed_sizes(state), example_inputs)
            out.meta[PLAN_KEY]["config"] = why or "updated"
            if why:
                log.warning("surgeon: %s keeps its original config: %s", type(model).__name__, why)
        return out, state


def _data_listed(options: SlimOptions) -> SlimOptions:
    """``options`` with a one-shot iterator of data made a list: it is read more than once."""
    data = options.data
    if data is not None and iter(data) is data:  # type: ignore[call-overload]
        return options.replace(data=list(data))
    return options


def _earlier_whole(model: nn.Module, grouped: str | tuple[int, ...]) -> list[str] | None:
    """The grouped convs (node names) that lost whole groups when ``model``, a slim model,
    was made with measured widths: slimmed again (an iterative schedule's next step) with
    widths, they keep that choice, so a width narrowed by offsets does not switch them now."""
    meta = getattr(model, "meta", None)
    earlier = meta.get(PLAN_KEY) if isinstance(meta, dict) else None
    if not earlier or not isinstance(earlier.get("grouped"), list) or isinstance(grouped, str):
        return None
    return earlier.get("whole_groups")


def timed_round_to(
    model: nn.Module,
    example_inputs: Any,
    options: SlimOptions,
    *,
    provider: str = "cpu",
    threads: int | None = 1,
    original: dict[int, int] | None = None,
    runs: int = 20,
) -> tuple[nn.Module, SurgeryState]:
    """``round_to="auto"``: slim ``model`` at the multiple the probe measured on ``provider``
    (:func:`surgeon.hardware.channel_multiple`) and at every larger candidate, export each
    distinct slim model to ONNX and time them side by side in onnxruntime (``runs``
    interleaved rounds, ``threads``), and keep the fastest (within the probe's tolerance,
    the smaller multiple: it keeps what ratio asked more closely). A single conv cannot tell
    it: MobileNets at ratio 0.5 run 12-16% faster at 16 than at the probe's 4 on AVX-512.
    Where export fails, the probe's multiple stands. The plan records every median."""
    import tempfile
    from pathlib import Path

    from surgeon.benchmark import bench_interleaved
    from surgeon.exporter import export
    from surgeon.hardware import CANDIDATES, TOLERANCE

    options = _data_listed(options)  # read once per candidate
    if options.grouped in (None, "auto"):  # as measured on the same provider
        options = options.replace(grouped=grouped_widths(provider, threads))
    first = channel_multiple(provider, threads=threads)
    made: dict[int, tuple[nn.Module, SurgeryState]] = {}
    shapes: dict[tuple, int] = {}
    said: dict[int, list[logging.LogRecord]] = {}  # what each candidate's slim logged
    for m in (c for c in CANDIDATES if c >= first):
        try:
            with _held_logs(said.setdefault(m, [])):
                out, state = _slim(model, example_inputs, options.replace(round_to=m), original)
        except Exception as exc:
            if m == first:  # the probe's multiple fails: slim fails, saying what it said
                _replay(said[m])
                raise
            log.info("surgeon: round_to=%d is left out of the timing: %s", m, exc)
            continue
        key = tuple((k, tuple(v.shape)) for k, v in out.state_dict().items())
        if key not in shapes:  # a larger multiple that changes no width is the same model
            shapes[key] = m
            made[m] = (out, state)
    medians: dict[int, float] = {}
    pick = first
    if len(made) > 1:
        try:
            with tempfile.TemporaryDirectory(prefix="surgeon-round-to-") as tmp:
                paths = [
                    export(out, example_inputs, Path(tmp) / f"r{m}.onnx")
                    for m, (out, _) in made.items()
                ]
                timed = bench_interleaved(
                    paths,
                    example_inputs,
                    providers=(provider,),
                    warmup=3,
                    runs=runs,
                    threads=threads,
                )
            found = {m: r[provider].median_ms for m, r in zip(made, timed, strict=True)}
            found = {m: ms for m, ms in found.items() if ms is not None}  # None: not run
            if len(found) < 2:
                raise RuntimeError(f"onnxruntime did not run them on {provider}")
            best = min(found.values())
            pick = min(m for m, ms in found.items() if ms <= best * (1 + TOLERANCE))
            medians = found
        except Exception as exc:  # an export or a runtime that fails: the probe's answer
            log.warning(
                "surgeon: round_to='auto' could not time the slim models (%s); "
                "keeping the measured multiple %d",
                exc,
                first,
            )
    out, state = made[pick]
    _replay(said[pick])  # the chosen model's warnings, once (not every candidate's)
    plan = out.meta[PLAN_KEY]
    plan["round_to_auto"] = True
    plan["round_to_timed"] = {str(m): ms for m, ms in medians.items()}  # JSON keys
    log.info("surgeon: round_to='auto' picked %d (median ms per multiple: %s)", pick, medians)
    return out, state


@contextlib.contextmanager
def _held_logs(held: list[logging.LogRecord]) -> Iterator[None]:
    """Hold back what surgeon's loggers log in this thread (into ``held``) for the duration."""
    me = threading.get_ident()

    def hold(record: logging.LogRecord) -> bool:
        if record.thread != me:
            return True
        held.append(record)
        return False

    loggers = [logging.getLogger("surgeon")] + [
        logging.getLogger(name)
        for name in list(logging.root.manager.loggerDict)
        if name.startswith("surgeon.")
    ]
    for logger in loggers:
        logger.addFilter(hold)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(hold)


def _replay(records: list[logging.LogRecord]) -> None:
    for record in records:
        logging.getLogger(record.name).handle(record)


def _changed_sizes(state: SurgeryState) -> dict[int, set[int]]:
    """Original class count -> new class counts, over the groups that lost classes."""
    out: dict[int, set[int]] = {}
    for gi, mask in state.removed.items():
        if mask.any():
            n = state.graph.groups[gi].n_classes
            out.setdefault(n, set()).add(n - int(mask.sum()))
    return out


def _as_returned(
    model: nn.Module,
    work: nn.Module,
    gm: fx.GraphModule,
    example_inputs: Any,
    sizes_before: dict[str, list[Any]],
    options: SlimOptions,
    output: Any = None,
    check: Callable[[], None] = lambda: None,
) -> nn.Module:
    """The form ``options.returns`` asks for: the user's own model (``work``, its modules cut
    like the graph's, verified by :func:`~surgeon.adopt.adopt` against ``output``, the
    graph's on the example) or the graph; the plan records which (``form``) and, for a graph
    in ``"auto"``, why (``form_reason``). ``check`` runs before the graph is given back."""
    plan = gm.meta[PLAN_KEY]
    why = "returns='graph' was asked for"
    if options.returns != "graph":
        meta = getattr(work, "meta", None)
        if meta is not None and not (isinstance(meta, dict) and PLAN_KEY in meta):
            why = f"{type(model).__name__} has an attribute 'meta' of its own"
        else:
            module, why, changes = adopt(work, gm, example_inputs, sizes_before, output)
            if module is not None:
                plan.update(form="module", form_reason="", sized=changes)
                module.meta = {k: v for k, v in gm.meta.items() if k.startswith("surgeon.")}
                return module
        check()
        if options.returns == "module":
            raise SurgeonPassError(
                f"returns='module': the slim {type(model).__name__} cannot be given back as its "
                f"own class: {why}; pass returns='auto' (the graph form then) or 'graph'"
            )
        log.warning(
            "surgeon: the slim model is a torch.fx.GraphModule, not a %s: %s",
            type(model).__name__,
            why,
        )
    plan.update(form="graph", form_reason=why, sized=[])
    return gm


MAX_BLOCK_RETRIES = 16


def block_groups(graph: ChannelGraph, blocked: dict[int, str]) -> ChannelGraph:
    """Mark the groups of ``blocked`` (index -> reason) as blocked, in place; returns graph."""
    for gi, why in blocked.items():
        g = graph.groups[int(gi)]
        if why not in g.reasons:
            g.reasons.append(why)
    return graph


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


def _block_failed(graph: ChannelGraph, exc: SurgeonPassError, blocked: dict[int, str]) -> bool:
    """Block the prunable groups around the node a pass failed at (the node and its inputs),
    so the next attempt leaves them alone; False when there is nothing new to block."""
    if exc.node is None or len(blocked) >= MAX_BLOCK_RETRIES:
        return False
    nodes = {n.name: n for n in graph.gm.graph.nodes}
    node = nodes.get(exc.node)
    if node is None:
        return False
    names = {node.name, *_size_sources(node)}
    found = {
        gi
        for (name, _), gi in graph.group_of.items()
        if name in names and graph.groups[gi].prunable
    }
    if not found:
        return False
    why = f"resizing it failed at node '{exc.node}' (this group is left as it is)"
    for gi in found:
        blocked[gi] = why
    log.warning("surgeon: %s; retrying with %d group(s) blocked: %s", exc, len(found), why)
    return True


def surgery_passes(options: SlimOptions) -> list[Pass]:
    """The passes ``slim`` runs for ``options``: prune, [compensate], propagate, resize."""
    passes: list[Pass] = [ChannelPrunePass(options)]
    if options.compensate:
        passes.append(CompensatePass(new_bias=options.returns == "graph"))
    ignore = tuple(str(i) for i in options.ignore)
    return passes + [PropagatePass(ignore=ignore), ResizePass()]


def _measure(gm: fx.GraphModule, graph: ChannelGraph, options: SlimOptions) -> DataStats | None:
    """What the criterion and compensation need from ``options.data`` (None: nothing)."""
    crit = options.importance
    wanted = crit in DATA_CRITERIA or (options.compensate and options.data is not None)
    if options.ratio <= 0 or not wanted:
        return None
    return collect_stats(
        gm,
        graph,
        options.data,  # type: ignore[arg-type]
        options.loss_fn,
        taylor=crit == "taylor",
        grads=crit == "grad",
        means=options.compensate,
    )


def _check_original(graph: ChannelGraph, original: dict[int, int] | None) -> None:
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


def _plan_record(
    model: nn.Module, state: SurgeryState, example_inputs: Any, options: SlimOptions
) -> dict[str, Any]:
    """What ``gm.meta[PLAN_KEY]`` keeps: the decision, the model, inputs and leaf modules
    (and the plan of the model this one was slimmed from, if it was a slim model)."""
    meta = getattr(model, "meta", None)
    previous = meta.get(PLAN_KEY) if isinstance(meta, dict) else None
    record = {
        **state.to_record(),
        "model": previous["model"] if previous else type(model).__name__,
        "inputs": input_spec(example_inputs),
        "leaf_modules": sorted(leaf_name(m) for m in options.leaf_modules),
        "attention": options.attention,
    }
    if previous:
        record["previous"] = copy.deepcopy(previous)
    return record


def _warn_if_little(gm: fx.GraphModule, graph: ChannelGraph, before: int, ratio: float) -> None:
    """Log a warning (and keep the diagnosis in ``gm.meta[DIAGNOSIS_KEY]``) when the MAC drop is
    under half of what ``ratio`` gives on free groups, with the top blocked reasons."""
    found = diagnose(graph, before, dense_macs(gm), ratio)
    gm.meta[DIAGNOSIS_KEY] = found
    if found is None:
        return
    why = "; ".join(
        f"{r['reason']} ({r['groups']} group{'s' if r['groups'] != 1 else ''}"
        + (f", first: {r['first']})" if r["first"] != r["reason"] else ")")
        for r in found["top_blocked"]
    )
    log.warning(
        "surgeon: little was pruned: MACs dropped %.2fx where ratio %g gives %.1fx on free "
        "groups (%d of %d groups prunable). Top blocked reasons: %s",
        found["mac_drop"],
        ratio,
        found["expected"],
        found["prunable_groups"],
        found["groups"],
        why or "none (the prunable groups are small)",
    )


def _refuse_nan(model: nn.Module, example_inputs: Any) -> None:
    """The traced output is not finite: NaN in the inputs or weights is the user's to fix."""
    nan = nonfinite(model, example_inputs, nan_only=True)
    if nan:
        raise SurgeonInputError(
            f"NaN values in {', '.join(nan[:3])}{' ...' if len(nan) > 3 else ''}: slim runs the "
            "model on the example inputs to check every step, and NaN hides every difference; "
            "pass finite inputs and weights"
        )


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


def _self_check(
    gm: fx.GraphModule,
    expected: list[tuple[int, ...]],
    output: Any,
    model: nn.Module,
    example_inputs: Any,
) -> None:
    """The slim model's outputs keep their shapes and are finite (from ResizePass's run)
    where the original's were."""
    got = _output_shapes(gm)
    if got != expected:
        raise SurgeonPassError(
            f"the slim model's output shapes {got} differ from the original {expected}"
        )
    tensors: list[torch.Tensor] = []
    torch.utils._pytree.tree_map(
        lambda v: tensors.append(v) if isinstance(v, torch.Tensor) else None, output
    )
    finite_before = gm.meta.get(FINITE_KEY, [])
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
                "against it; pass finite example inputs and weights"
            )
        raise SurgeonPassError(
            f"the slim model's output {i} has non-finite values on the example inputs where "
            "the original's are finite; nothing is returned — report the model, or slim with a "
            "smaller ratio"
        )
