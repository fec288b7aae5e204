"""Per-layer latency tables, measured in onnxruntime: what a layer's channels cost on a device.

A speedup target (:class:`surgeon.options.Target`) allocates what goes by importance per unit
of *time*, not of MACs: a depthwise conv or a narrow layer costs more per MAC than a wide
pointwise one (a conv left with 8 input channels runs far below its MAC count), and by how
much depends on the runtime and the chip. :func:`layer_table` times every distinct Conv /
Linear shape of a captured model alone, as one-node ONNX models, at each pair of
:data:`SCALES` of its input and output channel widths (the widths pruning changes; a
depthwise conv has one), on the target provider with the target thread count, and
interpolates between them (:meth:`LayerTime.at`). The timings are cached per device, onnxruntime version and thread
count beside the channel-multiple probe's (``$SURGEON_CACHE_DIR``, else ``~/.cache/surgeon``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["LayerTime", "Layer", "layer_table", "layers_of", "SCALES"]

log = logging.getLogger(__name__)

#: the fractions of a layer's channel widths it is timed at
SCALES = (1.0, 0.75, 0.5, 0.25, 0.125)
RUNS = 7  # timed runs per shape (the minimum is kept), after two warm-up runs

_CONVS = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3}


@dataclass(frozen=True)
class Layer:
    """One Conv (``kind="conv"``) or Linear (``"linear"``) call: its weight's qualified name,
    its input shape and what else fixes its cost."""

    node: str
    weight: str
    kind: str
    input: tuple[int, ...]
    weight_shape: tuple[int, ...]
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1

    def key(self) -> str:
        return (
            f"{self.kind} in{list(self.input)} w{list(self.weight_shape)} s{list(self.stride)} "
            f"p{list(self.padding)} d{list(self.dilation)} g{self.groups}"
        )

    @property
    def depthwise(self) -> bool:
        """One input channel per group (a channel multiplier allowed): its width is one."""
        return self.kind == "conv" and self.groups > 1 and self.groups == self.input[1]

    def scaled(self, in_scale: float, out_scale: float) -> Layer:
        """The layer with its input and output channel widths at these scales (at least one
        channel; a depthwise conv stays depthwise, its one width at ``out_scale``; a grouped
        one keeps its groups and narrows each)."""

        def part(n: int, scale: float) -> int:
            return max(1, round(n * scale))

        w = self.weight_shape
        if self.kind == "linear":
            return _replace(
                self,
                input=(*self.input[:-1], part(w[1], in_scale)),
                weight_shape=(part(w[0], out_scale), part(w[1], in_scale)),
            )
        g, c_in, c_out = self.groups, self.input[1], w[0]
        if self.depthwise:
            new_g = part(g, out_scale)
            return _replace(
                self,
                input=(self.input[0], new_g, *self.input[2:]),
                weight_shape=(new_g * (c_out // g), *w[1:]),
                groups=new_g,
            )
        per_in, per_out = part(c_in // g, in_scale), part(c_out // g, out_scale)
        return _replace(
            self,
            input=(self.input[0], per_in * g, *self.input[2:]),
            weight_shape=(per_out * g, per_in, *w[2:]),
        )


def _replace(layer: Layer, **changes: Any) -> Layer:
    return dataclasses.replace(layer, **changes)


@dataclass(frozen=True)
class LayerTime:
    """A layer's measured latency (ms) against the fractions of its input and output
    channels kept: ``ms[i][j]`` at ``ins[i]`` x ``outs[j]``, both ascending; :meth:`at`
    interpolates bilinearly, and below the narrowest width timed holds its time (a layer
    does not get cheaper in proportion to its width down to nothing: it has fixed costs). A
    depthwise conv has one width: its ``ins`` is ``(1.0,)``."""

    layer: Layer
    ins: tuple[float, ...]
    outs: tuple[float, ...]
    ms: tuple[tuple[float, ...], ...]

    def at(self, kept_in: float, kept_out: float) -> float:
        rows = [float(np.interp(kept_out, self.outs, row)) for row in self.ms]
        return float(np.interp(kept_in, self.ins, rows)) if len(rows) > 1 else rows[0]

    @property
    def full(self) -> float:
        return self.ms[-1][-1]


def _shape(node: Any) -> tuple[int, ...] | None:
    shape = getattr(getattr(node, "meta", {}).get("tensor_meta"), "shape", None)
    return tuple(int(s) for s in shape) if shape is not None else None


def _tuple(value: Any, n: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * n
    return tuple(int(v) for v in value)


def layers_of(gm: fx.GraphModule) -> list[Layer]:
    """The Conv / Linear calls of ``gm`` (modules and functional calls on a ``get_attr``
    weight) whose input shape the shape metadata knows. Transposed convs and string paddings
    are left out (their cost is left to the whole model's measurement)."""
    out: list[Layer] = []
    for node in gm.graph.nodes:
        src = node.args[0] if node.args else None
        shape = _shape(src)
        if shape is None:
            continue
        if node.op == "call_module":
            m = gm.get_submodule(str(node.target))
            weight = f"{node.target}.weight"
            if isinstance(m, nn.Linear):
                out.append(Layer(node.name, weight, "linear", shape, tuple(m.weight.shape)))
            elif isinstance(m, nn.modules.conv._ConvNd) and not m.transposed:
                if isinstance(m.padding, str) or m.padding_mode != "zeros":
                    continue
                n = len(m.kernel_size)
                out.append(
                    Layer(
                        node.name,
                        weight,
                        "conv",
                        shape,
                        tuple(m.weight.shape),
                        _tuple(m.stride, n),
                        _tuple(m.padding, n),
                        _tuple(m.dilation, n),
                        m.groups,
                    )
                )
        elif node.op == "call_function" and (node.target in _CONVS or node.target is F.linear):
            args = list(node.args) + [None] * 7
            w = args[1] if args[1] is not None else node.kwargs.get("weight")
            if getattr(w, "op", None) != "get_attr" or _shape(w) is None:
                continue
            if node.target is F.linear:
                out.append(Layer(node.name, str(w.target), "linear", shape, _shape(w)))
                continue
            n = _CONVS[node.target]
            kw = node.kwargs
            stride = args[3] if args[3] is not None else kw.get("stride", 1)
            padding = args[4] if args[4] is not None else kw.get("padding", 0)
            dilation = args[5] if args[5] is not None else kw.get("dilation", 1)
            groups = args[6] if args[6] is not None else kw.get("groups", 1)
            if isinstance(padding, str) or not all(
                isinstance(v, (int, tuple, list)) for v in (stride, padding, dilation)
            ):
                continue
            out.append(
                Layer(
                    node.name,
                    str(w.target),
                    "conv",
                    shape,
                    _shape(w),
                    _tuple(stride, n),
                    _tuple(padding, n),
                    _tuple(dilation, n),
                    int(groups),
                )
            )
    return out


def _onnx(layer: Layer) -> bytes:
    """``layer`` as a one-node ONNX model with random weights."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = layer.weight_shape
    if layer.kind == "linear":
        weight = rng.standard_normal((w[1], w[0]), np.float32)
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
        out_shape = [*layer.input[:-1], w[0]]
    else:
        weight = rng.standard_normal(w, np.float32)
        node = helper.make_node(
            "Conv",
            ["x", "w"],
            ["y"],
            group=layer.groups,
            strides=list(layer.stride),
            pads=list(layer.padding) * 2,
            dilations=list(layer.dilation),
        )
        out_shape = None  # onnxruntime infers it
    graph = helper.make_graph(
        [node],
        "layer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(layer.input))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(weight, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


def _time(layer: Layer, provider: str, threads: int | None) -> float:
    """The fastest of :data:`RUNS` runs of ``layer`` alone, in milliseconds."""
    from surgeon.benchmark import _session, fastest_ms

    session = _session(_onnx(layer), provider, threads)
    feed = {"x": np.random.default_rng(1).standard_normal(layer.input, np.float32)}
    return fastest_ms(session, feed, RUNS)


def _cache_file() -> Path:
    from surgeon.hardware import cache_path

    return cache_path("layer_latency.json")


def layer_table(
    gm: fx.GraphModule, provider: str = "cpu", threads: int | None = None
) -> dict[str, LayerTime]:
    """Weight qualified name -> :class:`LayerTime` of every layer :func:`layers_of` finds,
    each distinct shape timed once per scale (cached). A layer whose weight several calls
    share (a weight read twice) is left out: its cost is not one layer's."""
    from surgeon.hardware import device_name

    layers = layers_of(gm)
    weights = [la.weight for la in layers]
    layers = [la for la in layers if weights.count(la.weight) == 1]
    key = f"{device_name(provider)}; threads {threads if threads is not None else 'default'}"
    path = _cache_file()
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    cached = cached if isinstance(cached, dict) else {}
    entry = cached.setdefault(key, {})
    new = 0
    for layer in layers:
        for a in (1.0,) if layer.depthwise else SCALES:
            for b in SCALES:
                shape = layer.scaled(a, b)
                if shape.key() not in entry:
                    entry[shape.key()] = _time(shape, provider, threads)
                    new += 1
    if new:
        log.info("surgeon: timed %d layer shape(s) on %s", new, key)
        try:
            from surgeon.files import write_bytes_atomic

            path.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(path, (json.dumps(cached) + "\n").encode(), what="cache")
        except Exception as exc:  # a read-only home: time again next time
            log.info("surgeon: cannot cache the layer timings in %s: %s", path, exc)
    table = {}
    for layer in layers:
        ins = (1.0,) if layer.depthwise else SCALES
        grid = {(a, b): float(entry[layer.scaled(a, b).key()]) for a in ins for b in SCALES}
        in_axis = tuple(sorted(ins))
        out_axis = tuple(sorted(SCALES))
        ms = tuple(tuple(grid[a, b] for b in out_axis) for a in in_axis)
        table[layer.weight] = LayerTime(layer, in_axis, out_axis, ms)
    return table
