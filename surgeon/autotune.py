"""``round_to="auto"``: the channel multiple at which onnxruntime runs *this* slim model fastest.

A probe on single convs (:mod:`surgeon.hardware`) gives a first multiple; it cannot tell how a
whole network's widths interact, so the slim model itself is made at that multiple and at every
larger candidate (each a full run of :func:`surgeon.pipeline.slim_model`), exported, and timed
side by side in onnxruntime. This is the one place the core exports and times.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch.nn as nn

from surgeon.hardware import CANDIDATES, TOLERANCE, channel_multiple, grouped_widths
from surgeon.keys import PLAN_KEY
from surgeon.options import SlimOptions

__all__ = ["timed_round_to", "held_logs"]

log = logging.getLogger(__name__)


def timed_round_to(
    model: nn.Module,
    example_inputs: Any,
    options: SlimOptions,
    *,
    provider: str = "cpu",
    threads: int | None = 1,
    original: Mapping[int, int] | None = None,
    runs: int = 20,
) -> Any:
    """Slim ``model`` at the multiple the probe measured on ``provider`` and at every larger
    candidate, export each distinct slim model and time them side by side (``runs``
    interleaved rounds, ``threads``), and keep the fastest (within the probe's tolerance, the
    smaller multiple: it keeps closer to what the ratio asked). Where export or timing fails,
    the probe's multiple stands. Returns the :class:`~surgeon.pipeline.Slimmed` of the chosen
    multiple; its plan records every median (``round_to_timed``)."""
    from surgeon.pipeline import prepared, slim_model

    options = prepared(model, options)  # data listed: it is read once per candidate
    if options.grouped in (None, "auto"):  # as measured on the same provider
        options = options.replace(grouped=grouped_widths(provider, threads))
    first = channel_multiple(provider, threads=threads)
    made: dict[int, Any] = {}
    shapes: set[tuple] = set()
    said: dict[int, list[logging.LogRecord]] = {}  # what each candidate's slim logged
    for m in (c for c in CANDIDATES if c >= first):
        try:
            with held_logs(said.setdefault(m, [])):
                slimmed = slim_model(model, example_inputs, options.replace(round_to=m), original)
        except Exception as exc:
            if m == first:  # the probe's multiple fails: slim fails, saying what it said
                _replay(said[m])
                raise
            log.info("surgeon: round_to=%d is left out of the timing: %s", m, exc)
            continue
        key = tuple((k, tuple(v.shape)) for k, v in slimmed.model.state_dict().items())
        if key not in shapes:  # a larger multiple that changes no width is the same model
            shapes.add(key)
            made[m] = slimmed
    medians: dict[int, float] = {}
    if len(made) > 1:
        try:
            medians = _timed(made, example_inputs, provider, threads, runs)
        except Exception as exc:  # an export or a runtime that fails: the probe's answer
            log.warning(
                "surgeon: round_to='auto' could not time the slim models (%s); "
                "keeping the measured multiple %d",
                exc,
                first,
            )
    pick = first
    if medians:
        best = min(medians.values())
        pick = min(m for m, ms in medians.items() if ms <= best * (1 + TOLERANCE))
    slimmed = made[pick]
    _replay(said[pick])  # the chosen model's warnings, once (not every candidate's)
    record = slimmed.model.meta[PLAN_KEY]
    record["round_to_auto"] = True
    record["round_to_timed"] = {str(m): ms for m, ms in medians.items()}  # JSON keys
    log.info("surgeon: round_to='auto' picked %d (median ms per multiple: %s)", pick, medians)
    return slimmed


def _timed(
    made: Mapping[int, Any], example_inputs: Any, provider: str, threads: int | None, runs: int
) -> dict[int, float]:
    """Median onnxruntime latency (ms) per candidate multiple, timed round by round."""
    from surgeon.benchmark import bench_interleaved
    from surgeon.exporter import export

    with tempfile.TemporaryDirectory(prefix="surgeon-round-to-") as tmp:
        paths = [export(s.model, example_inputs, Path(tmp) / f"r{m}.onnx") for m, s in made.items()]
        timed = bench_interleaved(
            paths, example_inputs, providers=(provider,), warmup=3, runs=runs, threads=threads
        )
    found = {m: r[provider].median_ms for m, r in zip(made, timed, strict=True)}
    found = {m: ms for m, ms in found.items() if ms is not None}  # None: not run
    if len(found) < 2:
        raise RuntimeError(f"onnxruntime did not run them on {provider}")
    return found


@contextlib.contextmanager
def held_logs(held: list[logging.LogRecord]) -> Iterator[None]:
    """Hold back what surgeon's loggers log in this thread (into ``held``) for the duration."""
    me = threading.get_ident()

    def hold(record: logging.LogRecord) -> bool:
        if record.thread != me:
            return True
        held.append(record)
        return False

    loggers = [logging.getLogger("surgeon")] + [
        logging.getLogger(name)
        for name in list(logging.root.manager.loggerDict)
        if name.startswith("surgeon.")
    ]
    for logger in loggers:
        logger.addFilter(hold)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(hold)


def _replay(records: list[logging.LogRecord]) -> None:
    for record in records:
        logging.getLogger(record.name).handle(record)
