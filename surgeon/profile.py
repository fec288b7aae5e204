"""Where the time goes, node by node: onnxruntime's own profiler on an ONNX file.

:func:`node_profile` runs a session with profiling on and reads its trace: every node's kernel
time per run (the median over the timed runs), its operator and, from the shapes the trace
records, the MACs of the Conv / MatMul / Gemm nodes as the runtime computes them (its shapes:
a conv in onnxruntime's NCHWc layout computes its channels padded to the block, so a layer
whose width is off the block shows more MACs than the model has). The names are onnxruntime's after its
graph rewrites (a Conv fused with its norm and activation runs as one node, named after its
last output), and they are what :func:`layer_rows` matches between an original and its slim
model: a model exported from the same module tree keeps its node names.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["NodeTime", "node_profile", "layer_rows", "layer_name"]

_SUFFIXES = ("_kernel_time",)
_MAC_OPS = {"Conv", "FusedConv", "NchwcConv", "MatMul", "Gemm", "FusedMatMul", "FusedGemm"}


@dataclass(frozen=True)
class NodeTime:
    """One node of the optimised graph: its operator, median kernel time per run (ms) and
    MACs (0 where the operator does no multiply-accumulates the shapes tell)."""

    name: str
    op: str
    ms: float
    macs: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def layer_name(node: str, op: str) -> str:
    """A node as a layer reads: the module path of a TorchScript-exported node and the
    operator that runs (``/model/layer1/layer1.0/relu/Relu_output_0_nchwc``, a Conv fused up
    to the ReLU -> ``layer1.0.relu (Conv)``)."""
    parts = [p for p in node.split("/") if p]
    if len(parts) < 2:
        return f"{node} ({op})"
    scope = parts[:-1]
    if scope[0] == "model":  # the exporter's adapter
        scope = scope[1:]
    # "/layer1/layer1.0/conv2": each level repeats its parent's path
    scope = [
        s
        for i, s in enumerate(scope)
        if not (i + 1 < len(scope) and scope[i + 1].startswith(s + "."))
    ]
    return f"{'.'.join(scope) or '(top)'} ({op})"


def _macs(op: str, args: Mapping[str, Any]) -> int:
    """MACs of one node from its traced input and output shapes."""
    if op not in _MAC_OPS:
        return 0
    try:
        ins = [next(iter(t.values())) for t in args["input_type_shape"]]
        out = next(iter(args["output_type_shape"][0].values()))
    except (KeyError, IndexError, StopIteration, AttributeError):
        return 0
    if "Conv" in op:
        return math.prod(out) * math.prod(ins[1][1:]) if len(ins) > 1 else 0
    if "Gemm" in op and len(ins) > 1:
        k = ins[0][-1]
        return math.prod(out) * k
    if len(ins) > 1:  # MatMul: the contracted dim is the first input's last
        return math.prod(out) * ins[0][-1]
    return 0


def node_profile(
    onnx_path: str | os.PathLike[str],
    example_inputs: Any = None,
    *,
    provider: str = "cpu",
    threads: int | None = None,
    runs: int = 20,
    warmup: int = 3,
    on_run: Callable[[int, int], Any] | None = None,
) -> dict[str, NodeTime]:
    """Node name -> :class:`NodeTime` of ``onnx_path`` run ``warmup + runs`` times on
    ``provider`` (the inputs as :func:`surgeon.bench` makes them); ``on_run(done, total)``
    after each run (a progress bar)."""
    from surgeon.benchmark import _inputs, _session

    with tempfile.TemporaryDirectory(prefix="surgeon-profile-") as tmp:
        session = _session(Path(onnx_path), provider, threads, profile=str(Path(tmp) / "p"))
        _, feed = _inputs(session, example_inputs)
        for i in range(warmup + runs):
            session.run(None, feed)
            if on_run is not None:
                on_run(i + 1, warmup + runs)
        events = json.loads(Path(session.end_profiling()).read_text())
    times: dict[str, list[float]] = {}
    found: dict[str, tuple[str, int]] = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith(_SUFFIXES):
            continue
        name = e["name"][: -len("_kernel_time")]
        times.setdefault(name, []).append(e["dur"] / 1e3)
        args = e.get("args", {})
        found.setdefault(name, (args.get("op_name", "?"), _macs(args.get("op_name", ""), args)))
    out = {}
    for name, ts in times.items():
        timed = ts[warmup:] if len(ts) > warmup else ts
        op, macs = found[name]
        out[name] = NodeTime(name, op, statistics.median(timed), macs)
    return out


def layer_rows(
    original: Mapping[str, NodeTime], slim: Mapping[str, NodeTime]
) -> list[dict[str, Any]]:
    """One row per node of the original, in its order, with the slim model's node of the same
    name: MACs and ms of both, the theoretical (MACs) and measured (ms) speedups, and
    measured / theoretical. A node the slim model lacks has None on its side; the slim model's
    nodes the original lacks come last."""
    rows = []
    for name, a in original.items():
        b = slim.get(name)
        rows.append(_row(name, a, b))
    rows += [_row(name, None, b) for name, b in slim.items() if name not in original]
    return rows


def _row(name: str, a: NodeTime | None, b: NodeTime | None) -> dict[str, Any]:
    def ratio(x: float | None, y: float | None) -> float | None:
        return x / y if x and y else None

    theoretical = ratio(a.macs if a else None, b.macs if b else None)
    measured = ratio(a.ms if a else None, b.ms if b else None)
    return {
        "node": name,
        "layer": layer_name(name, (a or b).op),  # type: ignore[union-attr]
        "op": (a or b).op,  # type: ignore[union-attr]
        "macs": [a.macs if a else None, b.macs if b else None],
        "ms": [a.ms if a else None, b.ms if b else None],
        "theoretical": theoretical,
        "measured": measured,
        "efficiency": ratio(measured, theoretical),
    }
