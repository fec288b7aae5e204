"""The original-vs-slim report (surgeon/report.py): compression, theoretical and measured
speedups and their ratio, the noise caveat, parameter and MAC counts of real models, the
latencies a bench result gives, and the table and JSON they are shown in."""

from __future__ import annotations

import json

import onnxruntime as ort
import pytest
import torch
from rich.console import Console
from torch import nn

import surgeon
from surgeon.benchmark import BenchResult, ProviderTiming, bench
from surgeon.cost import count_macs, count_params
from surgeon.exporter import export
from surgeon.report import ModelSummary, Report, build_report, summarize
from tests.helpers import MLP

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


def _render(report: Report) -> str:
    console = Console(width=160, record=True)
    console.print(report.render())
    return console.export_text()


def test_report_arithmetic() -> None:
    report = Report(
        model="m",
        original=ModelSummary(params=1000, macs=8000, onnx_bytes=4000, latency_ms={"cpu": 10.0}),
        slim=ModelSummary(params=250, macs=2000, onnx_bytes=1000, latency_ms={"cpu": 5.0}),
        settings={"ratio": 0.5},
    )
    assert report.compression_ratio == 4.0
    assert report.theoretical_speedup == 4.0
    assert report.measured_speedup("cpu") == 2.0
    assert report.efficiency("cpu") == 0.5
    assert report.measured_speedup("cuda") is None and report.efficiency("cuda") is None
    data = json.loads(report.to_json())
    assert data["compression_ratio"] == 4.0
    assert data["theoretical_speedup"] == 4.0
    assert data["measured_speedup"] == {"cpu": 2.0}
    assert data["measured_over_theoretical"] == {"cpu": 0.5}
    assert data["original"]["latency_median_ms"] == {"cpu": 10.0}
    text = _render(report)
    assert "m at ratio 0.5" in text
    assert "4.00x compression" in text and "4.00x theoretical" in text
    assert "2.00x measured" in text and "0.50" in text


def _timed(original: tuple[float, float], slim: tuple[float, float]) -> Report:
    def summary(median_p90: tuple[float, float]) -> ModelSummary:
        median, p90 = median_p90
        return ModelSummary(params=1, macs=1, latency_ms={"cpu": median}, p90_ms={"cpu": p90})

    return Report(model="m", original=summary(original), slim=summary(slim))


def test_a_difference_within_the_noise_is_said_to_be() -> None:
    # the slim model measured slower, by less than the spread: a caveat, not a verdict
    noisy = _timed(original=(10.0, 10.5), slim=(10.2, 13.0))
    assert "not told apart" in noisy.noise("cpu")
    assert "not told apart" in noisy.to_dict()["latency_notes"]["cpu"]
    assert "not told apart" in _render(noisy)
    clear = _timed(original=(10.0, 10.5), slim=(5.0, 5.4))
    assert clear.noise("cpu") is None and clear.to_dict()["latency_notes"] == {}
    assert "note" not in _render(clear) and "p90 (cpu)" in _render(clear)


def test_report_without_latency() -> None:
    report = Report(
        model="m", original=ModelSummary(params=10, macs=10), slim=ModelSummary(params=5, macs=2)
    )
    assert report.compression_ratio == 2.0 and report.theoretical_speedup == 5.0
    assert report.providers == [] and report.measured_speedup() is None
    data = report.to_dict()
    assert data["measured_speedup"] == {} and data["original"]["onnx_bytes"] is None
    assert "latency" not in _render(report)


class Small(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3)
        self.fc = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean(dim=(2, 3)))


def test_build_report_measures_both_models(tmp_path) -> None:
    torch.manual_seed(0)
    wide, narrow = Small(16).eval(), Small(4).eval()
    x = torch.randn(1, 1, 16, 16)
    paths = [export(m, x, tmp_path / f"{n}.onnx") for n, m in (("w", wide), ("n", narrow))]
    results = [bench(p, warmup=1, runs=5) for p in paths]
    report = build_report(
        "small",
        wide,
        narrow,
        x,
        original_onnx=paths[0],
        slim_onnx=paths[1],
        original_bench=results[0],
        slim_bench=results[1],
        settings={"ratio": 0.75},
    )
    assert report.original.params == count_params(wide) == 16 * 9 + 16 + 16 * 10 + 10
    assert report.slim.params == count_params(narrow) == 4 * 9 + 4 + 4 * 10 + 10
    assert report.original.macs == count_macs(wide, x) == 16 * 9 * 14 * 14 + 16 * 10
    assert report.slim.macs == count_macs(narrow, x) == 4 * 9 * 14 * 14 + 4 * 10
    assert report.compression_ratio == pytest.approx(330 / 90)
    assert report.original.onnx_bytes == paths[0].stat().st_size
    assert report.original.latency_ms["cpu"] == results[0]["cpu"].median_ms
    assert report.measured_speedup() == pytest.approx(
        results[0]["cpu"].median_ms / results[1]["cpu"].median_ms
    )
    if not HAS_CUDA:
        assert "CUDAExecutionProvider" in report.original.unavailable["cuda"]
        assert "unavailable" in _render(report)
    saved = report.save_json(tmp_path / "report.json")
    assert json.loads(saved.read_text())["slim"]["params"] == 90


def test_the_report_of_a_slim_model_counts_what_slim_removed() -> None:
    torch.manual_seed(0)
    model, x = MLP().eval(), torch.randn(5, 6)  # 6 -> 8 -> 3
    slim = surgeon.slim(model, 0.5, x)  # the hidden layer: 8 -> 4
    assert slim.fc1.out_features == 4
    report = build_report("mlp", model, slim, x, settings={"ratio": 0.5})
    assert report.original.params == 6 * 8 + 8 + 8 * 3 + 3 == 83
    assert report.slim.params == 6 * 4 + 4 + 4 * 3 + 3 == 43
    assert report.original.macs == 5 * (6 * 8 + 8 * 3) == 360
    assert report.slim.macs == 5 * (6 * 4 + 4 * 3) == 180
    assert report.compression_ratio == pytest.approx(83 / 43)
    assert report.theoretical_speedup == 2.0
    assert report.original.onnx_bytes is None and report.providers == []
    assert report.measured_speedup() is None and report.efficiency() is None
    data = report.to_dict()
    assert data["settings"] == {"ratio": 0.5} and data["theoretical_speedup"] == 2.0
    text = _render(report)
    assert "mlp at ratio 0.5" in text
    assert "1.93x compression" in text and "2.00x theoretical" in text


def test_summarize_takes_latencies_file_size_and_unavailable_providers(tmp_path) -> None:
    model, x = MLP().eval(), torch.randn(5, 6)
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"\0" * 1234)
    result = BenchResult(
        path=str(onnx),
        inputs={"input": ((5, 6), "tensor(float)")},
        timings={
            "cpu": ProviderTiming("cpu", True, median_ms=2.0, p90_ms=2.5, runs=9),
            "cuda": ProviderTiming("cuda", False, reason="no GPU here"),
            "rocm": ProviderTiming("rocm", True),  # available, yet nothing measured
        },
    )
    summary = summarize(model, x, onnx_path=onnx, bench_result=result)
    assert summary.params == 83 and summary.macs == 360 and summary.onnx_bytes == 1234
    assert summary.latency_ms == {"cpu": 2.0} and summary.p90_ms == {"cpu": 2.5}
    assert summary.unavailable == {"cuda": "no GPU here", "rocm": "unavailable"}
    assert summary.to_dict()["unavailable_providers"] == summary.unavailable


def test_a_zero_or_missing_quantity_gives_no_ratio() -> None:
    report = Report(
        model="m",
        original=ModelSummary(params=10, macs=0, latency_ms={"cpu": 4.0, "cuda": 1.0}),
        slim=ModelSummary(params=0, macs=0, latency_ms={"cpu": 0.0}),
    )
    assert report.compression_ratio is None and report.theoretical_speedup is None
    assert report.providers == ["cpu"]  # cuda was timed for one model only
    assert report.measured_speedup("cpu") is None and report.measured_speedup("cuda") is None
    assert report.efficiency("cpu") is None
    assert report.noise("cpu") is None  # no p90: no caveat
    data = report.to_dict()
    assert data["compression_ratio"] is None and data["measured_speedup"] == {"cpu": None}
    assert "- compression" in _render(report)


def test_counts_and_sizes_are_printed_with_units() -> None:
    report = Report(
        model="m",
        original=ModelSummary(params=1_234_567, macs=2_500_000_000, onnx_bytes=3 * 2**20),
        slim=ModelSummary(params=999, macs=1500, onnx_bytes=2048),
    )
    text = _render(report)
    assert "1.23 M" in text and "2.50 G" in text and "3.0 MiB" in text
    assert "999" in text and "1.50 K" in text and "2.0 KiB" in text
    assert "1235.80x compression" in text and "1666666.67x theoretical" in text
    assert "1536.00x" in text  # the ONNX files' ratio


def test_the_caption_says_how_latency_and_round_to_were_measured() -> None:
    timed = ModelSummary(params=2, macs=2, latency_ms={"cpu": 2.0}, p90_ms={"cpu": 2.1})
    fast = ModelSummary(params=1, macs=1, latency_ms={"cpu": 1.0}, p90_ms={"cpu": 1.1})
    default = Report("m", timed, fast, settings={"threads": None})
    assert default.render().caption == (
        "latency: median and p90, onnxruntime intra-op threads default (one per core)"
    )
    settings = {
        "threads": 4,
        "runs": 50,
        "round_to_auto": True,
        "round_to": 8,
        "round_to_timed": {"8": 1.234, "16": 2.0},
        "grouped": [4],
    }
    assert Report("m", timed, fast, settings=settings).render().caption == (
        "latency: median and p90 of 50 interleaved runs, onnxruntime intra-op threads 4; "
        "round_to auto: 8 (the fastest slim model of 8: 1.23 ms, 16: 2 ms); grouped convs "
        "lose whole groups at in-group widths [4] (measured on this device)"
    )
