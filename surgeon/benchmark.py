"""onnxruntime latency: median and p90 of one ONNX model on the CPU and, where present, CUDA.

Each provider gets its own session. Inputs and outputs are bound with IO binding, on the
provider's device, before the clock starts, so the timed loop is ``run_with_iobinding`` alone
(plus the output synchronisation on CUDA): host <-> device copies are not timed. A provider that
onnxruntime does not offer here (or that fails to initialise) is reported as unavailable, with
the reason, rather than raising.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import statistics
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from surgeon.errors import SurgeonBenchError, SurgeonInputError

__all__ = [
    "SurgeonBenchError",
    "ProviderTiming",
    "BenchResult",
    "bench",
    "bench_interleaved",
    "PROVIDERS",
]

logger = logging.getLogger(__name__)

#: short provider names accepted by :func:`bench`, and the onnxruntime provider each one means
PROVIDERS: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
}

_NUMPY_TYPES: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


@dataclass(frozen=True)
class ProviderTiming:
    """Latency of one model on one onnxruntime execution provider (times in milliseconds)."""

    provider: str
    available: bool
    reason: str | None = None
    median_ms: float | None = None
    p90_ms: float | None = None
    mean_ms: float | None = None
    min_ms: float | None = None
    runs: int = 0
    warmup: int = 0
    threads: int | None = None
    samples_ms: tuple[float, ...] = ()  # every timed run, in order

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of every field but the samples."""
        out = asdict(self)
        del out["samples_ms"]
        return out


@dataclass(frozen=True)
class BenchResult:
    """What :func:`bench` measured: the model, its inputs, and one timing per provider."""

    path: str
    inputs: dict[str, tuple[tuple[int, ...], str]]
    timings: dict[str, ProviderTiming] = field(default_factory=dict)

    def __getitem__(self, provider: str) -> ProviderTiming:
        return self.timings[provider]

    @property
    def cpu(self) -> ProviderTiming | None:
        """The CPU timing, if it was asked for."""
        return self.timings.get("cpu")

    @property
    def cuda(self) -> ProviderTiming | None:
        """The CUDA timing (possibly unavailable), if it was asked for."""
        return self.timings.get("cuda")

    def median_ms(self, provider: str = "cpu") -> float | None:
        """Median latency on ``provider``, or None when it was not measured."""
        timing = self.timings.get(provider)
        return timing.median_ms if timing is not None else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (shapes as lists)."""
        return {
            "path": self.path,
            "inputs": {
                name: {"shape": list(shape), "type": dtype}
                for name, (shape, dtype) in self.inputs.items()
            },
            "timings": {name: t.to_dict() for name, t in self.timings.items()},
        }


def _normalise_providers(providers: Iterable[str] | str) -> list[str]:
    if isinstance(providers, str):
        providers = (providers,)
    wanted: list[str] = []
    for item in providers:
        key = str(item).lower()
        for short, full in PROVIDERS.items():
            if key == full.lower():
                key = short
        if key not in PROVIDERS:
            raise SurgeonInputError(
                f"unknown provider {item!r}; choose from {', '.join(PROVIDERS)}"
            )
        if key not in wanted:
            wanted.append(key)
    if not wanted:
        raise SurgeonInputError("providers is empty; pass ('cpu',), ('cuda',) or both")
    return wanted


def _check_counts(warmup: int, runs: int, threads: int | None) -> None:
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise SurgeonInputError(f"runs must be an int >= 1, got {runs!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise SurgeonInputError(f"warmup must be an int >= 0, got {warmup!r}")
    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
    ):
        raise SurgeonInputError(
            f"threads must be an int >= 1, or None for onnxruntime's default, got {threads!r}"
        )


def _session(
    path: Path | bytes, provider: str, threads: int | None, profile: str | None = None
) -> Any:
    """An onnxruntime session on ``provider`` for an ONNX file (or serialised model bytes);
    with ``profile``, its node profiler on, writing under that file prefix."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if profile is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile
    if threads is not None:
        options.intra_op_num_threads = threads
    chain: list[Any] = [PROVIDERS[provider]]
    if provider == "cuda":
        chain = [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, options, providers=chain)


def fastest_ms(session: Any, feed: Mapping[str, Any], runs: int, warmup: int = 2) -> float:
    """The fastest of ``runs`` runs of ``session`` on ``feed`` after ``warmup``, in ms (the
    probes' measure: a single op's best case, not a latency distribution)."""
    for _ in range(warmup):
        session.run(None, feed)
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def _input_specs(session: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    """ONNX input shapes with every symbolic / unknown dim set to 1 (batch 1)."""
    specs: dict[str, tuple[tuple[int, ...], str]] = {}
    for item in session.get_inputs():
        shape = tuple(d if isinstance(d, int) and d > 0 else 1 for d in item.shape)
        specs[item.name] = (shape, item.type)
    return specs


def _make_inputs(specs: Mapping[str, tuple[tuple[int, ...], str]]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    made: dict[str, np.ndarray] = {}
    for name, (shape, onnx_type) in specs.items():
        dtype = _NUMPY_TYPES.get(onnx_type)
        if dtype is None:
            raise SurgeonBenchError(
                f"cannot make an input for {name!r} of type {onnx_type}; pass example_inputs"
            )
        if np.issubdtype(dtype, np.floating):
            made[name] = rng.standard_normal(shape).astype(dtype)
        elif dtype is np.bool_:
            made[name] = np.zeros(shape, dtype=dtype)
        else:  # ids: small non-negative values are valid for any embedding table
            made[name] = rng.integers(0, 2, size=shape).astype(dtype)
    return made


def _as_numpy(value: Any, name: str) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch here
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    raise SurgeonInputError(
        f"example input {name!r} is a {type(value).__name__}; pass torch tensors or numpy arrays"
    )


def _given_inputs(example_inputs: Any, names: Sequence[str]) -> dict[str, np.ndarray]:
    if isinstance(example_inputs, Mapping):
        unknown = [k for k in example_inputs if k not in names]
        missing = [n for n in names if n not in example_inputs]
        if unknown or missing:
            raise SurgeonInputError(
                f"example_inputs keys {sorted(map(str, example_inputs))} do not match the ONNX "
                f"inputs {list(names)}; use those names"
            )
        return {n: _as_numpy(example_inputs[n], n) for n in names}
    values = list(example_inputs) if isinstance(example_inputs, (tuple, list)) else [example_inputs]
    if len(values) != len(names):
        raise SurgeonInputError(
            f"{len(values)} example inputs given but the ONNX model takes {len(names)} "
            f"({', '.join(names)}); pass one per input, in order, or a dict by name"
        )
    return {n: _as_numpy(v, n) for n, v in zip(names, values, strict=True)}


def _runner(session: Any, feed: Mapping[str, np.ndarray], *, device: str) -> Any:
    """A function that runs ``session`` once and returns the milliseconds it took, with
    inputs and outputs bound on ``device`` beforehand."""
    import onnxruntime as ort

    binding = session.io_binding()
    for name, array in feed.items():
        value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), device, 0)
        binding.bind_ortvalue_input(name, value)
    for output in session.get_outputs():
        binding.bind_output(output.name, device)
    binding.synchronize_inputs()

    def once() -> float:
        start = time.perf_counter()
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return (time.perf_counter() - start) * 1e3

    return once


def _unavailable(provider: str, reason: str, warmup: int, threads: int | None) -> ProviderTiming:
    logger.info("%s: not measured (%s)", provider, reason)
    return ProviderTiming(
        provider=provider, available=False, reason=reason, warmup=warmup, threads=threads
    )


class _Unavailable(Exception):
    """A provider that cannot be measured here (not the CPU's); the message is the reason."""


def _existing_onnx(onnx_path: str | os.PathLike[str]) -> Path:
    path = Path(onnx_path).expanduser()
    if not path.is_file():
        raise SurgeonBenchError(
            f"ONNX file {str(path)!r} does not exist; export one first (surgeon export)"
        )
    return path


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def _open_session(path: Path, provider: str, available: Sequence[str], threads: int | None) -> Any:
    """A session on ``provider``; raises _Unavailable when it cannot run there (and
    SurgeonBenchError when the CPU cannot load the file)."""
    import onnxruntime as ort

    full = PROVIDERS[provider]
    if full not in available:
        raise _Unavailable(
            f"onnxruntime {ort.__version__} here offers {', '.join(available)}, not {full}"
            + (" (install onnxruntime-gpu and a CUDA driver)" if provider == "cuda" else "")
        )
    try:
        session = _session(path, provider, threads)
    except Exception as exc:  # onnxruntime raises its own Fail / InvalidGraph / ...
        if provider == "cpu":
            raise SurgeonBenchError(
                f"onnxruntime cannot load {str(path)!r}: {_one_line(exc)}; is it an ONNX file?"
            ) from exc
        raise _Unavailable(f"{full} failed to start: {_one_line(exc)}") from exc
    if session.get_providers()[0] != full:
        raise _Unavailable(
            f"{full} failed to initialise; onnxruntime fell back to {session.get_providers()[0]}"
        )
    return session


def _inputs(
    session: Any, example_inputs: Any
) -> tuple[dict[str, tuple[tuple[int, ...], str]], dict[str, np.ndarray]]:
    """The input specs (shape, ONNX type) by name, and the arrays fed to every provider."""
    specs = _input_specs(session)
    if example_inputs is None:
        return specs, _make_inputs(specs)
    feed = _given_inputs(example_inputs, list(specs))
    return {n: (tuple(a.shape), specs[n][1]) for n, a in feed.items()}, feed


def _timing(
    times: list[float], path: Path, provider: str, *, warmup: int, threads: int | None
) -> ProviderTiming:
    """Median, p90, mean and min of ``times`` (ms)."""
    median = statistics.median(times)
    p90 = float(np.percentile(times, 90))
    if not (math.isfinite(median) and math.isfinite(p90)):  # pragma: no cover - clock bug
        raise SurgeonBenchError(f"non-finite timing on {provider}: {times[:5]}")
    logger.info(
        "%s on %s: median %.3f ms, p90 %.3f ms over %d runs",
        path.name,
        provider,
        median,
        p90,
        len(times),
    )
    return ProviderTiming(
        provider=provider,
        available=True,
        median_ms=median,
        p90_ms=p90,
        mean_ms=statistics.fmean(times),
        min_ms=min(times),
        runs=len(times),
        warmup=warmup,
        threads=threads,
        samples_ms=tuple(times),
    )


@contextlib.contextmanager
def _run_failure(path: Path, provider: str) -> Iterator[None]:
    """A failed run: SurgeonBenchError on the CPU, _Unavailable (reported, not raised) on
    another provider."""
    try:
        yield
    except Exception as exc:
        if provider == "cpu":
            raise SurgeonBenchError(
                f"onnxruntime failed to run {str(path)!r}: {_one_line(exc)}; check the inputs' "
                "shapes and types"
            ) from exc
        raise _Unavailable(f"run failed: {_one_line(exc)}") from exc


def _timed_runs(
    sessions: Sequence[tuple[Any, Path]],
    feed: Mapping[str, np.ndarray],
    provider: str,
    *,
    warmup: int,
    runs: int,
) -> list[list[float]]:
    """Milliseconds per run for each session, interleaved: every round runs each session once
    (in an order that alternates, so no model always goes first), so the machine's drift and
    noise fall on every model alike. Raises _Unavailable when a non-CPU run fails."""
    timers = []
    for session, path in sessions:
        with _run_failure(path, provider):
            timers.append(_runner(session, feed, device=provider))
    order = list(range(len(sessions)))
    times: list[list[float]] = [[] for _ in sessions]
    for r in range(warmup + runs):
        for i in order if r % 2 == 0 else order[::-1]:
            with _run_failure(sessions[i][1], provider):
                ms = timers[i]()
            if r >= warmup:
                times[i].append(ms)
    return times


def bench(
    onnx_path: str | os.PathLike[str],
    example_inputs: Any = None,
    *,
    providers: Iterable[str] | str = ("cpu", "cuda"),
    warmup: int = 10,
    runs: int = 50,
    threads: int | None = None,
) -> BenchResult:
    """Time ``onnx_path`` with onnxruntime on each provider in ``providers``.

    Args:
        onnx_path: the ONNX file.
        example_inputs: a tensor / array, a sequence of them (in the model's input order) or a
            dict by input name; ``None`` makes random inputs from the ONNX input shapes, with
            every dynamic dimension (the batch) set to 1.
        providers: ``"cpu"`` and / or ``"cuda"``. CUDA is measured when onnxruntime offers
            ``CUDAExecutionProvider``; otherwise it is reported unavailable, with the reason.
        warmup: untimed runs first.
        runs: timed runs; median and p90 are over these.
        threads: onnxruntime intra-op threads (``None``: onnxruntime's default, one per
            physical core), recorded in the result.

    Returns:
        A :class:`BenchResult`; ``result["cpu"].median_ms`` is the CPU median in ms.

    Raises:
        SurgeonInputError: a bad argument.
        SurgeonBenchError: the file is missing or onnxruntime cannot load or run it on the CPU.
    """
    return bench_interleaved(
        [onnx_path],
        example_inputs,
        providers=providers,
        warmup=warmup,
        runs=runs,
        threads=threads,
    )[0]


def bench_interleaved(
    onnx_paths: Sequence[str | os.PathLike[str]],
    example_inputs: Any = None,
    *,
    providers: Iterable[str] | str = ("cpu", "cuda"),
    warmup: int = 10,
    runs: int = 50,
    threads: int | None = None,
) -> list[BenchResult]:
    """Time several ONNX files that take the same inputs (an original and its slim model)
    side by side: on each provider, round after round, each file runs once, so a slow spell
    of the machine falls on all of them alike and their ratio is honest. Arguments as
    :func:`bench`; one :class:`BenchResult` per file, in order."""
    import onnxruntime as ort

    wanted = _normalise_providers(providers)
    _check_counts(warmup, runs, threads)
    paths = [_existing_onnx(p) for p in onnx_paths]
    available = ort.get_available_providers()
    timings: list[dict[str, ProviderTiming]] = [{} for _ in paths]
    specs: dict[str, tuple[tuple[int, ...], str]] = {}
    feed: dict[str, np.ndarray] | None = None
    for provider in wanted:
        try:
            sessions = [(_open_session(p, provider, available, threads), p) for p in paths]
            if feed is None:  # made once, from the first session that opens
                specs, feed = _inputs(sessions[0][0], example_inputs)
            times = _timed_runs(sessions, feed, provider, warmup=warmup, runs=runs)
            for i, path in enumerate(paths):
                timings[i][provider] = _timing(
                    times[i], path, provider, warmup=warmup, threads=threads
                )
        except _Unavailable as exc:
            for i in range(len(paths)):
                timings[i][provider] = _unavailable(provider, str(exc), warmup, threads)
    return [
        BenchResult(path=str(p), inputs=specs, timings=t)
        for p, t in zip(paths, timings, strict=True)
    ]
