"""ChannelPrunePass: decide which channel classes go. Changes no shape."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any

import networkx as nx
import numpy as np
import torch.fx as fx

from surgeon.errors import SurgeonPassError
from surgeon.graph import ChannelGraph, Group
from surgeon.importance import class_scores
from surgeon.options import SlimOptions
from surgeon.passes.base import PassResult, SurgeryPass

__all__ = ["ChannelPrunePass", "protected_classes"]

log = logging.getLogger(__name__)


def protected_classes(group: Group, ignore: Iterable[str]) -> np.ndarray:
    """Classes holding a slice of an ignored module (or of a module inside one)."""
    names = tuple(ignore)
    keep = np.zeros(group.n_classes, dtype=bool)
    if not names:
        return keep
    for sl in group.params:
        owner = sl.owner
        if any(owner == n or owner.startswith(n + ".") or n == "" for n in names):
            keep[np.unique(group.class_of[sl.space])] = True
    return keep


def _keep_one_per_space(group: Group, mask: np.ndarray, score: np.ndarray) -> None:
    """No space may lose every channel (a cat input, a piece of a split): restore its best."""
    for s in group.spaces:
        cls = group.class_of[s]
        if len(cls) and mask[cls].all():
            mask[cls[np.argmax(score[cls])]] = False


def segments(group: Group) -> list[np.ndarray]:
    """The group's classes split by the producers that make them: one segment for a group
    every producer writes whole (a residual sum), one per input for a concatenation (a dense
    block's features, an inception module's branches). Classes no producer makes form one
    more segment."""
    columns: list[np.ndarray] = []
    for sl in group.params:
        if sl.role == "producer" and sl.space in group.class_of:
            col = np.zeros(group.n_classes, dtype=bool)
            col[group.class_of[sl.space]] = True
            columns.append(col)
    if not columns:
        return [np.arange(group.n_classes)]
    makers = np.stack(columns, axis=1)
    _, first, label = np.unique(makers, axis=0, return_index=True, return_inverse=True)
    label = label.reshape(-1)
    # one segment per distinct set of producers, in the order their first classes come
    return [np.flatnonzero(label == k) for k in np.argsort(first, kind="stable")]


def _remove_evenly(group: Group, mask: np.ndarray, order: list[int], want: int) -> int:
    """Remove ``want`` classes in ``order`` (least important first), each segment of the group
    first losing its own share of them, so that every concatenated input shrinks alike
    (``scope="local"`` means the same ratio for every layer, also inside a concatenation);
    what rounding leaves is taken in ``order``. Returns how many were removed."""
    parts = segments(group) if want else []
    done = 0
    if len(parts) > 1:
        frac = (want + int(mask.sum())) / group.n_classes
        rank = {c: i for i, c in enumerate(order)}
        for part in parts:
            quota = int(frac * len(part) + 1e-9) - int(mask[part].sum())
            for c in sorted((c for c in part if c in rank), key=rank.__getitem__):
                if quota <= 0 or done == want:
                    break
                if not mask[c]:
                    mask[c] = True
                    quota -= 1
                    done += 1
    return done + _take(mask, order, want - done)


def _per_class(group: Group, space: tuple[str, int]) -> int | None:
    """How many elements of ``space`` each class of ``group`` holds (None: not the same)."""
    counts = np.bincount(group.class_of[space], minlength=group.n_classes)
    return int(counts[0]) if len(counts) and (counts == counts[0]).all() else None


def _contiguous_width(group: Group, space: tuple[str, int]) -> int:
    """The channels each class of ``group`` holds in ``space`` where every class is one
    contiguous block of the same size; else 1."""
    cls = group.class_of[space]
    if not len(cls):
        return 1
    runs = 1 + int(np.count_nonzero(cls[1:] != cls[:-1]))
    counts = np.bincount(cls)
    counts = counts[counts > 0]  # the classes this space holds (a cat input: some of them)
    return int(counts[0]) if runs == len(counts) and (counts == counts[0]).all() else 1


def _tie_targets(graph: ChannelGraph, prunable: dict[int, Group], target: dict[int, int]) -> None:
    """Groups whose widths the model's own code ties (``graph.ties``: it reshapes a head
    merge to the width it reads off the embedding, ``C // num_heads`` of it) keep widths that
    stay equal: each group of a tied set keeps the least common width at or above what its
    own target keeps, so none loses more than asked. A set with a group that cannot keep it
    (blocked, too narrow) is left as planned: the graph form handles it, the model's own
    class then does not come back."""
    links = nx.Graph()
    per: dict[int, set[int | None]] = {}
    for a, b in graph.ties:
        ga, gb = graph.group_of.get(a), graph.group_of.get(b)
        if ga is None or gb is None or ga == gb:
            continue
        links.add_edge(ga, gb)
        for gi, s in ((ga, a), (gb, b)):
            g = graph.groups[gi]
            per.setdefault(gi, set()).add(_per_class(g, s) if g.prunable else None)
    for comp in nx.connected_components(links):
        unit = {gi: per[gi].pop() if len(per[gi]) == 1 else None for gi in comp}
        if any(gi not in prunable or unit[gi] is None for gi in comp):
            continue
        need = max(unit[gi] * (prunable[gi].n_classes - target[gi]) for gi in comp)
        step = math.lcm(*unit.values())
        width = -(-need // step) * step
        if any(width // unit[gi] > prunable[gi].n_classes for gi in comp):
            log.debug("tied groups %s cannot keep a common width", sorted(comp))
            continue
        for gi in comp:
            target[gi] = prunable[gi].n_classes - width // unit[gi]


def _take(mask: np.ndarray, order: list[int], want: int) -> int:
    """Mark the first ``want`` classes of ``order`` not yet removed; returns how many."""
    done = 0
    for c in order:
        if done == want:
            break
        if not mask[c]:
            mask[c] = True
            done += 1
    return done


class ChannelPrunePass(SurgeryPass):
    """Marks the least important channel classes of every prunable group as removed.

    Cases:
    1. ``scope="local"``: every group removes ``floor(ratio * classes)``; with ``round_to`` the
       kept count is rounded up so that every space with a parameter slice keeps a multiple
       of ``round_to`` channels (in classes: a multiple of ``round_to`` one-channel classes,
       any number of 64-wide heads).
    2. ``scope="global"``: scores are divided by their group's mean and one threshold removes
       ``ratio`` of all classes, no group losing more than ``max_group_ratio`` of its own.
    3. At least one class is kept per group and per space; classes of ignored modules
       (``options.ignore``, as qualified names) stay.
    4. ``state.original`` (group index -> class count of the model before earlier prune steps)
       makes ``ratio`` cumulative: the group ends with what ``ratio`` of its original count
       leaves (an iterative schedule's later steps remove only the difference).
    5. ``decision`` (group index -> removed mask, made by :class:`surgeon.budget.Budget` for
       a target, under the rules above): those classes go, and no score is computed.
    The scores come from ``options.importance``, with ``state.stats`` for the data criteria.
    """

    def __init__(
        self, options: SlimOptions, decision: Mapping[int, np.ndarray] | None = None
    ) -> None:
        self.options = options
        self.decision = decision
        self.ratio = options.ratio
        self.round_to = options.round_to
        self.ignore = tuple(str(i) for i in options.ignore)
        self.max_group_ratio = options.max_group_ratio

    def _n_keep(self, k: int, n_remove: int, step: int) -> int:
        keep = k - n_remove
        if self.round_to:
            keep = min(k, math.ceil(keep / step) * step)
        return max(1, keep)

    def _class_multiple(self, group: Group) -> int:
        """How many classes keep a multiple of ``round_to`` channels in every space that holds
        a parameter slice (where the compute is; a heads dim holds none): ``round_to`` where a
        class is one channel, fewer where it is a block of several (a whole head, a whole
        conv group). A class spread over the space (one offset of every group or head) counts
        as one channel: what a runtime blocks on there is the width inside each group."""
        r = self.round_to
        if not r:
            return 1
        spaces = {sl.space for sl in group.params if sl.space in group.class_of}
        return math.lcm(1, *(r // math.gcd(r, _contiguous_width(group, s)) for s in spaces))

    def call(self, gm: fx.GraphModule) -> PassResult:
        state = self.state(gm)
        if self.decision is not None and not state.applied:
            return self._decided(gm, state)
        if state.applied or self.ratio <= 0:
            return PassResult(gm, False, {"removed_classes": 0})
        groups = state.graph.prunable_groups()
        crit = self.options.importance
        scores = {g.index: class_scores(gm, g, crit, state.stats) for g in groups}
        protect = {g.index: protected_classes(g, self.ignore) for g in groups}
        orig = {g.index: (state.original or {}).get(g.index, g.n_classes) for g in groups}
        if self.options.scope == "local":
            target = {}
            for g in groups:
                n = orig[g.index]
                keep = self._n_keep(n, int(self.ratio * n + 1e-9), self._class_multiple(g))
                target[g.index] = max(0, g.n_classes - keep)
        else:
            target = self._global_targets(groups, scores, protect, orig)
        _tie_targets(state.graph, {g.index: g for g in groups}, target)
        removed_masks, removed = dict(state.removed), 0
        for g in groups:
            mask = removed_masks[g.index].copy()
            before = int(mask.sum())
            order = [
                c for c in np.argsort(scores[g.index], kind="stable") if not protect[g.index][c]
            ]
            want = max(0, target[g.index] - before)
            if self.options.scope == "local":
                _remove_evenly(g, mask, order, want)
            else:
                _take(mask, order, want)
            _keep_one_per_space(g, mask, scores[g.index])
            removed += int(mask.sum()) - before
            removed_masks[g.index] = mask
        self.store(gm, state.replace(removed=removed_masks))
        return PassResult(gm, removed > 0, {"removed_classes": removed, "groups": len(groups)})

    def _decided(self, gm: fx.GraphModule, state: Any) -> PassResult:
        removed_masks, removed = dict(state.removed), 0
        for gi, mask in self.decision.items():  # type: ignore[union-attr]
            if gi not in removed_masks:  # blocked since the decision (a failed resize)
                continue
            if len(mask) != len(removed_masks[gi]):
                raise SurgeonPassError(
                    f"the decision for group {gi} has {len(mask)} classes where the graph has "
                    f"{len(removed_masks[gi])}: it was made for another capture of the model"
                )
            new = removed_masks[gi] | np.asarray(mask, dtype=bool)
            removed += int(new.sum() - removed_masks[gi].sum())
            removed_masks[gi] = new
        self.store(gm, state.replace(removed=removed_masks))
        return PassResult(
            gm, removed > 0, {"removed_classes": removed, "groups": len(removed_masks)}
        )

    def _global_targets(
        self, groups: list[Group], scores: dict, protect: dict, orig: dict[int, int]
    ) -> dict[int, int]:
        total = sum(orig.values())
        budget = int(self.ratio * total + 1e-9) - (total - sum(g.n_classes for g in groups))
        entries = []
        for g in groups:
            s = scores[g.index]
            norm = s / (s.mean() + 1e-12)
            entries += [
                (norm[c], g.index, c) for c in range(g.n_classes) if not protect[g.index][c]
            ]
        entries.sort(key=lambda e: (e[0], e[1], e[2]))
        cap = {
            g.index: max(
                0,
                min(g.n_classes - 1, int(self.max_group_ratio * orig[g.index]))
                - (orig[g.index] - g.n_classes),
            )
            for g in groups
        }
        count = dict.fromkeys(cap, 0)
        for _, gi, _ in entries:
            if budget == 0:
                break
            if count[gi] < cap[gi]:
                count[gi] += 1
                budget -= 1
        by_index = {g.index: g for g in groups}
        out = {}
        for gi, n in count.items():
            g, o = by_index[gi], orig[gi]
            out[gi] = max(
                0, g.n_classes - self._n_keep(o, o - g.n_classes + n, self._class_multiple(g))
            )
        return out
