"""The pass contract: ``call(gm) -> PassResult``, with ``requires`` / ``ensures`` checks, run
in order by a PassManager. A pass's constructor takes options only; the decision it reads and
writes travels with the graph module (:mod:`surgeon.passes.state`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch.fx as fx

from surgeon.errors import SurgeonError, SurgeonPassError
from surgeon.passes.state import STATE_KEY, SurgeryState, state_of

__all__ = ["PassResult", "Pass", "SurgeryPass", "PassManager"]

log = logging.getLogger(__name__)


@dataclass
class PassResult:
    module: fx.GraphModule
    modified: bool
    stats: dict[str, Any] = field(default_factory=dict)


class Pass:
    """A rewrite step. Subclasses implement ``call``; a second run must change nothing.

    ``requires(gm)`` runs before ``call`` and ``ensures(gm)`` after it; either raises
    :class:`~surgeon.errors.SurgeonPassError` when its condition does not hold.
    """

    @property
    def name(self) -> str:
        return type(self).__name__

    def requires(self, gm: fx.GraphModule) -> None:
        """Pre-condition (nothing by default)."""

    def ensures(self, gm: fx.GraphModule) -> None:
        """Post-condition (nothing by default)."""

    def call(self, gm: fx.GraphModule) -> PassResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, gm: fx.GraphModule) -> PassResult:
        self.requires(gm)
        res = self.call(gm)
        self.ensures(res.module)
        return res


class SurgeryPass(Pass):
    """A pass over the shared decision: requires a :class:`SurgeryState` on the module."""

    def requires(self, gm: fx.GraphModule) -> None:
        state_of(gm)

    @staticmethod
    def state(gm: fx.GraphModule) -> SurgeryState:
        return state_of(gm)

    @staticmethod
    def store(gm: fx.GraphModule, state: SurgeryState) -> None:
        gm.meta[STATE_KEY] = state


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
                    f"{p.name} failed: {exc} (passes that already ran: {ran})", node=exc.node
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
