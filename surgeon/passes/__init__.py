"""The passes of surgery: prune (decide) -> [compensate] -> propagate (close, exactly) ->
resize (slice). Each pass takes options only; the decision travels with the graph module as a
:class:`SurgeryState` in ``gm.meta["surgeon.state"]`` (start it with :func:`begin`)."""

from __future__ import annotations

from surgeon.passes.base import Pass, PassManager, PassResult, SurgeryPass
from surgeon.passes.compensate import CompensatePass
from surgeon.passes.propagate import PropagatePass
from surgeon.passes.prune import ChannelPrunePass
from surgeon.passes.resize import ResizePass
from surgeon.passes.state import STATE_KEY, SurgeryState, begin, state_of

__all__ = [
    "Pass",
    "SurgeryPass",
    "PassManager",
    "PassResult",
    "SurgeryState",
    "STATE_KEY",
    "begin",
    "state_of",
    "ChannelPrunePass",
    "CompensatePass",
    "PropagatePass",
    "ResizePass",
]
