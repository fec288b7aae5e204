"""Pruning schedules (one-shot, linear, AGP), lottery-ticket rewind, and distillation."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from surgeon.errors import SurgeonInputError
from surgeon.keys import HISTORY_KEY
from surgeon.options import SlimOptions, Target

__all__ = [
    "HISTORY_KEY",
    "SCHEDULES",
    "agp_ratio",
    "distill_loss",
    "prune_iteratively",
    "step_ratios",
]


def distill_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    T: float = 4.0,
    alpha: float = 0.5,
) -> torch.Tensor:
    """Knowledge distillation (Hinton et al.): ``alpha`` of the temperature-``T`` KL divergence
    from the teacher's soft targets (scaled by T² so its gradients keep their size), plus
    ``1 - alpha`` of the cross-entropy against ``labels``.
    """
    if not T > 0:
        raise SurgeonInputError(f"T={T!r}: the temperature must be > 0 (e.g. 4.0)")
    if not 0 <= alpha <= 1:
        raise SurgeonInputError(f"alpha={alpha!r}: the distillation weight is in [0, 1]")
    if student_logits.shape != teacher_logits.shape:
        raise SurgeonInputError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ in shape: both models must end in the same classes"
        )
    soft = F.kl_div(
        F.log_softmax(student_logits / T, dim=-1),
        F.log_softmax(teacher_logits.detach() / T, dim=-1),
        reduction="batchmean",
        log_target=True,
    )
    hard = F.cross_entropy(student_logits, labels)
    return alpha * soft * (T * T) + (1 - alpha) * hard


SCHEDULES = ("agp", "linear", "oneshot")


def agp_ratio(step: int, steps: int, final_ratio: float, initial_ratio: float = 0.0) -> float:
    """Zhu & Gupta's automated gradual pruning: the ratio after ``step`` of ``steps``,
    ``r_f + (r_i - r_f) * (1 - step / steps) ** 3`` — it prunes fast early, slowly late."""
    if not 0 <= step <= steps:
        raise SurgeonInputError(f"step={step!r} is outside 0..steps={steps!r}")
    return final_ratio + (initial_ratio - final_ratio) * (1 - step / steps) ** 3


def step_ratios(ratio: float, steps: int, schedule: str) -> list[float]:
    """The cumulative ratio reached after each of ``steps`` steps."""
    if schedule == "agp":
        return [agp_ratio(t, steps, ratio) for t in range(1, steps + 1)]
    if schedule == "linear":
        return [ratio * t / steps for t in range(1, steps + 1)]
    return [ratio] * steps


def prune_iteratively(
    model: nn.Module,
    ratio: float | Target | SlimOptions,
    example_inputs: Any,
    *,
    steps: int = 3,
    schedule: str = "agp",
    finetune: Callable[[nn.Module, int], Any] | None = None,
    rewind: bool | Mapping[str, torch.Tensor] = False,
    **settings: Any,
) -> fx.GraphModule:
    """Prune to ``ratio`` in ``steps`` steps, calling ``finetune(model, step)`` after each.

    Each step slims the current model (physically) until every prunable group has lost the
    step's cumulative ratio of its ORIGINAL channels: ``schedule="agp"`` follows Zhu & Gupta's
    cubic ``r_t = ratio * (1 - (1 - t / steps) ** 3)``, ``"linear"`` ``ratio * t / steps``,
    ``"oneshot"`` prunes everything at step 1 (later steps only fine-tune). ``finetune`` is
    called exactly ``steps`` times with the new slim model — a new module each step, so build
    the optimizer inside it — and may train it in place (e.g. with
    ``surgeon.distill_loss`` against the original model).

    ``rewind=True`` resets, after every prune step and before ``finetune``, the surviving
    weights (and buffers) to their values when this function was called — the lottery-ticket
    rewind; a state dict of the original architecture (e.g. saved at initialisation) rewinds to
    those values instead. Tensors the original did not have (biases created by folds) keep
    theirs.

    ``settings`` are ``surgeon.slim``'s keyword arguments (``importance``, ``data``,
    ``loss_fn``, ``compensate``, ``scope``, ``round_to``, ``ignore``, ``leaf_modules``,
    ``max_group_ratio``), or pass a :class:`~surgeon.options.SlimOptions` as ``ratio``;
    ``data`` must be re-iterable (a list or a DataLoader) when it is read at every step.
    A :class:`~surgeon.options.Target` as ``ratio`` is the end state: after step ``t`` the
    model is ``value ** f_t`` times cheaper than the original (``f_t`` the schedule's share of
    the way, ``1`` at the last step), each step a target of what is left (a latency target
    counts as the speedup it means against the original, timed once).

    Returns the final slim ``GraphModule``; ``meta["surgeon.history"]`` lists, per step, the
    ratio (or the factor the step aimed at, ``target``), parameters and MACs.
    """
    from surgeon.api import options_from
    from surgeon.cost import count_macs, count_params
    from surgeon.names import resolve_ignore
    from surgeon.pipeline import slim_model

    options = options_from(ratio, settings)
    _check_schedule(options, steps, schedule, finetune, rewind)
    options = options.replace(ignore=resolve_ignore(model, options.ignore))
    start = _rewind_start(model, rewind)
    original: dict[int, int] | None = None  # class counts per group, from the first step
    kept: dict[str, dict[int, np.ndarray]] = {}
    history = []
    current: nn.Module = model
    stepper = _TargetSteps(model, example_inputs, options, steps, schedule)
    for step, r in enumerate(step_ratios(options.ratio, steps, schedule)):
        if stepper.target is not None:
            step_options, r = stepper.options(step, current)
            slimmed = slim_model(current, example_inputs, step_options)
        else:
            slimmed = slim_model(current, example_inputs, options.replace(ratio=r), original)
            original = slimmed.counts if original is None else original
        current, state = slimmed.model, slimmed.state
        _compose_kept(kept, state.kept)
        if start:
            _rewind(current, start, kept)
        if finetune is not None:
            finetune(current, step)
        history.append(
            {
                "step": step,
                "ratio" if stepper.target is None else "target": r,
                "params": count_params(current),
                "macs": count_macs(current, example_inputs),
            }
        )
    current.meta[HISTORY_KEY] = history  # type: ignore[union-attr]
    return current  # type: ignore[return-value]


class _TargetSteps:
    """A target's steps: after step ``t`` the model is ``value ** f_t`` times cheaper than the
    original, ``f_t`` the schedule's share of the way (``step_ratios`` of 1); each step asks
    the current model for what is left of that (a latency target as the speedup it means
    against the original, timed once)."""

    def __init__(
        self, model: nn.Module, inputs: Any, options: SlimOptions, steps: int, schedule: str
    ) -> None:
        self.target, self.base = options.target, options
        self.inputs = inputs
        self.shares = step_ratios(1.0, steps, schedule)
        self.reached = 1.0  # how much cheaper the current model is than the original
        if self.target is None:
            return
        from surgeon.cost import count_macs, count_params

        self.first = {"macs": count_macs(model, inputs), "params": count_params(model)}
        self.overall = self.target.value
        if self.target.kind == "latency_ms":
            from surgeon.autotune import _Meter

            meter = _Meter(model, inputs, self.target)
            meter.close()
            self.overall = meter.goal()

    def options(self, step: int, current: nn.Module) -> tuple[SlimOptions, float]:
        """The step's options and the factor it aims at against the original."""
        from surgeon.cost import count_macs, count_params
        from surgeon.keys import plan_of

        t = self.target
        assert t is not None
        if step > 0:
            if t.kind == "macs":
                self.reached = self.first["macs"] / max(count_macs(current, self.inputs), 1)
            elif t.kind == "params":
                self.reached = self.first["params"] / max(count_params(current), 1)
            else:
                self.reached *= (plan_of(current) or {}).get("target", {}).get("achieved", 1.0)
        goal = self.overall ** self.shares[step]
        rest = goal / self.reached
        if rest <= 1.0 + 1e-6:  # already there: only dead channels go
            return self.base.replace(ratio=0.0), goal
        kind = "speedup" if t.kind == "latency_ms" else t.kind
        return self.base.replace(target=t.replace(**{kind: rest})), goal


def _check_schedule(
    options: SlimOptions, steps: Any, schedule: Any, finetune: Any, rewind: Any
) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise SurgeonInputError(f"steps={steps!r}: use a whole number >= 1 (e.g. 3)")
    if schedule not in SCHEDULES:
        raise SurgeonInputError(f"schedule={schedule!r}: use one of {SCHEDULES}")
    wholes = [s for s in ("layers", "experts") if s in options.structures]
    if wholes and steps > 1:
        raise SurgeonInputError(
            f"structures with {' and '.join(map(repr, wholes))} prune in one step (a ratio of "
            "whole layers or experts is taken of the stack as it stands, so steps would "
            "compound): use slim() and fine-tune after it, or steps=1",
            option="structures",
        )
    if finetune is not None and not callable(finetune):
        raise SurgeonInputError(
            f"finetune={finetune!r} is not callable: pass a function finetune(model, step) that "
            "trains the model in place, or None"
        )
    if not isinstance(rewind, (bool, Mapping)):
        raise SurgeonInputError(
            f"rewind={rewind!r}: use True (the weights at the start), False, or a state dict of "
            "the original architecture"
        )
    data = options.data
    if data is not None and steps > 1 and iter(data) is data:  # type: ignore[call-overload]
        raise SurgeonInputError(
            "data= is a one-shot iterator but it is read at every step: pass a list of batches "
            "or a DataLoader"
        )
    if steps > 1 and any(not isinstance(m, type) for m in options.leaf_modules):
        raise SurgeonInputError(
            "prune_iteratively takes leaf_modules as module types: an instance belongs to the "
            "original model, and each step traces a new one (pass type(module) instead)"
        )


def _rewind_start(
    model: nn.Module, rewind: bool | Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The values to rewind to (empty: no rewinding)."""
    if isinstance(rewind, Mapping):
        return {k: v.detach().clone() for k, v in rewind.items()}
    if rewind:
        return {k: v.detach().clone() for k, v in model.state_dict().items()}
    return {}


def _compose_kept(
    kept: dict[str, dict[int, np.ndarray]], step: Mapping[str, Mapping[int, np.ndarray]]
) -> None:
    """Fold one step's kept indices (into that step's input) into the indices into the original."""
    for name, dims in step.items():
        total = kept.setdefault(name, {})
        for dim, idx in dims.items():
            total[dim] = idx if dim not in total else total[dim][idx]


def _rewind(
    model: nn.Module, start: Mapping[str, torch.Tensor], kept: Mapping[str, dict[int, np.ndarray]]
) -> None:
    """Copy into every tensor of ``model`` the start value of the indices it kept."""
    with torch.no_grad():
        for name, tensor in model.state_dict(keep_vars=True).items():
            src = start.get(name)
            if src is None:
                continue
            for dim, idx in sorted(kept.get(name, {}).items()):
                src = src.index_select(dim, torch.as_tensor(idx, dtype=torch.long))
            if src.shape != tensor.shape:
                raise SurgeonInputError(
                    f"rewind: {name} has shape {tuple(tensor.shape)} in the slim model but "
                    f"{tuple(src.shape)} once the start value is cut: the rewind state dict is "
                    "not of this model's original architecture"
                )
            tensor.copy_(src.to(tensor.device, tensor.dtype))
