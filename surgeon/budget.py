"""Allocation by cost on the target: which channel classes go, across all groups at once.

A :class:`Budget` is the cost model of one captured model for one kind of target:

1. **Cost of a class**: what its weight elements cost on the target, summed over the
   parameter slices of its group: one per element for ``params``; for ``macs`` the MACs each
   element of a Conv / Linear weight does (the layer's MACs over its weight's size).
2. **Priority**: the class's importance divided by its group's mean (as ``scope="global"``),
   over its cost. The classes go lowest priority first, across every group; no group loses
   more than ``max_group_ratio`` of its classes or its last one, and ignored modules' classes
   stay.
3. **Time** is not linear in width (a layer has fixed costs; a runtime computes channels in
   blocks), so for a measured target each group gives up its classes least important first,
   the ``j``-th costing what the per-layer latency table
   (:func:`surgeon.latency.layer_table`) says the ``j``-th removal saves in the group's
   layers, and the next removal across all groups is the one of least importance per
   millisecond saved.
4. **Level**: the first ``k`` classes of that order are removed, then each group's count is
   rounded to its channel multiple (``round_to``: kept rounded up), tied widths are made equal,
   and every space keeps a channel (the rules every slim keeps).
5. **Estimate**: what a decision leaves, computed from the parameters' kept fractions: exact
   for parameters (but for channels found dead later), the Conv / Linear MACs for ``macs``
   (the rest of the MACs held fixed), and the per-layer table interpolated at each layer's
   kept input and output widths for time (the rest of the measured latency held fixed).
   :meth:`Budget.decide` finds the smallest level whose estimate reaches a goal; the caller
   measures what it really made and moves on from there
   (:func:`surgeon.autotune.slim_to_target`).
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.fx as fx

from surgeon.graph import ChannelGraph, Group
from surgeon.importance import DataStats, class_scores
from surgeon.latency import LayerTime
from surgeon.options import SlimOptions
from surgeon.passes.prune import (
    ChannelPrunePass,
    _keep_one_per_space,
    _tie_targets,
    protected_classes,
)
from surgeon.rules.base import attr_tensor

__all__ = ["Budget", "Decision", "weight_macs"]

Decision = dict[int, np.ndarray]  # group index -> removed mask over its classes


def weight_macs(gm: fx.GraphModule) -> dict[str, int]:
    """Weight qualified name -> MACs of the Conv / Linear calls that read it, from the shape
    metadata (what :func:`surgeon.diagnose.dense_macs` sums)."""
    from surgeon.diagnose import dense_calls

    out: dict[str, int] = {}
    for name, macs in dense_calls(gm):
        if name is not None:
            out[name] = out.get(name, 0) + macs
    return out


@dataclass
class _Dim:
    """One pruned dim of one parameter: its size and, per tensor index, the class (of group
    ``group``) it belongs to."""

    group: int
    size: int
    cls: np.ndarray


class Budget:
    """The cost model of one captured model for a target ``kind`` (``"params"``, ``"macs"``
    or ``"latency"``); see the module docstring.

    ``total`` is the model's whole cost in the kind's unit (parameters, MACs, milliseconds
    measured); ``table`` the per-layer latency table for ``"latency"``; ``reference`` what
    factors are taken against (the model before whole blocks were cut from ``gm``; default
    ``total``).
    """

    def __init__(
        self,
        gm: fx.GraphModule,
        graph: ChannelGraph,
        options: SlimOptions,
        stats: DataStats | None,
        kind: str,
        total: float,
        table: Mapping[str, LayerTime] | None = None,
        reference: float | None = None,
    ) -> None:
        self.graph = graph
        self.kind = kind
        self.groups = {g.index: g for g in graph.prunable_groups()}
        self.pass_ = ChannelPrunePass(options)
        self.multiple = {gi: self.pass_._class_multiple(g) for gi, g in self.groups.items()}
        ignore = tuple(str(i) for i in options.ignore)
        self.protect = {gi: protected_classes(g, ignore) for gi, g in self.groups.items()}
        self.scores = {
            gi: class_scores(gm, g, options.importance, stats) for gi, g in self.groups.items()
        }
        self.dims = self._dims(gm)
        self.table = dict(table or {})
        self.base = self._base(gm)  # param -> its cost at full width (in the kind's unit)
        self.rest = max(0.0, float(total) - sum(self.base.values()))
        self.total = self.rest + sum(self.base.values())
        self.reference = self.total if reference is None else float(reference)
        cap = {
            gi: min(g.n_classes - 1, int(options.max_group_ratio * g.n_classes))
            for gi, g in self.groups.items()
        }
        if kind == "latency":
            self.order = self._marginal_order(gm, cap)
        else:
            self.order = self._order(self._class_costs(gm), cap)
        # per group, its classes in the order and their positions in it
        self.group_order: dict[int, list[int]] = {gi: [] for gi in self.groups}
        self.positions: dict[int, list[int]] = {gi: [] for gi in self.groups}
        for i, (gi, c) in enumerate(self.order):
            self.group_order[gi].append(c)
            self.positions[gi].append(i)

    # -- the model's parameters and what they cost ------------------------------------------
    def _dims(self, gm: fx.GraphModule) -> dict[str, dict[int, _Dim]]:
        dims: dict[str, dict[int, _Dim]] = {}
        for gi, g in self.groups.items():
            for sl in g.params:
                name = f"{sl.owner}.{sl.name}" if sl.owner else sl.name
                t = attr_tensor(gm, name)
                if not isinstance(t, torch.Tensor) or sl.space not in g.class_of:
                    continue
                per = dims.setdefault(name, {})
                if sl.dim in per:
                    continue
                cls = g.class_of[sl.space]
                index = np.full(t.shape[sl.dim], -1)
                index[sl.tensor_index(len(cls))] = cls
                per[sl.dim] = _Dim(gi, int(t.shape[sl.dim]), index)
        return dims

    def _base(self, gm: fx.GraphModule) -> dict[str, float]:
        if self.kind == "params":
            seen: set[int] = set()
            out = {}
            for name, p in gm.named_parameters(remove_duplicate=False):
                if id(p) not in seen:
                    seen.add(id(p))
                    out[name] = float(p.numel())
            return out
        if self.kind == "macs":
            return {k: float(v) for k, v in weight_macs(gm).items()}
        return {name: lt.full for name, lt in self.table.items()}

    def _rate(self, gm: fx.GraphModule, name: str) -> float:
        """The kind's cost per element of parameter ``name`` (what removing one saves)."""
        base = self.base.get(name)
        if not base:
            return 0.0
        return base / attr_tensor(gm, name).numel()

    def _class_costs(self, gm: fx.GraphModule) -> dict[int, np.ndarray]:
        cost = {gi: np.zeros(g.n_classes) for gi, g in self.groups.items()}
        for name, per in self.dims.items():
            rate = self._rate(gm, name)
            if rate <= 0:
                continue
            numel = attr_tensor(gm, name).numel()
            for d in per.values():
                inside = d.cls >= 0
                np.add.at(cost[d.group], d.cls[inside], rate * numel / d.size)
        return cost

    def _normalised(self, gi: int) -> np.ndarray:
        s = self.scores[gi]
        return s / (s.mean() + 1e-12)

    def _order(
        self, cost: Mapping[int, np.ndarray], cap: Mapping[int, int]
    ) -> list[tuple[int, int]]:
        """Every removable class as ``(group, class)``, lowest importance per cost first,
        where no group passes its cap (its last class, ``max_group_ratio`` of them)."""
        entries = []
        for gi, g in self.groups.items():
            norm = self._normalised(gi)
            for c in range(g.n_classes):
                if not self.protect[gi][c] and cost[gi][c] > 0:
                    entries.append((norm[c] / cost[gi][c], gi, c))
        entries.sort()
        taken = dict.fromkeys(cap, 0)
        order = []
        for _, gi, c in entries:
            if taken[gi] < cap[gi]:
                taken[gi] += 1
                order.append((gi, c))
        return order

    def _marginal_order(self, gm: fx.GraphModule, cap: Mapping[int, int]) -> list[tuple[int, int]]:
        """The order for time, whose cost is not linear: a layer narrowed far saves less per
        channel (a runtime's fixed cost per layer, its blocks of channels). Each group gives
        up its classes least important first; the ``j``-th costs what the per-layer table
        says the ``j``-th removal saves in the group's layers (the other dims at full
        width), and the next removal across all groups is the one of least importance per
        millisecond saved (a heap of each group's next)."""
        saving = {gi: self._savings(gi, g) for gi, g in self.groups.items()}
        queue: list[tuple[tuple[int, float], int, int]] = []
        ranked: dict[int, list[int]] = {}
        norm = {}
        for gi in self.groups:
            norm[gi] = self._normalised(gi)
            ranked[gi] = [
                int(c) for c in np.argsort(norm[gi], kind="stable") if not self.protect[gi][c]
            ][: cap[gi]]
            self._push(queue, gi, 0, ranked, norm, saving)
        order = []
        while queue:
            _, gi, j = heapq.heappop(queue)
            order.append((gi, ranked[gi][j]))
            self._push(queue, gi, j + 1, ranked, norm, saving)
        return order

    @staticmethod
    def _push(
        queue: list, gi: int, j: int, ranked: Mapping, norm: Mapping, saving: Mapping
    ) -> None:
        """Queue group ``gi``'s ``j``-th removal; one the table says saves nothing (below the
        narrowest width timed) still comes, after every one that saves, least important
        first (what the table does not time, the norms and activations, still shrinks)."""
        if j >= len(ranked[gi]):
            return
        score = norm[gi][ranked[gi][j]]
        saves = saving[gi][j]
        heapq.heappush(queue, ((0, score / saves) if saves > 0 else (1, score), gi, j))

    def _savings(self, gi: int, g: Group) -> np.ndarray:
        """Milliseconds the ``j``-th removal of a class of group ``gi`` saves, ``j = 0..n-1``
        (its classes taken as equal shares of every dim they hold)."""
        n = g.n_classes
        kept = 1.0 - np.arange(n + 1) / n
        total = np.zeros(n + 1)
        for name, per in self.dims.items():
            lt = self.table.get(name)
            if lt is None:
                continue
            for dim, d in per.items():
                if d.group == gi and dim in (0, 1):
                    total += [lt.at(k, 1.0) if dim == 1 else lt.at(1.0, k) for k in kept]
        return total[:-1] - total[1:]

    # -- decisions ---------------------------------------------------------------------------
    @property
    def levels(self) -> int:
        """How many classes the whole order holds (the last level: every group at its floor)."""
        return len(self.order)

    def decision(self, level: int) -> Decision:
        """The removed masks when the first ``level`` classes of the order go, after the
        channel multiples, the ties between widths, and one channel kept per space."""
        level = max(0, min(level, self.levels))
        target = {}
        for gi, g in self.groups.items():
            want = bisect.bisect_left(self.positions[gi], level)
            keep = self.pass_._n_keep(g.n_classes, want, self.multiple[gi])
            target[gi] = max(0, g.n_classes - keep)
        _tie_targets(self.graph, self.groups, target)
        out: Decision = {}
        for gi, g in self.groups.items():
            mask = np.zeros(g.n_classes, dtype=bool)
            mask[self.group_order[gi][: target[gi]]] = True
            _keep_one_per_space(g, mask, self.scores[gi])
            out[gi] = mask
        return out

    def estimate(self, decision: Decision) -> float:
        """The model's cost (in the kind's unit) once ``decision`` is made."""
        total = self.rest + sum(v for k, v in self.base.items() if k not in self.dims)
        for name, per in self.dims.items():
            base = self.base.get(name)
            if not base:
                continue
            kept = {}
            for dim, d in per.items():
                mask = decision.get(d.group)
                if mask is None:
                    continue
                gone = np.zeros(d.size, dtype=bool)
                inside = d.cls >= 0
                gone[inside] = mask[d.cls[inside]]
                kept[dim] = 1 - gone.sum() / d.size
            if self.kind == "latency":  # a weight's dim 0 is its outputs, dim 1 its inputs
                total += self.table[name].at(kept.get(1, 1.0), kept.get(0, 1.0))
            else:
                total += base * math.prod(kept.values())
        return total

    def factor(self, decision: Decision) -> float:
        """How many times cheaper than the reference ``decision`` is estimated to make it."""
        return self.reference / max(self.estimate(decision), 1e-12)

    def decide(self, goal: float) -> tuple[Decision, int, float]:
        """The smallest level whose estimate is ``goal`` times cheaper (the last level where
        none is): its decision, the level, and the factor estimated."""
        factors: dict[int, float] = {}

        def at(level: int) -> float:
            if level not in factors:
                factors[level] = self.factor(self.decision(level))
            return factors[level]

        lo, hi = 0, self.levels
        if at(hi) < goal:
            return self.decision(hi), hi, at(hi)
        while lo < hi:  # the estimate grows with the level (but for rounding's steps)
            mid = (lo + hi) // 2
            if at(mid) >= goal:
                hi = mid
            else:
                lo = mid + 1
        return self.decision(lo), lo, at(lo)
