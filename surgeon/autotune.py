"""Searches that make candidate slim models and measure them: the one place the core exports
and times.

- :func:`timed_round_to` (``round_to="auto"``): the channel multiple at which onnxruntime runs
  *this* slim model fastest. A probe on single convs (:mod:`surgeon.hardware`) gives a first
  multiple; it cannot tell how a whole network's widths interact, so the slim model itself is
  made at that multiple and at every larger candidate (each a full run of
  :func:`surgeon.pipeline.slim_model`), exported, and timed side by side in onnxruntime.
- :func:`slim_to_target` (a :class:`~surgeon.options.Target`): rounds of allocation by cost
  (:class:`surgeon.budget.Budget`), each slim model measured (counted, or timed against the
  original), the next level interpolated from what was measured, until the target holds.
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch.nn as nn

from surgeon.errors import SurgeonTargetError
from surgeon.hardware import CANDIDATES, TOLERANCE, channel_multiple, grouped_widths
from surgeon.keys import PLAN_KEY
from surgeon.options import SlimOptions, Target

__all__ = ["timed_round_to", "slim_to_target", "held_logs", "MAX_ROUNDS"]

log = logging.getLogger(__name__)


def timed_round_to(
    model: nn.Module,
    example_inputs: Any,
    options: SlimOptions,
    *,
    provider: str = "cpu",
    threads: int | None = 1,
    original: Mapping[int, int] | None = None,
    runs: int = 20,
) -> Any:
    """Slim ``model`` at the multiple the probe measured on ``provider`` and at every larger
    candidate, export each distinct slim model and time them side by side (``runs``
    interleaved rounds, ``threads``), and keep the fastest (within the probe's tolerance, the
    smaller multiple: it keeps closer to what the ratio asked). Where export or timing fails,
    the probe's multiple stands. Returns the :class:`~surgeon.pipeline.Slimmed` of the chosen
    multiple; its plan records every median (``round_to_timed``)."""
    from surgeon.pipeline import prepared, slim_model

    options = prepared(model, options)  # data listed: it is read once per candidate
    if options.grouped in (None, "auto"):  # as measured on the same provider
        options = options.replace(grouped=grouped_widths(provider, threads))
    first = channel_multiple(provider, threads=threads)
    made: dict[int, Any] = {}
    shapes: set[tuple] = set()
    said: dict[int, list[logging.LogRecord]] = {}  # what each candidate's slim logged
    for m in (c for c in CANDIDATES if c >= first):
        try:
            with held_logs(said.setdefault(m, [])):
                slimmed = slim_model(model, example_inputs, options.replace(round_to=m), original)
        except Exception as exc:
            if m == first:  # the probe's multiple fails: slim fails, saying what it said
                _replay(said[m])
                raise
            log.info("surgeon: round_to=%d is left out of the timing: %s", m, exc)
            continue
        key = tuple((k, tuple(v.shape)) for k, v in slimmed.model.state_dict().items())
        if key not in shapes:  # a larger multiple that changes no width is the same model
            shapes.add(key)
            made[m] = slimmed
    medians: dict[int, float] = {}
    if len(made) > 1:
        try:
            medians = _timed(made, example_inputs, provider, threads, runs)
        except Exception as exc:  # an export or a runtime that fails: the probe's answer
            log.warning(
                "surgeon: round_to='auto' could not time the slim models (%s); "
                "keeping the measured multiple %d",
                exc,
                first,
            )
    pick = first
    if medians:
        best = min(medians.values())
        pick = min(m for m, ms in medians.items() if ms <= best * (1 + TOLERANCE))
    slimmed = made[pick]
    _replay(said[pick])  # the chosen model's warnings, once (not every candidate's)
    record = slimmed.model.meta[PLAN_KEY]
    record["round_to_auto"] = True
    record["round_to_timed"] = {str(m): ms for m, ms in medians.items()}  # JSON keys
    log.info("surgeon: round_to='auto' picked %d (median ms per multiple: %s)", pick, medians)
    return slimmed


def _timed(
    made: Mapping[int, Any], example_inputs: Any, provider: str, threads: int | None, runs: int
) -> dict[int, float]:
    """Median onnxruntime latency (ms) per candidate multiple, timed round by round."""
    from surgeon.benchmark import bench_interleaved
    from surgeon.exporter import export

    with tempfile.TemporaryDirectory(prefix="surgeon-round-to-") as tmp:
        paths = [export(s.model, example_inputs, Path(tmp) / f"r{m}.onnx") for m, s in made.items()]
        timed = bench_interleaved(
            paths, example_inputs, providers=(provider,), warmup=3, runs=runs, threads=threads
        )
    found = {m: r[provider].median_ms for m, r in zip(made, timed, strict=True)}
    found = {m: ms for m, ms in found.items() if ms is not None}  # None: not run
    if len(found) < 2:
        raise RuntimeError(f"onnxruntime did not run them on {provider}")
    return found


@contextlib.contextmanager
def held_logs(held: list[logging.LogRecord]) -> Iterator[None]:
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


# -- targets ----------------------------------------------------------------------------------
MAX_ROUNDS = 4
#: a counted target holds within this share of its value; a measured one from
#: ``1 - MEASURED_BAND[0]`` to ``1 + MEASURED_BAND[1]`` times it (timing noise below, the
#: rounding of widths above)
COUNTED_BAND = 0.01
MEASURED_BAND = (0.02, 0.2)
AIM = 1.03  # a measured target's rounds aim this much above it (into the band, off its edge)


class _Meter:
    """What a target measures, the same way every round: the factor a slim model reaches
    against the original (parameters or MACs counted; latency timed in onnxruntime, the
    original and the slim model side by side in interleaved rounds)."""

    def __init__(self, model: nn.Module, inputs: Any, target: Target, runs: int = 30) -> None:
        from surgeon.cost import count_macs, count_params

        self.target, self.inputs, self.runs = target, inputs, runs
        self.macs = count_macs(model, inputs)
        self.params = count_params(model)
        self.tmp = tempfile.TemporaryDirectory(prefix="surgeon-target-")
        self.original: Path | None = None
        self.ms: float | None = None  # the original's latency, measured alone
        if target.measured:
            self.ms = self.original_ms(model)

    def original_ms(self, model: nn.Module) -> float:
        """The original's median latency (ms), exported and timed alone."""
        from surgeon.benchmark import bench
        from surgeon.exporter import export

        target = self.target
        self.original = export(model, self.inputs, Path(self.tmp.name) / "original.onnx")
        timing = bench(
            self.original, self.inputs, providers=(target.device,), warmup=3, runs=self.runs,
            threads=target.threads,
        )  # fmt: skip
        ms = timing.median_ms(target.device)
        if ms is None:
            raise SurgeonTargetError(
                f"{target.describe()}: onnxruntime did not run the original model on "
                f"{target.device} ({timing[target.device].reason}); ask for a macs or params "
                "target, or another device",
                closest=None,
            )
        return ms

    def goal(self) -> float:
        """The target as a factor of the original (a latency: the original's over it)."""
        t = self.target
        return self.ms / t.value if t.kind == "latency_ms" else t.value  # type: ignore[operator]

    def __call__(self, model: nn.Module, n: int) -> dict[str, float]:
        """The factor ``model`` reaches, its MACs factor, and for a measured target both
        medians (ms)."""
        from surgeon.cost import count_macs, count_params

        out = {"macs": self.macs / max(count_macs(model, self.inputs), 1)}
        if self.target.kind == "params":
            out["achieved"] = self.params / max(count_params(model), 1)
        elif self.target.kind == "macs":
            out["achieved"] = out["macs"]
        else:
            ms0, ms1 = self.timed(model, n)
            out.update(achieved=ms0 / ms1, original_ms=ms0, slim_ms=ms1)
        return out

    def timed(self, model: nn.Module, n: int) -> tuple[float, float]:
        """The original's and ``model``'s median latency (ms), exported and timed side by
        side on the target's device and threads."""
        from surgeon.benchmark import bench_interleaved
        from surgeon.exporter import export

        slim = export(model, self.inputs, Path(self.tmp.name) / f"round{n}.onnx")
        device = self.target.device
        before, after = bench_interleaved(
            [self.original, slim], self.inputs, providers=(device,), warmup=3,
            runs=self.runs, threads=self.target.threads,
        )  # fmt: skip
        ms0, ms1 = before.median_ms(device), after.median_ms(device)
        if ms0 is None or ms1 is None:
            raise SurgeonTargetError(
                f"{self.target.describe()}: onnxruntime did not run the slim model "
                f"({after[device].reason})",
                closest=None,
            )
        return ms0, ms1

    def close(self) -> None:
        self.tmp.cleanup()


def planned_graph(model: nn.Module, inputs: Any, options: SlimOptions) -> Any:
    """The channel graph of ``model`` with ``planned``: the classes per group the first round
    of ``options.target`` removes (its estimate: a measured target is not measured here)."""
    import copy

    meter = _Meter(model, inputs, options.target)  # type: ignore[arg-type]
    try:
        budget = _budget(model, inputs, _resolved(options), meter)[0]
    finally:
        meter.close()
    decision, _, _ = budget.decide(meter.goal())
    graph = copy.copy(budget.graph)
    graph.planned = {gi: int(mask.sum()) for gi, mask in decision.items()}
    return graph


def _resolved(options: SlimOptions) -> SlimOptions:
    """``round_to="auto"`` as the probe's multiple on the target's device (the rounds measure
    the whole model; no multiple is timed apart)."""
    target = options.target
    if options.round_to != "auto" or target is None:
        return options
    where = (target.device, target.threads) if target.measured else ("cpu", 1)
    return options.replace(round_to=channel_multiple(*where), grouped=options.grouped or "auto")


#: with "layers" in structures, whole blocks take at most this share of what a target saves
LAYER_SHARE = 0.5


def _budget(model: nn.Module, inputs: Any, options: SlimOptions, meter: _Meter) -> Any:
    """The cost model for ``options.target`` (captured once, on a copy); with ``"layers"``,
    the whole layers it takes (a model with stacks: the model without them, which the rounds
    slim, and their record) or else the whole blocks (``(sum node, side)`` pairs) the rounds
    remove. Returns ``(budget, blocks, model, wholes)``."""
    from surgeon.budget import Budget, weight_macs
    from surgeon.cost import count_macs, count_params
    from surgeon.latency import layer_table
    from surgeon.pipeline import (
        capture_copy,
        channel_graph,
        cut_wholes,
        gc_paused,
        grouped_form,
        measured,
        whole_groups_kept,
    )

    t = options.target
    assert t is not None
    grouped = grouped_form(options.grouped, t.device, t.threads if t.measured else 1)
    with gc_paused():
        _, captured = capture_copy(model, inputs, options.replace(inplace=False), check=True)
        gm = captured.gm
        table = layer_table(gm, t.device, t.threads) if t.measured else {}
        reference = meter.ms if t.measured else meter.params if t.kind == "params" else meter.macs
        blocks, wholes, saved = None, {}, 0.0
        if "layers" in options.structures:
            if t.kind == "params":
                base = {k: float(v.numel()) for k, v in gm.named_parameters()}
            elif t.kind == "macs":
                base = {k: float(v) for k, v in weight_macs(gm).items()}
            else:
                base = {k: lt.full for k, lt in table.items()}
            chosen, saved = _layers_for(model, inputs, options, base, reference, meter.goal())
            if chosen:
                model, wholes = cut_wholes(model, inputs, options, {"layers": chosen})
                _, captured = capture_copy(
                    model, inputs, options.replace(inplace=False), check=True
                )
                gm = captured.gm
                table = layer_table(gm, t.device, t.threads) if t.measured else {}
            else:
                blocks = _blocks_for(gm, inputs, options, base, reference, meter.goal())
        graph = channel_graph(gm, options.attention, grouped, whole_groups_kept(model, grouped))
        stats = measured(gm, graph, options)
        if t.measured:
            kept = {k: v for k, v in table.items() if _has(gm, k)}
            saved += sum(lt.full for k, lt in table.items() if k not in kept)
            budget = Budget(gm, graph, options, stats, "latency", meter.ms - saved, kept, meter.ms)
        else:
            total = count_params(gm) if t.kind == "params" else count_macs(gm, inputs)
            budget = Budget(gm, graph, options, stats, t.kind, total, reference=reference)
        return budget, blocks, model, wholes


def _layers_for(
    model: nn.Module,
    inputs: Any,
    options: SlimOptions,
    base: Mapping[str, float],
    total: float,
    goal: float,
) -> tuple[dict[str, list[int]], float]:
    """The whole layers of ``model``'s stacks a target of ``goal`` takes (by stack path) and
    what they cost: least change of their input per unit of cost first, while what they save
    stays within :data:`LAYER_SHARE` of what the target must save; identity layers always;
    one layer of each stack always stays. ``base``: the cost per parameter name."""
    from surgeon.pipeline import calibration
    from surgeon.stacks import EXACT, find_stacks, score_stacks

    stacks = score_stacks(model, find_stacks(model), calibration(inputs, options))
    room = LAYER_SHARE * total * (1 - 1 / goal)
    cost = {
        (s.path, i): sum(v for k, v in base.items() if k.startswith(f"{s.path}.{i}."))
        for s in stacks
        for i in range(s.size)
    }
    chosen: dict[str, list[int]] = {}
    spent = 0.0
    ranked = sorted(
        ((s, i) for s in stacks for i in range(s.size)),
        key=lambda si: si[0].scores[si[1]] / max(cost[(si[0].path, si[1])] / total, 1e-12),
    )
    for s, i in ranked:
        c = cost[(s.path, i)]
        taken = chosen.setdefault(s.path, [])
        if len(taken) >= s.size - 1 or c <= 0:
            continue
        if s.change[i] <= EXACT or spent + c <= room:
            taken.append(i)
            spent += c
    return {p: sorted(v) for p, v in chosen.items() if v}, spent


def _has(gm: nn.Module, name: str) -> bool:
    try:
        gm.get_parameter(name)
    except AttributeError:
        return False
    return True


def _blocks_for(
    gm: Any,
    inputs: Any,
    options: SlimOptions,
    base: Mapping[str, float],
    total: float,
    goal: float,
) -> list[tuple[str, int]]:
    """Cut from ``gm`` (in place) the blocks a target of ``goal`` takes: least change per
    unit of cost first, while what they save stays within :data:`LAYER_SHARE` of what the
    target must save (``total * (1 - 1 / goal)``). Returns their keys."""
    from surgeon.blocks import block_costs, find_blocks, remove_blocks, score_blocks
    from surgeon.pipeline import calibration

    found = find_blocks(gm)
    if not found:
        return []
    scored = score_blocks(gm, found, calibration(inputs, options))
    cost = block_costs(scored, base)
    room = LAYER_SHARE * total * (1 - 1 / goal)
    chosen, spent, adds = [], 0.0, set()
    for b in sorted(scored, key=lambda b: b.score / max(cost[b.key()] / total, 1e-12)):
        c = cost[b.key()]
        if c <= 0 or b.add in adds or spent + c > room:
            continue
        chosen.append(b)
        adds.add(b.add)
        spent += c
    removed = remove_blocks(gm, chosen, calibration(inputs, options))
    return [b.key() for b in removed]


def _holds(factor: float, goal: float, target: Target) -> bool:
    if target.measured:
        low, high = MEASURED_BAND
        return goal * (1 - low) <= factor <= goal * (1 + high)
    return abs(factor / goal - 1) <= COUNTED_BAND


def slim_to_target(model: nn.Module, inputs: Any, options: SlimOptions) -> Any:
    """Slim ``model`` until ``options.target`` holds, in at most :data:`MAX_ROUNDS` rounds.

    The first round makes the budget's smallest level (classes removed, in the order of
    importance per unit of cost) whose estimate reaches the target; each round is a full run
    of the pipeline with that decision, then measured, and the next level is interpolated
    from the measured factors of the levels tried (:func:`_next_estimate`). It stops at the
    first round that holds (counted targets within :data:`COUNTED_BAND`, measured ones within
    :data:`MEASURED_BAND`), when every group is at its floor, or when the next estimate falls
    on a level already tried (the steps of rounding to multiples are that coarse). With
    ``"layers"`` in ``structures`` the whole blocks are chosen once, before the first round
    (:data:`LAYER_SHARE`). The round that holds (else the closest above the target) comes
    back; its plan records ``target``: what was asked, achieved (measured), theoretical (the
    MAC factor) and every round. Raises :class:`SurgeonTargetError`, with the closest figure,
    when no round reaches the target.
    """
    from surgeon.pipeline import prepared, slim_model

    target = options.target
    assert target is not None
    options = _resolved(prepared(model, options))  # data listed: every round reads it
    meter = _Meter(model, inputs, target)
    try:
        budget, blocks, model, wholes = _budget(model, inputs, options, meter)
        asked = meter.goal()
        aim = asked * (AIM if target.measured else 1.0)
        _, level, _ = budget.decide(aim)  # the first round: where the estimate reaches it
        rounds: list[dict[str, Any]] = []
        made: list[Any] = []
        search = options.replace(inplace=False)
        for n in range(MAX_ROUNDS):
            decision = budget.decision(level)
            slimmed = slim_model(model, inputs, search, decision=decision, blocks=blocks)
            found = meter(slimmed.model, n)
            rounds.append(
                {
                    "level": level,
                    "estimate": round(float(budget.factor(decision)), 4),
                    **{k: round(float(v), 4) for k, v in found.items()},
                }
            )
            made.append((slimmed, decision))
            log.info("surgeon: target %s, round %d: %s", target.describe(), n + 1, rounds[-1])
            if _holds(found["achieved"], asked, target):
                break
            if level == budget.levels and found["achieved"] < asked:
                break  # every group at its floor
            wanted = _next_estimate([(r["estimate"], r["achieved"]) for r in rounds], aim)
            _, level, _ = budget.decide(wanted)
            if level in {r["level"] for r in rounds}:
                break  # the estimate cannot tell finer steps apart (rounding to multiples)
        pick = _pick(rounds, asked, target)
        if pick is None:
            best = max(r["achieved"] for r in rounds)
            floor = any(r["level"] == budget.levels for r in rounds)
            why = (
                "every prunable group is at its floor (one class kept, max_group_ratio, ignored "
                "modules)"
                if floor
                else f"{len(rounds)} round(s) did not reach it"
            )
            raise SurgeonTargetError(
                f"{target.describe()} cannot be met: the closest slim model reached "
                f"{_said(best, meter, target)} ({why}); ask for less, or unblock groups "
                "(surgeon inspect shows what blocks them)",
                closest=_said(best, meter, target),
            )
        slimmed, decision = made[pick]
        if options.inplace:  # the rounds ran on copies: the chosen decision cuts the model
            slimmed = slim_model(model, inputs, options, decision=decision, blocks=blocks)
        record = slimmed.model.meta[PLAN_KEY]
        record.update(wholes)  # the layers taken before the rounds, in the original's indices
        record["target"] = {
            **target.to_record(),
            "asked": round(asked, 4),
            "achieved": rounds[pick]["achieved"],
            "theoretical": rounds[pick]["macs"],
            "rounds": rounds,
            "round": pick + 1,
            "blocks": len(blocks or ()),
            "layers": sum(len(r["removed"]) for r in wholes.get("layers", ())),
        }
        if target.measured:
            record["target"]["original_ms"] = rounds[pick]["original_ms"]
            record["target"]["slim_ms"] = rounds[pick]["slim_ms"]
        return slimmed
    finally:
        meter.close()


def _next_estimate(tried: list[tuple[float, float]], aim: float) -> float:
    """The estimated factor the next round asks the budget for: where the measured factor is
    ``aim``, interpolated in log-log between the tried (estimate, achieved) pairs nearest
    either side of it (nothing removed, (1, 1), is one), kept off the bracket's ends by a
    tenth of its width so that a curved response still narrows it; past the last pair below,
    extrapolated from the two nearest."""
    points = sorted({(1.0, 1.0), *((max(e, 1.0), max(a, 1e-9)) for e, a in tried)})
    logs = [(math.log(e), math.log(a)) for e, a in points]
    target = math.log(aim)
    below = [p for p in logs if p[1] < target]
    above = [p for p in logs if p[1] >= target]
    if below and above:
        (x0, y0), (x1, y1) = max(below), min(above)
        if x1 <= x0:  # not monotone here (rounding): split the difference
            return math.exp((x0 + x1) / 2)
        t = min(max((target - y0) / max(y1 - y0, 1e-12), 0.1), 0.9)
        return math.exp(x0 + t * (x1 - x0))
    (x0, y0), (x1, y1) = below[-2:] if len(below) >= 2 else ((0.0, 0.0), below[-1])
    if y1 <= y0 or x1 <= x0:
        return math.exp(x1) * aim / math.exp(y1)
    return math.exp(x1 + (target - y1) * (x1 - x0) / (y1 - y0))


def _pick(rounds: list[dict[str, Any]], asked: float, target: Target) -> int | None:
    """The first round that holds, else the one closest above the target (None: none is)."""
    for i, r in enumerate(rounds):
        if _holds(r["achieved"], asked, target):
            return i
    low = 1 - (MEASURED_BAND[0] if target.measured else COUNTED_BAND)
    above = [i for i, r in enumerate(rounds) if r["achieved"] >= asked * low]
    return min(above, key=lambda i: rounds[i]["achieved"]) if above else None


def _said(factor: float, meter: _Meter, target: Target) -> str:
    if target.kind == "latency_ms":
        return f"{meter.ms / factor:.3g} ms"  # type: ignore[operator]
    return f"{factor:.3g}x"
