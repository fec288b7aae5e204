"""surgeon: a graph-level model-surgery compiler for PyTorch.

``surgeon.slim(model, ratio, example_inputs)`` traces a model with torch.fx, finds which
channels are coupled, removes the least important ones physically (prune -> propagate ->
resize) and returns a smaller ``torch.nn.Module`` that computes with the same shapes.

Public names are loaded lazily so that ``import surgeon`` (and the CLI start-up) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from surgeon.errors import (
    SurgeonError,
    SurgeonInputError,
    SurgeonPassError,
    SurgeonTargetError,
    SurgeonTraceError,
)

__version__ = "0.1.0"

_LAZY = {
    "slim": "surgeon.api",
    "analyze": "surgeon.api",
    "SlimOptions": "surgeon.options",
    "Target": "surgeon.options",
    "count_macs": "surgeon.cost",
    "count_params": "surgeon.cost",
    "metrics": "surgeon.cost",
    "level_prune": "surgeon.cost",
    "prune_iteratively": "surgeon.schedule",
    "agp_ratio": "surgeon.schedule",
    "distill_loss": "surgeon.schedule",
    "export": "surgeon.exporter",
    "bench": "surgeon.benchmark",
    "bench_interleaved": "surgeon.benchmark",
    "report_html": "surgeon.page",
    "save": "surgeon.persist",
    "load": "surgeon.persist",
    "slim_onnx": "surgeon.onnxin.job",
    "load_onnx": "surgeon.onnxin.job",
    "OnnxOp": "surgeon.onnxin.opaque",
}

__all__ = [
    "SurgeonError",
    "SurgeonInputError",
    "SurgeonPassError",
    "SurgeonTargetError",
    "SurgeonTraceError",
    *_LAZY,
]

if TYPE_CHECKING:  # pragma: no cover
    # ruff: noqa: F401 - names re-exported lazily through __getattr__
    from surgeon.api import analyze, slim
    from surgeon.benchmark import bench, bench_interleaved
    from surgeon.cost import count_macs, count_params, level_prune, metrics
    from surgeon.exporter import export
    from surgeon.onnxin.job import load_onnx, slim_onnx
    from surgeon.onnxin.opaque import OnnxOp
    from surgeon.options import SlimOptions, Target
    from surgeon.page import report_html
    from surgeon.persist import load, save
    from surgeon.schedule import agp_ratio, distill_loss, prune_iteratively


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'surgeon' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
