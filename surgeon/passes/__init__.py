"""The three passes of surgery: prune (decide) -> [compensate] -> propagate (close, exactly) -> resize (slice)."""

from __future__ import annotations

from surgeon.passes.base import Pass, PassManager, PassResult, PrunePlan
from surgeon.passes.compensate import CompensatePass
from surgeon.passes.propagate import PropagatePass
from surgeon.passes.prune import ChannelPrunePass
from surgeon.passes.resize import ResizePass

__all__ = [
    "Pass",
    "PassManager",
    "PassResult",
    "PrunePlan",
    "ChannelPrunePass",
    "CompensatePass",
    "PropagatePass",
    "ResizePass",
]
