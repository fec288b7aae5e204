"""The channel multiple a runtime computes fastest, found by measuring (``round_to="auto"``).

Runtimes compute convolutions in blocks of channels (onnxruntime's NCHWc layout: 8 floats with
AVX2, 16 with AVX-512; tensor cores on a GPU), so a layer whose width is not a multiple of the
block can be as slow as the next multiple, or slower. Which block a device has is not looked up
in a table of CPU names: :func:`channel_multiple` times one pointwise and one depthwise conv in
onnxruntime at every width of one cycle (33 to 64 channels), on the target device with the
target thread count, and picks the multiple ``m`` that makes a width rounded up to ``m`` run
fastest on average (the cost of the kept channels included: a larger multiple keeps more).
It also times grouped convs of several in-group widths halved two ways, every group narrowed
(``grouped="offsets"``) or half the groups removed (``"groups"``), and keeps the widths where
whole groups run faster though they remove half as many MACs (a group as wide as the
runtime's block, narrowed, leaves the block). The answer is cached per device, onnxruntime
version and thread count.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from surgeon.errors import SurgeonInputError

__all__ = ["CANDIDATES", "Probe", "channel_multiple", "grouped_widths", "probe"]

log = logging.getLogger(__name__)

#: the multiples tried; every one divides the sweep's top width
CANDIDATES = (1, 2, 4, 8, 16, 32)
WIDTHS = range(33, 65)  # one full cycle of the largest candidate
SIDE = 28  # feature map side: a MobileNet's middle stages
TOLERANCE = 0.03  # a larger multiple must be this much faster on average to be preferred
#: in-group widths of the grouped-conv probe, and its (side, channels) shapes
GROUP_WIDTHS = (2, 4, 8, 16, 32)  # each leaves at least 2 groups of the shapes' channels
GROUPED_SHAPES = ((28, 128), (14, 256))


@dataclass(frozen=True)
class Probe:
    """What :func:`probe` measured: ``ms[op][width]`` (min over runs), the mean latency of each
    candidate multiple relative to no rounding, and the pick."""

    device: str
    multiple: int
    relative: dict[int, float]  # multiple -> mean latency of rounded widths / unrounded
    ms: dict[str, dict[int, float]]
    # in-group widths whose convs halve faster by whole groups, and per width the latency
    # of halving by whole groups relative to halving every group's width
    grouped_widths: tuple[int, ...] = ()
    grouped_relative: dict[int, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _conv_model(channels: int, groups: int, k: int, side: int = SIDE) -> bytes:
    """One Conv node (k x k, ``groups``) on a 1 x C x side x side float input, serialised ONNX."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(channels)
    weight = rng.standard_normal((channels, channels // groups, k, k), np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], group=groups, pads=[k // 2] * 4)
    shape = [1, channels, side, side]
    graph = helper.make_graph(
        [node],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        [numpy_helper.from_array(weight, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


def _time(
    model: bytes, channels: int, provider: str, threads: int | None, runs: int, side: int = SIDE
) -> float:
    from surgeon.benchmark import _session, fastest_ms

    session = _session(model, provider, threads)
    feed = {"x": np.random.default_rng(0).standard_normal((1, channels, side, side), np.float32)}
    return fastest_ms(session, feed, runs, warmup=3)


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
    models = {
        (op, c): _conv_model(c, c if dw else 1, 3 if dw else 1)
        for op, dw in ops.items()
        for c in WIDTHS
    }
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
    halved = {w: _grouped_halving(w, provider, threads, runs) for w in GROUP_WIDTHS}
    widths = tuple(w for w, r in halved.items() if r < 1 - TOLERANCE)
    return Probe(device_name(provider), pick, relative, ms, widths, halved)


def _grouped_halving(width: int, provider: str, threads: int | None, runs: int) -> float:
    """Mean over :data:`GROUPED_SHAPES` of the latency of a 3x3 grouped conv of in-group
    ``width`` that lost half its groups relative to one whose every group lost half its
    width (the same channels kept; twice the MACs)."""
    parts = []
    for side, channels in GROUPED_SHAPES:
        half, groups = channels // 2, channels // width
        by_groups = _conv_model(half, groups // 2, 3, side)
        by_offsets = _conv_model(half, groups, 3, side)
        best = [float("inf"), float("inf")]
        for _ in range(2):  # interleaved, each keeps its best
            for i, model in enumerate((by_groups, by_offsets)):
                best[i] = min(best[i], _time(model, half, provider, threads, runs, side))
        parts.append(best[0] / best[1])
    return statistics.fmean(parts)


def cache_path(name: str) -> Path:
    """Where surgeon caches what it measured on this machine: ``$SURGEON_CACHE_DIR/name``,
    else under ``$XDG_CACHE_HOME`` or ``~/.cache``, in ``surgeon/``."""
    root = os.environ.get("SURGEON_CACHE_DIR")
    if root:
        return Path(root) / name
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "surgeon" / name


def _cache_file() -> Path:
    return cache_path("channel_multiple.json")


def channel_multiple(provider: str = "cpu", threads: int | None = 1) -> int:
    """The channel multiple ``provider`` computes fastest with ``threads`` intra-op threads
    (``None``: onnxruntime's default): measured once by :func:`probe`, then read from the
    cache (``$SURGEON_CACHE_DIR``, else ``~/.cache/surgeon``)."""
    return int(_measured(provider, threads)["multiple"])


def grouped_widths(provider: str = "cpu", threads: int | None = 1) -> tuple[int, ...]:
    """The in-group widths whose grouped convs ``provider`` runs faster halved by whole groups
    than by narrowing every group (``grouped="auto"``); measured and cached with
    :func:`channel_multiple`."""
    return tuple(int(w) for w in _measured(provider, threads)["grouped_widths"])


def _measured(provider: str, threads: int | None) -> dict[str, Any]:
    """The cache entry of ``provider`` with ``threads``, measured by :func:`probe` first
    where there is none (or one an older surgeon wrote, without every answer)."""
    key = f"{device_name(provider)}; threads {threads if threads is not None else 'default'}"
    path = _cache_file()
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    entry = cached.get(key) if isinstance(cached, dict) else None
    if (
        isinstance(entry, dict)
        and entry.get("multiple") in CANDIDATES
        and isinstance(entry.get("grouped_widths"), list)
        # timed at the widths this surgeon times (an older one timed others)
        and sorted(int(w) for w in entry.get("grouped_relative", {})) == list(GROUP_WIDTHS)
    ):
        return entry
    found = probe(provider, threads)
    log.info(
        "surgeon: round_to='auto' measured %s: multiple %d (mean latency of rounded widths "
        "relative to unrounded: %s); grouped convs halve faster by whole groups at in-group "
        "widths %s (whole groups / offsets: %s)",
        key,
        found.multiple,
        ", ".join(f"{m}: {r:.2f}" for m, r in found.relative.items()),
        list(found.grouped_widths),
        ", ".join(f"{w}: {r:.2f}" for w, r in found.grouped_relative.items()),
    )
    cached = cached if isinstance(cached, dict) else {}
    entry = {
        "multiple": found.multiple,
        "relative": found.relative,
        "grouped_widths": list(found.grouped_widths),
        "grouped_relative": found.grouped_relative,
    }
    cached[key] = entry
    try:
        from surgeon.files import write_bytes_atomic

        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, (json.dumps(cached, indent=2) + "\n").encode(), what="cache")
    except Exception as exc:  # a read-only home (SurgeonError, OSError): measure next time
        log.info("surgeon: cannot cache the channel multiple in %s: %s", path, exc)
    return entry
