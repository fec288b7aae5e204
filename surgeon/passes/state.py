"""The decision the passes share, carried in the open: ``gm.meta["surgeon.state"]``.

A :class:`SurgeryState` is a frozen value. Each pass reads it from the graph module, computes
a new one and stores it back (the masks are never edited in place), so what a pass decided is
visible between passes, and running a pass again sees that its work is done.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch.fx as fx

from surgeon.errors import SurgeonPassError
from surgeon.graph import ChannelGraph
from surgeon.importance import DataStats
from surgeon.keys import STATE_KEY

__all__ = ["STATE_KEY", "SurgeryState", "Sizes", "begin", "state_of"]


Masks = Mapping[int, np.ndarray]


@dataclass(frozen=True)
class SurgeryState:
    """What is decided about one traced model.

    Attributes:
        graph: the channel graph of the model as traced (sizes before any slicing).
        inputs: the example inputs (ResizePass re-runs the model on them).
        removed: group index -> bool mask over its channel classes: what goes.
        dead: the part of ``removed`` that PropagatePass found computes nothing.
        compensated: the part of ``removed`` that CompensatePass has already handled.
        applied: ResizePass has sliced the model; the decision is final.
        stats: what was measured on data (criteria, compensation means), if anything.
        original: group index -> class count before earlier prune steps (a schedule's
            cumulative ratio); ``None`` for a one-shot slim.
        kept: parameter / buffer name -> {dim: the original indices it kept} (after resize).
        output: the slim model's output on ``inputs`` (after resize).
    """

    graph: ChannelGraph
    inputs: Any
    removed: Masks
    dead: Masks
    compensated: Masks
    applied: bool = False
    stats: DataStats | None = None
    original: Mapping[int, int] | None = None
    kept: Mapping[str, Mapping[int, np.ndarray]] = field(default_factory=dict)
    output: Any = None

    @classmethod
    def start(cls, graph: ChannelGraph, inputs: Any, **extra: Any) -> SurgeryState:
        """Nothing removed yet, in every prunable group of ``graph``."""
        none = {g.index: np.zeros(g.n_classes, dtype=bool) for g in graph.groups if g.prunable}
        return cls(graph, inputs, none, _copy(none), _copy(none), **extra)

    def replace(self, **changes: Any) -> SurgeryState:
        return dataclasses.replace(self, **changes)

    def space_mask(self, space: Any) -> np.ndarray | None:
        """Removed mask over the indices of ``space`` (None if its group is not prunable)."""
        g = self.graph.group_of.get(space)
        mask = self.removed.get(g)
        if mask is None:
            return None
        return mask[self.graph.groups[g].class_of[space]]

    def new_size(self, space: Any) -> int:
        """The size ``space`` has once the removed classes are gone."""
        mask = self.space_mask(space)
        return self.graph.sizes[space] if mask is None else int((~mask).sum())

    def forced_zero(self) -> dict:
        """Space -> removed mask, for every space that loses something (zero once removed)."""
        out = {}
        for gi, mask in self.removed.items():
            if mask.any():
                g = self.graph.groups[gi]
                for s in g.spaces:
                    out[s] = mask[g.class_of[s]]
        return out

    def n_removed(self) -> int:
        return int(sum(m.sum() for m in self.removed.values()))

    def fingerprint(self) -> dict[str, Any]:
        """What must match for this decision to apply to another trace of the architecture."""
        groups = self.graph.prunable_groups()
        return {
            "spaces": len(self.graph.sizes),
            "groups": len(self.graph.groups),
            "prunable": [[g.index, g.n_classes] for g in groups],
        }

    def to_record(self) -> dict[str, Any]:
        """A JSON-able record of the decision: removed classes per group, and the fingerprint."""
        return {
            "fingerprint": self.fingerprint(),
            "removed": {
                str(i): np.nonzero(m)[0].tolist() for i, m in self.removed.items() if m.any()
            },
        }

    def with_record(self, record: Mapping[str, Any]) -> SurgeryState:
        """This state with the classes a record removed; the fingerprint must match."""
        if record.get("fingerprint") != self.fingerprint():
            raise SurgeonPassError(
                "the saved plan does not fit this model: its channel graph differs (another "
                "architecture, other input shapes, or other leaf modules); load it onto a fresh "
                "instance of the model it was made from"
            )
        removed = _copy(self.removed)
        for key, classes in record.get("removed", {}).items():
            removed[int(key)][np.asarray(classes, dtype=int)] = True
        return self.replace(removed=removed, compensated=_copy(removed))


class Sizes:
    """What a rule's resize hook is handed: ``sizes(space)`` is the size ``space`` has once
    the removed classes are gone, ``sizes.kept(space)`` the mask of its original indices that
    stay (a slice's bounds move by what goes before them)."""

    def __init__(self, state: SurgeryState) -> None:
        self._state = state

    def __call__(self, space: Any) -> int:
        return self._state.new_size(space)

    def kept(self, space: Any) -> np.ndarray:
        mask = self._state.space_mask(space)
        return np.ones(self._state.graph.sizes[space], dtype=bool) if mask is None else ~mask


def begin(gm: fx.GraphModule, graph: ChannelGraph, inputs: Any, **extra: Any) -> SurgeryState:
    """Start a decision on ``gm`` (stored in ``gm.meta[STATE_KEY]``) and return it."""
    state = SurgeryState.start(graph, inputs, **extra)
    gm.meta[STATE_KEY] = state
    return state


def state_of(gm: fx.GraphModule) -> SurgeryState:
    """The decision stored on ``gm``; the passes' common ``requires``."""
    state = getattr(gm, "meta", {}).get(STATE_KEY)
    if not isinstance(state, SurgeryState):
        raise SurgeonPassError(
            f"the graph module carries no surgeon state (gm.meta[{STATE_KEY!r}]): call "
            "surgeon.passes.begin(gm, build_channel_graph(gm), example_inputs) before the passes"
        )
    return state


def _copy(masks: Masks) -> dict[int, np.ndarray]:
    return {k: v.copy() for k, v in masks.items()}
