"""The original-vs-slim report: size, cost, ONNX file size and onnxruntime latency.

Definitions follow Blalock et al., "What is the State of Neural Network Pruning?" (MLSys 2020):

* compression ratio = params(original) / params(slim)
* theoretical speedup = MACs(original) / MACs(slim), MACs counted by
  ``torch.utils.flop_counter.FlopCounterMode`` (:func:`surgeon.cost.count_macs`)
* measured speedup = median latency(original) / median latency(slim), onnxruntime
* measured / theoretical: how much of the MAC reduction the runtime turns into time
  (1.0 = all of it).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from surgeon.cost import count_macs, count_params

if TYPE_CHECKING:  # pragma: no cover
    from rich.table import Table
    from torch import nn

    from surgeon.benchmark import BenchResult

__all__ = ["ModelSummary", "Report", "summarize", "build_report"]


@dataclass(frozen=True)
class ModelSummary:
    """Size, cost and latency of one model; latencies are medians / p90s in ms, per provider."""

    params: int
    macs: int
    onnx_bytes: int | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)
    p90_ms: dict[str, float] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {
            "params": self.params,
            "macs": self.macs,
            "onnx_bytes": self.onnx_bytes,
            "latency_median_ms": dict(self.latency_ms),
            "latency_p90_ms": dict(self.p90_ms),
            "unavailable_providers": dict(self.unavailable),
        }


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


@dataclass(frozen=True)
class Report:
    """Original against slim. ``settings`` records how the slim model was made and timed;
    ``layers`` the per-node profile rows (:func:`surgeon.profile.layer_rows`), where they
    were measured."""

    model: str
    original: ModelSummary
    slim: ModelSummary
    settings: dict[str, Any] = field(default_factory=dict)
    layers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def compression_ratio(self) -> float | None:
        """params(original) / params(slim)."""
        return _ratio(self.original.params, self.slim.params)

    @property
    def theoretical_speedup(self) -> float | None:
        """MACs(original) / MACs(slim)."""
        return _ratio(self.original.macs, self.slim.macs)

    @property
    def providers(self) -> list[str]:
        """Providers with a latency for both models, in the order they were measured."""
        return [p for p in self.original.latency_ms if p in self.slim.latency_ms]

    def measured_speedup(self, provider: str = "cpu") -> float | None:
        """Median latency(original) / median latency(slim) on ``provider``; None if unmeasured."""
        return _ratio(self.original.latency_ms.get(provider), self.slim.latency_ms.get(provider))

    def efficiency(self, provider: str = "cpu") -> float | None:
        """measured speedup / theoretical speedup on ``provider``."""
        return _ratio(self.measured_speedup(provider), self.theoretical_speedup)

    def noise(self, provider: str = "cpu") -> str | None:
        """A caveat when the run-to-run spread (p90 - median, the larger of the two models')
        is at least the difference of the medians: then the measured speedup, whichever way
        it points, is within the noise of this machine. None when the difference stands out
        or a latency is missing."""
        a, b = self.original, self.slim
        try:
            diff = abs(a.latency_ms[provider] - b.latency_ms[provider])
            spread = max(
                a.p90_ms[provider] - a.latency_ms[provider],
                b.p90_ms[provider] - b.latency_ms[provider],
            )
        except KeyError:
            return None
        if spread < diff:
            return None
        return (
            f"the run-to-run spread ({spread:.3f} ms, p90 - median) is at least the difference "
            f"measured ({diff:.3f} ms): on {provider} the two are not told apart here; rerun "
            "with more --runs on a quieter machine"
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict: both summaries, the settings and every derived ratio."""
        return {
            "model": self.model,
            "settings": dict(self.settings),
            "original": self.original.to_dict(),
            "slim": self.slim.to_dict(),
            "compression_ratio": self.compression_ratio,
            "theoretical_speedup": self.theoretical_speedup,
            "measured_speedup": {p: self.measured_speedup(p) for p in self.providers},
            "measured_over_theoretical": {p: self.efficiency(p) for p in self.providers},
            "latency_notes": {p: n for p in self.providers if (n := self.noise(p))},
            "layers": list(self.layers),
        }

    def to_json(self) -> str:
        """``to_dict`` as indented JSON text (ends with a newline)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    def save_json(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_json` to ``path`` atomically; return the absolute path."""
        from surgeon.files import write_bytes_atomic

        return write_bytes_atomic(path, self.to_json().encode(), what="report file")

    def render(self) -> Table:
        """A Rich table: one row per quantity, original / slim / ratio columns."""
        from rich.markup import escape
        from rich.table import Table

        title = self.model
        target = self.settings.get("target")
        if target:
            amount = f"{target['value']:g}" + (" ms" if target["kind"] == "latency_ms" else "x")
            title += f" to {target['kind']} {amount}"
        elif "ratio" in self.settings:
            title += f" at ratio {self.settings['ratio']:g}"
        table = Table(title=title, title_justify="left")
        table.add_column("", style="bold")
        table.add_column("original", justify="right")
        table.add_column("slim", justify="right")
        table.add_column("original / slim", justify="right")

        table.add_row(
            "params",
            _count(self.original.params),
            _count(self.slim.params),
            _times(self.compression_ratio) + " compression",
        )
        table.add_row(
            "MACs",
            _count(self.original.macs),
            _count(self.slim.macs),
            _times(self.theoretical_speedup) + " theoretical",
        )
        table.add_row(
            "ONNX file",
            _size(self.original.onnx_bytes),
            _size(self.slim.onnx_bytes),
            _times(_ratio(self.original.onnx_bytes, self.slim.onnx_bytes)),
        )
        for provider in dict.fromkeys([*self.original.latency_ms, *self.slim.latency_ms]):
            table.add_row(
                f"latency {provider} (median)",
                _ms(self.original.latency_ms.get(provider)),
                _ms(self.slim.latency_ms.get(provider)),
                _times(self.measured_speedup(provider)) + " measured",
            )
            table.add_row(
                f"  p90 ({provider})",
                _ms(self.original.p90_ms.get(provider)),
                _ms(self.slim.p90_ms.get(provider)),
                "",
            )
            efficiency = self.efficiency(provider)
            table.add_row(
                f"  measured / theoretical ({provider})",
                "",
                "",
                "-" if efficiency is None else f"{efficiency:.2f}",
            )
            note = self.noise(provider)
            if note is not None:
                table.add_row("  [yellow]note[/yellow]", "", "", f"[yellow]{escape(note)}[/yellow]")
        if self.providers:
            threads = self.settings.get("threads")
            runs = self.settings.get("runs")
            table.caption = (
                "latency: median and p90"
                + (f" of {runs} interleaved runs" if runs else "")
                + ", onnxruntime intra-op threads "
                + (str(threads) if threads else "default (one per core)")
            )
            table.caption_justify = "left"
        if self.settings.get("round_to_auto"):
            grouped = self.settings.get("grouped")
            whole = (
                f"; grouped convs lose whole groups at in-group widths {grouped}"
                if isinstance(grouped, list) and grouped
                else ""
            )
            timed = self.settings.get("round_to_timed") or {}
            fastest = (
                " (the fastest slim model of "
                + ", ".join(f"{m}: {ms:.3g} ms" for m, ms in timed.items())
                + ")"
                if timed
                else ""
            )
            rounded = (
                f"round_to auto: {self.settings.get('round_to')}{fastest}{whole} (measured on "
                "this device)"
            )
            table.caption = f"{table.caption}; {rounded}" if table.caption else rounded
        for provider, reason in self.original.unavailable.items():
            table.add_row(
                f"latency {provider}", "[dim]unavailable[/dim]", "", f"[dim]{escape(reason)}[/dim]"
            )
        return table


def _count(value: int | None) -> str:
    if value is None:
        return "-"
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {unit}"
    return str(value)


def _size(value: int | None) -> str:
    if value is None:
        return "-"
    for scale, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if value >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value} B"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} ms"


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def summarize(
    model: nn.Module,
    example_inputs: Any,
    *,
    onnx_path: str | os.PathLike[str] | None = None,
    bench_result: BenchResult | None = None,
) -> ModelSummary:
    """Params and MACs of ``model``, with the ONNX file size and latencies when given."""
    latency: dict[str, float] = {}
    p90: dict[str, float] = {}
    unavailable: dict[str, str] = {}
    if bench_result is not None:
        for provider, timing in bench_result.timings.items():
            if timing.available and timing.median_ms is not None:
                latency[provider] = timing.median_ms
                if timing.p90_ms is not None:
                    p90[provider] = timing.p90_ms
            else:
                unavailable[provider] = timing.reason or "unavailable"
    return ModelSummary(
        params=count_params(model),
        macs=count_macs(model, example_inputs),
        onnx_bytes=Path(onnx_path).stat().st_size if onnx_path is not None else None,
        latency_ms=latency,
        p90_ms=p90,
        unavailable=unavailable,
    )


def build_report(
    name: str,
    original: nn.Module,
    slim: nn.Module,
    example_inputs: Any,
    *,
    original_onnx: str | os.PathLike[str] | None = None,
    slim_onnx: str | os.PathLike[str] | None = None,
    original_bench: BenchResult | None = None,
    slim_bench: BenchResult | None = None,
    settings: dict[str, Any] | None = None,
    layers: list[dict[str, Any]] | None = None,
) -> Report:
    """Measure ``original`` and ``slim`` on ``example_inputs``; pair them in a :class:`Report`."""
    return Report(
        layers=list(layers or ()),
        model=name,
        original=summarize(
            original, example_inputs, onnx_path=original_onnx, bench_result=original_bench
        ),
        slim=summarize(slim, example_inputs, onnx_path=slim_onnx, bench_result=slim_bench),
        settings=dict(settings or {}),
    )
