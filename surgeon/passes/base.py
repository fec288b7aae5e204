"""The pass contract: ``call(gm) -> PassResult``, run in order by a PassManager."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch.fx as fx

from surgeon.errors import SurgeonError, SurgeonPassError
from surgeon.graph import ChannelGraph

__all__ = ["PassResult", "Pass", "PassManager", "PrunePlan"]

log = logging.getLogger(__name__)


@dataclass
class PassResult:
    module: fx.GraphModule
    modified: bool
    stats: dict[str, Any] = field(default_factory=dict)


class PrunePlan:
    """Which channel classes go, per group: the one value the three passes share.

    ``removed[g]`` is a bool mask over group g's classes; ``dead[g]`` marks the ones that
    PropagatePass removed because they computed nothing (the rest were pruned by the criterion). ``applied`` turns true
    once ResizePass has sliced the model; the plan is then final.
    """

    def __init__(self, graph: ChannelGraph) -> None:
        self.graph = graph
        self.removed: dict[int, np.ndarray] = {
            g.index: np.zeros(g.n_classes, dtype=bool) for g in graph.groups if g.prunable
        }
        self.dead: dict[int, np.ndarray] = {i: np.zeros_like(m) for i, m in self.removed.items()}
        self.applied = False

    def space_mask(self, space) -> np.ndarray | None:  # noqa: ANN001
        """Removed mask over the indices of ``space`` (None if its group is not prunable)."""
        g = self.graph.group_of.get(space)
        mask = self.removed.get(g)
        if mask is None:
            return None
        return mask[self.graph.groups[g].class_of[space]]

    def forced_zero(self) -> dict:
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
        """What must match for this plan to apply to another trace of the same architecture."""
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

    def apply_record(self, record: dict[str, Any]) -> None:
        """Mark the classes a record removed; the fingerprint must match this graph."""
        if record.get("fingerprint") != self.fingerprint():
            raise SurgeonPassError(
                "the saved plan does not fit this model: its channel graph differs (another "
                "architecture, other input shapes, or other leaf modules); load it onto a fresh "
                "instance of the model it was made from"
            )
        for key, classes in record.get("removed", {}).items():
            self.removed[int(key)][np.asarray(classes, dtype=int)] = True


class Pass:
    """A rewrite step. Subclasses implement ``call``; a second run must change nothing."""

    name = "Pass"

    def call(self, gm: fx.GraphModule) -> PassResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, gm: fx.GraphModule) -> PassResult:
        return self.call(gm)


class PassManager:
    """Runs passes in order; a failure names the pass and the passes that already ran."""

    def __init__(self, passes: list[Pass]) -> None:
        self.passes = list(passes)

    def run(self, gm: fx.GraphModule) -> PassResult:
        done: list[str] = []
        stats: dict[str, Any] = {}
        modified = False
        for p in self.passes:
            ran = ", ".join(done) or "none"
            try:
                res = p(gm)
            except SurgeonPassError as exc:
                raise SurgeonPassError(
                    f"{p.name} failed: {exc} (passes that already ran: {ran})"
                ) from exc
            except SurgeonError:
                raise
            except Exception as exc:
                raise SurgeonPassError(
                    f"{p.name} failed: {type(exc).__name__}: {exc} (passes that already ran: {ran}). "
                    "This is a surgeon bug or an op whose rule is wrong: rerun with that module in "
                    "ignore=(...) or leaf_modules=(...) and report the model."
                ) from exc
            gm = res.module
            modified |= res.modified
            stats[p.name] = res.stats
            done.append(p.name)
            log.debug("%s: modified=%s %s", p.name, res.modified, res.stats)
        return PassResult(gm, modified, stats)
