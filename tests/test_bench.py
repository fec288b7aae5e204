"""surgeon.bench (onnxruntime latency) and surgeon.report (original vs slim)."""

from __future__ import annotations

import json
import math

import onnxruntime as ort
import pytest
import torch
from rich.console import Console
from torch import nn

import surgeon
from surgeon.benchmark import BenchResult, ProviderTiming, SurgeonBenchError, bench
from surgeon.cost import count_macs, count_params
from surgeon.errors import SurgeonInputError
from surgeon.exporter import export
from surgeon.models import create
from surgeon.report import ModelSummary, Report, build_report

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.fixture(scope="module")
def lenet_onnx(tmp_path_factory):
    model, x = create("lenet5")
    path = export(model, x, tmp_path_factory.mktemp("bench") / "lenet5.onnx")
    return model, x, path


def test_cpu_timing_is_sane(lenet_onnx) -> None:
    _, _, path = lenet_onnx
    result = bench(path, warmup=2, runs=25, threads=1, providers=("cpu",))
    cpu = result["cpu"]
    assert cpu.available and cpu.reason is None
    assert cpu.runs == 25 and cpu.warmup == 2 and cpu.threads == 1
    assert math.isfinite(cpu.median_ms) and cpu.median_ms > 0
    assert cpu.p90_ms >= cpu.median_ms >= cpu.min_ms > 0
    assert result.median_ms("cpu") == cpu.median_ms
    # inputs were made from the ONNX shapes, the dynamic batch set to 1
    assert result.inputs == {"input": ((1, 1, 32, 32), "tensor(float)")}
    assert list(result.timings) == ["cpu"]


def test_default_threads_are_recorded_as_onnxruntime_default(lenet_onnx) -> None:
    result = bench(lenet_onnx[2], warmup=1, runs=3, providers="cpu")
    assert result.cpu is not None and result.cpu.threads is None


def test_example_inputs_set_the_shape(lenet_onnx) -> None:
    _, _, path = lenet_onnx
    batch4 = torch.randn(4, 1, 32, 32)
    for given in (batch4, (batch4,), {"input": batch4}, batch4.numpy()):
        result = bench(path, given, warmup=1, runs=3, providers=("cpu",))
        assert result.inputs["input"][0] == (4, 1, 32, 32)
        assert result["cpu"].median_ms > 0


@pytest.mark.skipif(HAS_CUDA, reason="onnxruntime has CUDA here")
def test_cuda_is_reported_unavailable_not_raised(lenet_onnx) -> None:
    result = bench(lenet_onnx[2], warmup=1, runs=3)
    assert list(result.timings) == ["cpu", "cuda"]
    cuda = result.cuda
    assert cuda is not None and not cuda.available
    assert "CUDAExecutionProvider" in cuda.reason
    assert cuda.median_ms is None and cuda.p90_ms is None and cuda.runs == 0
    assert result["cpu"].available and result["cpu"].median_ms > 0


@pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime with CUDAExecutionProvider")
def test_cuda_timing_with_io_binding(lenet_onnx) -> None:
    result = bench(lenet_onnx[2], warmup=3, runs=20, providers=("cuda",))
    cuda = result["cuda"]
    assert cuda.available, cuda.reason
    assert cuda.p90_ms >= cuda.median_ms > 0


def test_result_is_json_able(lenet_onnx) -> None:
    result = bench(lenet_onnx[2], warmup=1, runs=3)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["inputs"]["input"] == {"shape": [1, 1, 32, 32], "type": "tensor(float)"}
    assert data["timings"]["cpu"]["median_ms"] == result["cpu"].median_ms
    assert isinstance(result, BenchResult) and isinstance(result["cpu"], ProviderTiming)


def test_bad_arguments(lenet_onnx, tmp_path) -> None:
    path = lenet_onnx[2]
    with pytest.raises(SurgeonInputError, match="runs"):
        bench(path, runs=0)
    with pytest.raises(SurgeonInputError, match="warmup"):
        bench(path, warmup=-1)
    with pytest.raises(SurgeonInputError, match="threads"):
        bench(path, threads=0)
    with pytest.raises(SurgeonInputError, match="unknown provider 'tpu'"):
        bench(path, providers=("cpu", "tpu"))
    with pytest.raises(
        SurgeonInputError, match="2 example inputs given but the ONNX model takes 1"
    ):
        bench(path, (torch.randn(1, 1, 32, 32), torch.randn(1)), providers="cpu")
    with pytest.raises(SurgeonInputError, match="do not match the ONNX inputs"):
        bench(path, {"x": torch.randn(1, 1, 32, 32)}, providers="cpu")
    with pytest.raises(SurgeonBenchError, match="does not exist"):
        bench(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(SurgeonBenchError, match="cannot load"):
        bench(junk)
    with pytest.raises(SurgeonBenchError, match="failed to run"):
        bench(path, torch.randn(1, 3, 32, 32), providers="cpu")


def test_public_name_is_the_function_after_importing_the_module(lenet_onnx) -> None:
    import surgeon.benchmark as module

    assert surgeon.bench is module.bench
    assert surgeon.bench(lenet_onnx[2], warmup=0, runs=2, providers="cpu")["cpu"].runs == 2


# --------------------------------------------------------------------------------------------
# Report.
# --------------------------------------------------------------------------------------------


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


def test_interleaved_files_are_timed_round_by_round(lenet_onnx, tmp_path, monkeypatch) -> None:
    import surgeon.benchmark as benchmark

    model, x, path = lenet_onnx
    other = export(surgeon.slim(model, 0.5, x), x, tmp_path / "slim.onnx")
    order: list[str] = []
    runner = benchmark._runner

    def recording(session, feed, *, device):
        once, name = runner(session, feed, device=device), session._model_path

        def run() -> float:
            order.append(name)
            return once()

        return run

    monkeypatch.setattr(benchmark, "_runner", recording)
    first, second = surgeon.bench_interleaved(
        [path, other], x, providers="cpu", warmup=1, runs=4, threads=1
    )
    assert (first.path, second.path) == (str(path), str(other))
    for result in (first, second):
        assert result["cpu"].runs == 4 and result["cpu"].threads == 1
        assert result.inputs == {"input": ((1, 1, 32, 32), "tensor(float)")}
    # each round runs each file once, the order alternating: ABBAABBAAB
    a, b = str(path), str(other)
    assert order == [a, b, b, a, a, b, b, a, a, b]


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
