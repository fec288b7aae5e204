"""surgeon.bench (surgeon/benchmark.py): onnxruntime latency, one model or several
interleaved. (The original-vs-slim report: tests/test_report.py.)"""

from __future__ import annotations

import json
import math

import onnxruntime as ort
import pytest
import torch

import surgeon
from surgeon.benchmark import BenchResult, ProviderTiming, SurgeonBenchError, bench
from surgeon.errors import SurgeonInputError
from surgeon.exporter import export
from surgeon.models import create

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


def test_default_threads_are_recorded_as_onnxruntime_default(lenet_onnx, monkeypatch) -> None:
    """threads=None leaves the session at onnxruntime's own intra-op default (the option stays
    0) and the result records None, the "default" the report prints; a count given reaches the
    session and is recorded as given, so the None is a recording, not a field left unset."""
    opened: list[int] = []
    session = ort.InferenceSession

    def recording(model, sess_options=None, *args, **kwargs):
        opened.append(sess_options.intra_op_num_threads)
        return session(model, sess_options, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", recording)
    default = bench(lenet_onnx[2], warmup=1, runs=3, providers="cpu")
    given = bench(lenet_onnx[2], warmup=1, runs=3, providers="cpu", threads=2)
    assert opened == [0, 2]
    assert default.cpu is not None and default.cpu.threads is None
    assert given.cpu is not None and given.cpu.threads == 2
    assert default.to_dict()["timings"]["cpu"]["threads"] is None
    assert given.to_dict()["timings"]["cpu"]["threads"] == 2


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
