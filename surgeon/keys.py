"""The keys under which surgeon's values travel with a model, in ``module.meta[...]``.

Each is declared and documented here once. Everything else a stage makes is returned to its
caller as a value (:mod:`surgeon.pipeline`), never left on the graph.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "PLAN_KEY",
    "DIAGNOSIS_KEY",
    "HISTORY_KEY",
    "STATE_KEY",
    "SOURCE_KEY",
    "ONNX_FILE_KEY",
    "ONNX_PRODUCER_KEY",
    "ONNX_SETTINGS_KEY",
    "ONNX_REMOVED_KEY",
    "ONNX_OPAQUE_KEY",
]

PLAN_KEY = "surgeon.plan"
"""A slim model's plan, JSON-able: the classes removed per group with the channel graph's
fingerprint, the settings that shape the graph (attention, grouped, leaf modules, the inputs'
spec), the groups blocked after a failed resize, how the model was captured, the form it was
returned in and why, and the plan of the model it was slimmed from (``previous``).
:func:`surgeon.save` writes it, :func:`surgeon.load` replays it."""

DIAGNOSIS_KEY = "surgeon.diagnosis"
"""Why little was pruned (:func:`surgeon.diagnose.diagnose`), or ``None`` when the MAC drop is
what the ratio gives on free groups."""

HISTORY_KEY = "surgeon.history"
""":func:`surgeon.prune_iteratively`'s steps: per step, the ratio, parameters, MACs and loss."""

STATE_KEY = "surgeon.state"
#: where a graph imported from an ONNX file keeps its source (:class:`surgeon.onnxin.job.OnnxSource`)
SOURCE_KEY = "surgeon.onnx_source"
#: what a slim ONNX file's ``metadata_props`` record (:func:`surgeon.slim_onnx`): the file it
#: came from and its producer, the settings, the weights whose shape changed, the ops kept as
#: they are
ONNX_FILE_KEY = "surgeon.source"
ONNX_PRODUCER_KEY = "surgeon.source_producer"
ONNX_SETTINGS_KEY = "surgeon.settings"
ONNX_REMOVED_KEY = "surgeon.removed"
ONNX_OPAQUE_KEY = "surgeon.kept_opaque"
"""The decision the passes share while they run (a :class:`surgeon.passes.SurgeryState`): each
pass reads it and stores a new one. The pipeline takes it off once the passes end."""


def plan_of(model: Any) -> dict[str, Any] | None:
    """The plan ``model`` carries (a slim model), or None."""
    meta = getattr(model, "meta", None)
    return meta.get(PLAN_KEY) if isinstance(meta, dict) else None
