"""The channel multiple a runtime computes fastest, found by measuring (``round_to="auto"``).

Runtimes compute convolutions in blocks of channels (onnxruntime's NCHWc layout: 8 floats with
AVX2, 16 with AVX-512; tensor cores on a GPU), so a layer whose width is not a multiple of the
block can be as slow as the next multiple, or slower. Which block a device has is not looked up
in a table of CPU names: :func:`channel_multiple` times one pointwise and one depthwise conv in
onnxruntime at every width of one cycle (33 to 64 channels), on the target device with the
target thread count, and picks the multiple ``m`` that makes a width rounded up to ``m`` run
fastest on average (the cost of the kept channels included: a larger multiple keeps more). The
answer is cached per device, onnxruntime version and thread count.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from surgeon.errors import SurgeonInputError

__all__ = ["CANDIDATES", "Probe", "channel_multiple", "probe"]

log = logging.getLogger(__name__)

#: the multiples tried; every one divides the sweep's top width
CANDIDATES = (1, 2, 4, 8, 16, 32)
WIDTHS = range(33, 65)  # one full cycle of the largest candidate
SIDE = 28  # feature map side: a MobileNet's middle stages
TOLERANCE = 0.03  # a larger multiple must be this much faster on average to be preferred


@dataclass(frozen=True)
class Probe:
    """What :func:`probe` measured: ``ms[op][width]`` (min over runs), the mean latency of each
    candidate multiple relative to no rounding, and the pick."""

    device: str
    multiple: int
    relative: dict[int, float]  # multiple -> mean latency of rounded widths / unrounded
    ms: dict[str, dict[int, float]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _conv_model(channels: int, depthwise: bool) -> bytes:
    """One Conv node on a 1 x C x SIDE x SIDE float input, serialised ONNX."""
    from onnx import TensorProto, helper, numpy_helper

    k = 3 if depthwise else 1
    rng = np.random.default_rng(channels)
    weight = rng.standard_normal((channels, 1 if depthwise else channels, k, k), np.float32)
    node = helper.make_node(
        "Conv", ["x", "w"], ["y"], group=channels if depthwise else 1, pads=[k // 2] * 4
    )
    shape = [1, channels, SIDE, SIDE]
    graph = helper.make_graph(
        [node],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        [numpy_helper.from_array(weight, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


def _time(model: bytes, channels: int, provider: str, threads: int | None, runs: int) -> float:
    from surgeon.benchmark import _session

    session = _session(model, provider, threads)
    feed = {"x": np.random.default_rng(0).standard_normal((1, channels, SIDE, SIDE), np.float32)}
    for _ in range(3):
        session.run(None, feed)
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def _ceil(width: int, multiple: int) -> int:
    return -(-width // multiple) * multiple


_SIMD = (
    ("avx512f", "AVX-512"),
    ("avx2", "AVX2"),
    ("avx", "AVX"),
    ("sve", "SVE"),
    ("asimd", "NEON"),
)


def device_name(provider: str = "cpu") -> str:
    """What the answer is cached under: the processor (or GPU), onnxruntime's version."""
    import onnxruntime as ort

    if provider == "cpu":
        chip = platform.processor() or platform.machine()
        info: dict[str, str] = {}
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())  # the first processor's
        except OSError:
            pass
        chip = info.get("model name", chip)
        flags = set((info.get("flags") or info.get("Features") or "").split())
        # a model name can stand for machines with and without the wider vector units
        # ("AMD EPYC" in a VM): the block the runtime computes in follows the widest one
        simd = next((name for flag, name in _SIMD if flag in flags), None)
        chip = f"{chip} ({simd})" if simd else chip
    else:
        chip = f"{provider} device 0"
    return f"{provider}: {chip}; onnxruntime {ort.__version__}"


def probe(provider: str = "cpu", threads: int | None = 1, runs: int = 15) -> Probe:
    """Time a pointwise and a depthwise conv at every width of :data:`WIDTHS` (the sweep runs
    twice, interleaved, and keeps each width's best), then score each candidate multiple by the
    mean latency of the widths rounded up to it, relative to the widths as they are (each op
    weighs alike). The pick is the fastest multiple; a larger one only where it is at least
    :data:`TOLERANCE` faster than every smaller one, since it keeps more channels than asked."""
    import onnxruntime as ort

    from surgeon.benchmark import PROVIDERS

    if provider not in PROVIDERS:
        raise SurgeonInputError(
            f"unknown provider {provider!r}; choose from {', '.join(PROVIDERS)}"
        )
    if PROVIDERS[provider] not in ort.get_available_providers():
        raise SurgeonInputError(
            f"round_to='auto' for {provider}: onnxruntime here has no {PROVIDERS[provider]}, so "
            "the channel multiple cannot be measured there; pass round_to=<int> or measure on cpu"
        )
    ops = {"pointwise": False, "depthwise": True}
    models = {(op, c): _conv_model(c, dw) for op, dw in ops.items() for c in WIDTHS}
    ms: dict[str, dict[int, float]] = {op: {} for op in ops}
    for _ in range(2):
        for c in WIDTHS:
            for op in ops:
                t = _time(models[op, c], c, provider, threads, runs)
                ms[op][c] = min(ms[op].get(c, t), t)
    relative: dict[int, float] = {}
    for m in CANDIDATES:
        parts = [
            statistics.fmean(ms[op][_ceil(c, m)] for c in WIDTHS)
            / statistics.fmean(ms[op][c] for c in WIDTHS)
            for op in ops
        ]
        relative[m] = statistics.fmean(parts)
    pick = 1
    for m in CANDIDATES[1:]:
        if relative[m] < min(relative[k] for k in CANDIDATES if k < m) * (1 - TOLERANCE):
            pick = m
    return Probe(device_name(provider), pick, relative, ms)


def _cache_file() -> Path:
    root = os.environ.get("SURGEON_CACHE_DIR")
    if root:
        return Path(root) / "channel_multiple.json"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "surgeon" / "channel_multiple.json"


def channel_multiple(provider: str = "cpu", threads: int | None = 1) -> int:
    """The channel multiple ``provider`` computes fastest with ``threads`` intra-op threads
    (``None``: onnxruntime's default): measured once by :func:`probe` (about a second on a
    CPU), then read from the cache (``$SURGEON_CACHE_DIR``, else ``~/.cache/surgeon``)."""
    key = f"{device_name(provider)}; threads {threads if threads is not None else 'default'}"
    path = _cache_file()
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    entry = cached.get(key) if isinstance(cached, dict) else None
    if isinstance(entry, dict) and entry.get("multiple") in CANDIDATES:
        return int(entry["multiple"])
    found = probe(provider, threads)
    log.info(
        "surgeon: round_to='auto' measured %s: multiple %d (mean latency of rounded widths "
        "relative to unrounded: %s)",
        key,
        found.multiple,
        ", ".join(f"{m}: {r:.2f}" for m, r in found.relative.items()),
    )
    cached = cached if isinstance(cached, dict) else {}
    cached[key] = {"multiple": found.multiple, "relative": found.relative}
    try:
        from surgeon.files import write_bytes_atomic

        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, (json.dumps(cached, indent=2) + "\n").encode(), what="cache")
    except Exception as exc:  # a read-only home (SurgeonError, OSError): measure next time
        log.info("surgeon: cannot cache the channel multiple in %s: %s", path, exc)
    return found.multiple
