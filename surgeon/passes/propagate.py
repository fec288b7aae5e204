"""PropagatePass: close the removal decision over the graph, exactly."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import torch.fx as fx

from surgeon.passes.base import PassResult, SurgeryPass
from surgeon.passes.prune import protected_classes

__all__ = ["PropagatePass"]


log = logging.getLogger(__name__)


class PropagatePass(SurgeryPass):
    """Marks as removed every channel class whose removal leaves the function unchanged.

    A class is dead when, at every place its values leave the class (its *sinks*):
    1. the consumer's weights for it are zero (counting only the consumer's output rows that
       are still alive), or the values are constant zero — removing it changes nothing;
    2. the values are a known non-zero constant and the consumer is affine with no padding in
       the way (Linear, an unpadded Conv): the constant times the weights is folded into the
       consumer's bias, then the class goes;
    3. never through a statistic (a norm over the dim, a mean, a softmax): any removal would
       change it.
    Constants come from the rules' constant transfers (a zeroed filter gives its bias, a BN
    with zero scale gives its shift, a removed class gives zero). The closure repeats until
    nothing changes, so a class that only fed removed channels goes too. Every space keeps
    at least one channel; classes of ignored modules stay.
    """

    def __init__(self, ignore: Iterable[str] = (), max_rounds: int = 8) -> None:
        self.ignore = tuple(ignore)
        self.max_rounds = max_rounds

    def call(self, gm: fx.GraphModule) -> PassResult:
        state = self.state(gm)
        if state.applied:
            return PassResult(gm, False, {"dead_classes": 0, "folds": 0})
        graph = state.graph
        removed = dict(state.removed)  # each mask replaced, never changed in place
        dead = dict(state.dead)
        current = state
        groups = graph.prunable_groups()
        protect = {g.index: protected_classes(g, self.ignore) for g in groups}
        dead_total = folds = 0
        for _ in range(self.max_rounds):
            consts = graph.constants(current.forced_zero())
            new_any = False
            for g in groups:
                mask = removed[g.index]
                live = protect[g.index].copy()
                fold_sites = []
                for sink in g.sinks:
                    cls = g.class_of[sink.space]
                    v = consts.get(sink.space)
                    if v is None:
                        v = np.full(len(cls), np.nan)
                    if sink.kind == "stat":
                        live[cls] = True
                        continue
                    zero = v == 0
                    if sink.kind == "contract" and sink.ignores is not None:
                        alive = None
                        if sink.out_space is not None:
                            out_mask = current.space_mask(sink.out_space)
                            alive = None if out_mask is None else ~out_mask
                        zero = zero | sink.ignores(alive)
                    foldable = (
                        ~zero & ~np.isnan(v) & (sink.kind == "contract") & (sink.fold is not None)
                    )
                    if sink.owner is not None and graph.calls[sink.owner] > 1:
                        foldable[:] = False  # one bias, several call sites: no single fold is exact
                    live[cls[~zero & ~foldable]] = True
                    if foldable.any():
                        fold_sites.append((sink, foldable, v, cls))
                new_dead = ~live & ~mask
                if not new_dead.any():
                    continue
                trial = mask | new_dead
                for s in g.spaces:
                    cls = g.class_of[s]
                    if len(cls) and trial[cls].all():
                        keep = cls[new_dead[cls]][0]
                        new_dead[keep] = False
                        trial[keep] = False
                if not new_dead.any():
                    continue
                for sink, foldable, v, cls in fold_sites:
                    idx = np.nonzero(foldable & new_dead[cls])[0]
                    if len(idx):
                        sink.fold(idx, v[idx])
                        folds += len(idx)
                removed[g.index] = mask | new_dead
                dead[g.index] = dead[g.index] | new_dead
                current = state.replace(removed=dict(removed))  # what later groups see
                dead_total += int(new_dead.sum())
                new_any = True
            if not new_any:
                break
        else:
            if self.max_rounds:
                log.warning(
                    "surgeon: PropagatePass stopped at its round limit (%d rounds) while still "
                    "finding dead channels: the slim model is exact, but may keep some channels "
                    "that only feed removed ones (PropagatePass(max_rounds=...) goes further)",
                    self.max_rounds,
                )
        self.store(gm, state.replace(removed=removed, dead=dead))
        return PassResult(gm, dead_total > 0, {"dead_classes": dead_total, "folds": folds})
