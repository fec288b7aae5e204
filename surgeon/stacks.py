"""Whole layers of a stack (``structures`` with ``"layers"``): find the stacks, score their
layers on data, take the least useful out of the model itself.

A *stack* is an ``nn.ModuleList`` or ``nn.Sequential`` of two or more modules of one class
that the model's forward runs one after another on one hidden state: layer ``i + 1`` reads
what layer ``i`` returned, and each returns a state of the shape it read (a transformer's
decoder layers, a stage of residual blocks). That is checked on the data, not assumed.

A layer's score is how much it changes its input (ShortGPT's block influence): one minus the
mean cosine similarity between what it reads and what it returns, per token over the last
dim of a ``(batch, tokens, width)`` state, per position over the channel dim (1) otherwise.
A layer that returns its input (its output projections zero) scores 0 and goes exactly.

The layers go from the container itself, so the model keeps its class: the container is
rebuilt without them, the per-layer index attributes of those left (``layer_idx``, which a
generation cache reads) are renumbered, and the model's config follows (its layer count and
its per-layer lists, :func:`surgeon.modelconfig.follow_count`). A stack whose model fails
or changes its output's shapes without the layers keeps them, with the reason in the plan.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from surgeon.modelconfig import follow_count, restore_configs, saved_configs
from surgeon.verify import eager_outputs, eager_runs

__all__ = ["Stack", "find_stacks", "score_stacks", "cut_stacks", "drop_layers"]

log = logging.getLogger(__name__)

#: a layer whose change of its input has at most this energy relative to the input is the
#: identity: it goes at any ratio
EXACT = 1e-12


@dataclass
class Stack:
    """One stack: its path in the model, its size, and per layer (once scored) the score
    and the relative energy of its change (``change``, 0 for an identity layer)."""

    path: str
    size: int
    scores: list[float] = field(default_factory=list)
    change: list[float] = field(default_factory=list)
    why_not: str = ""  # set when the data shows it is no stack

    def chosen(self, ratio: float) -> list[int]:
        """The layers a ``ratio`` takes: the share ``ratio`` of the stack (rounded down,
        one layer always kept), least useful first, and every identity layer."""
        order = sorted(range(self.size), key=lambda i: (self.scores[i], i))
        take = set(order[: min(int(ratio * self.size + 1e-9), self.size - 1)])
        take |= {i for i in range(self.size) if self.change[i] <= EXACT}
        if len(take) >= self.size:  # all identity: one stays (a container may not be empty)
            take.discard(max(range(self.size), key=lambda i: (self.scores[i], -i)))
        return sorted(take)


def find_stacks(model: nn.Module) -> list[Stack]:
    """Containers of two or more modules of one class that hold parameters: candidates,
    confirmed by :func:`score_stacks` on data."""
    found = []
    for path, m in model.named_modules():
        if not isinstance(m, (nn.ModuleList, nn.Sequential)) or len(m) < 2:
            continue
        kinds = {type(c) for c in m}
        if len(kinds) == 1 and any(True for _ in m[0].parameters()):
            found.append(Stack(path, len(m)))
    return found


def _hidden_in(args: tuple, kwargs: Mapping[str, Any]) -> torch.Tensor | None:
    for v in (*args, kwargs.get("hidden_states"), *kwargs.values()):
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            return v
    return None


def _hidden_out(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    first = next(iter(out.values()), None) if isinstance(out, Mapping) else None
    return first if isinstance(first, torch.Tensor) else None


def _cosine_gap(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, float]:
    """(sum over positions of 1 - cos, positions, |y - x|^2 / |x|^2)."""
    x, y = x.detach().double(), y.detach().double()
    dim = -1 if x.dim() == 3 else 1 if x.dim() > 1 else 0
    cos = torch.nn.functional.cosine_similarity(x, y, dim=dim, eps=1e-30)
    energy = float(x.square().sum())
    change = float((y - x).square().sum()) / energy if energy > 0 else float(not torch.equal(x, y))
    return float((1 - cos).sum()), float(cos.numel()), change


class _Recorder:
    """Forward hooks on every layer of every candidate stack, scoring each call and checking
    that each stack runs its layers in order, each on what the one before returned."""

    def __init__(self, model: nn.Module, stacks: list[Stack]) -> None:
        self.stacks = stacks
        self.sums = [[0.0] * s.size for s in stacks]
        self.counts = [[0.0] * s.size for s in stacks]
        self.change = [[0.0] * s.size for s in stacks]
        self.seen: list[list[int]] = [[] for _ in stacks]
        self.last: list[torch.Tensor | None] = [None] * len(stacks)
        self.inputs: dict[tuple[int, int], torch.Tensor] = {}
        self.handles = []
        for si, s in enumerate(stacks):
            for li, layer in enumerate(model.get_submodule(s.path)):
                self.handles.append(
                    layer.register_forward_pre_hook(self._pre(si, li), with_kwargs=True)
                )
                self.handles.append(layer.register_forward_hook(self._post(si, li)))

    def _pre(self, si: int, li: int):
        def hook(module, args, kwargs):
            s = self.stacks[si]
            x = _hidden_in(args, kwargs)
            if s.why_not:
                return
            if x is None:
                s.why_not = f"layer {li} reads no floating-point tensor"
            elif li != len(self.seen[si]) % s.size:
                s.why_not = f"layer {li} ran out of order (after {self.seen[si][-1:]})"
            elif li > 0 and x is not self.last[si] and not _same(x, self.last[si]):
                s.why_not = f"layer {li} does not read what layer {li - 1} returned"
            self.seen[si].append(li)
            self.inputs[(si, li)] = x

        return hook

    def _post(self, si: int, li: int):
        def hook(module, args, out):
            s = self.stacks[si]
            x = self.inputs.pop((si, li), None)
            y = _hidden_out(out)
            if s.why_not or x is None:
                return
            if y is None or y.shape != x.shape:
                got = None if y is None else tuple(y.shape)
                s.why_not = f"layer {li} returns {got} for an input of {tuple(x.shape)}"
                return
            gap, n, change = _cosine_gap(x, y)
            self.sums[si][li] += gap
            self.counts[si][li] += n
            self.change[si][li] = max(self.change[si][li], change)
            self.last[si] = y

        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _same(a: torch.Tensor, b: torch.Tensor | None) -> bool:
    return b is not None and a.shape == b.shape and torch.equal(a, b)


def score_stacks(model: nn.Module, stacks: list[Stack], batches: Iterable[Any]) -> list[Stack]:
    """Run ``model`` (eval, no grad) on each batch of inputs and score every layer of every
    candidate; returns the candidates the data confirms as stacks (each layer ran once per
    batch, in order, on its predecessor's output, returning a state of its input's shape)."""
    rec = _Recorder(model, stacks)
    try:
        for _ in eager_runs(model, batches):
            for si, s in enumerate(stacks):
                if not s.why_not and len(rec.seen[si]) % s.size:
                    s.why_not = f"ran {len(rec.seen[si]) % s.size} of its {s.size} layers"
    finally:
        rec.close()
    confirmed = []
    for si, s in enumerate(stacks):
        if s.why_not or not rec.seen[si]:
            log.debug("surgeon: %s is no stack: %s", s.path, s.why_not or "never ran")
            continue
        s.scores = [rec.sums[si][i] / max(rec.counts[si][i], 1) for i in range(s.size)]
        s.change = rec.change[si]
        confirmed.append(s)
    return confirmed


def drop_layers(model: nn.Module, path: str, drop: Iterable[int]) -> None:
    """Take the layers ``drop`` out of the container at ``path`` (in place): the container is
    rebuilt from the others, their index attributes renumbered, and the config follows."""
    container = model.get_submodule(path)
    drop = set(drop)
    n = len(container)
    kept = [i for i in range(n) if i not in drop]
    index_attrs = _index_attributes(container)
    if isinstance(container, nn.Sequential):
        names = list(container._modules)
        numbered = names == [str(i) for i in range(n)]
        items = [(str(j) if numbered else names[i], container[i]) for j, i in enumerate(kept)]
        new: nn.Module = type(container).__new__(type(container))
        new.__dict__.update(container.__dict__)
        new._modules = dict(items)
    else:
        new = type(container).__new__(type(container))
        new.__dict__.update(container.__dict__)
        new._modules = {str(j): container[i] for j, i in enumerate(kept)}
    for j, i in enumerate(kept):
        for sub, attr in index_attrs:
            setattr(container[i].get_submodule(sub), attr, j)
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, new)
    follow_count(model, n, kept, word="layer")


def _index_attributes(container: nn.Module) -> list[tuple[str, str]]:
    """(submodule path, attribute) pairs that hold each layer's own index in every layer of
    the stack (``self_attn.layer_idx``), found by their values, not their names."""
    first = dict(container[0].named_modules())
    found = []
    for sub, m in first.items():
        for attr, v in vars(m).items():
            if type(v) is not int or v != 0:
                continue
            try:
                values = [getattr(layer.get_submodule(sub), attr) for layer in container]
            except AttributeError:
                continue
            if values == list(range(len(container))):
                found.append((sub, attr))
    return found


def cut_stacks(
    model: nn.Module,
    batches: list[Any],
    ratio: float,
    chosen: Mapping[str, Iterable[int]] | None = None,
) -> list[dict[str, Any]]:
    """Take out of ``model`` (in place) the layers ``ratio`` chooses in each stack (or those
    ``chosen`` names by stack path, a saved plan's); returns the record per stack. A stack
    whose model no longer runs on ``batches[0]`` with the same output shapes keeps its
    layers, and its record says why."""
    stacks = find_stacks(model)
    if chosen is not None:
        stacks = [s for s in stacks if s.path in chosen]
    if not stacks:
        return []
    scored = score_stacks(model, stacks, batches)
    # nested stacks: an outer one (stages) is scored too; cut inner ones first, outer last
    records = []
    before = [tuple(v.shape) for v in eager_outputs(model, batches[0])]
    for s in sorted(scored, key=lambda s: -s.path.count(".")):
        drop = list(chosen[s.path]) if chosen is not None else s.chosen(ratio)
        if not drop:
            continue
        container = model.get_submodule(s.path)
        parent, _, name = s.path.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        saved = saved_configs(model)
        drop_layers(model, s.path, drop)
        why = _still_runs(model, batches[0], before)
        if why:
            setattr(owner, name, container)
            restore_configs(saved)
            if chosen is not None:
                raise RuntimeError(f"the saved plan's layers of {s.path} cannot go: {why}")
            log.warning("surgeon: the layers of %s stay: %s", s.path, why)
            records.append({"path": s.path, "removed": [], "why": why})
            continue
        records.append(
            {
                "path": s.path,
                "size": s.size,
                "removed": sorted(drop),
                "scores": [round(v, 6) for v in s.scores],
            }
        )
    return records


def _still_runs(model: nn.Module, inputs: Any, before: list[tuple[int, ...]]) -> str:
    try:
        after = [tuple(v.shape) for v in eager_outputs(model, inputs)]
    except Exception as exc:  # noqa: BLE001 - a model that fails without them keeps them
        return f"the model fails without them ({type(exc).__name__}: {exc})"[:300]
    if after != before:
        return "the model's output shapes change without them"
    return ""
