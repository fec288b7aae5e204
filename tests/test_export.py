"""surgeon.export: ONNX export, onnx.checker, onnxruntime parity, atomic and deterministic.
(The output folder's checks and the atomic write itself: tests/test_files.py.)"""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import surgeon
from surgeon.errors import SurgeonError, SurgeonInputError
from surgeon.exporter import SurgeonExportError, export
from surgeon.models import ZOO, create
from tests.helpers import tiny_conv

# Small inputs keep the suite fast while every zoo model is still exported. ViT-Ti has a fixed
# 14x14 patch grid and VGG-16-BN's adaptive pool to 7x7 only exports with TorchScript when 7
# divides its input, so both keep 224; VGG's 25088x4096 classifier dominates its size anyway,
# num_classes=10 trims the last layer. Models whose default input is not 224 keep theirs.
FULL_SIZE = {"vit_tiny": {}, "vgg16_bn": {"num_classes": 10}}
SMALL_INPUT = (1, 3, 32, 32)


def zoo_case(name: str) -> tuple[nn.Module, torch.Tensor]:
    if name in FULL_SIZE:
        return create(name, **FULL_SIZE[name])
    if ZOO[name].input_shape == (1, 3, 224, 224):
        return create(name, input_shape=SMALL_INPUT)
    return create(name)


def _ort_outputs(path, feed: dict[str, torch.Tensor]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {k: v.numpy() for k, v in feed.items()})


def _assert_parity(path, model: nn.Module, *inputs: torch.Tensor) -> None:
    """onnxruntime vs PyTorch on each input, tolerance scaled by the output's magnitude."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for x in inputs:
        with torch.no_grad():
            want = model(x)
        (got,) = session.run(None, {"input": x.numpy()})
        scale = want.abs().max().item()
        torch.testing.assert_close(torch.from_numpy(got), want, rtol=0, atol=1e-4 * scale + 1e-5)


def _batch_dim(path) -> str | int:
    dim = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0]
    return dim.dim_param or dim.dim_value


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_original_and_slim_export_with_parity(name: str, tmp_path) -> None:
    model, x = zoo_case(name)
    slim = surgeon.slim(model, 0.5, x)
    assert surgeon.count_params(slim) < surgeon.count_params(model)

    for tag, module in (("original", model), ("slim", slim)):
        path = export(module, x, tmp_path / f"{tag}.onnx")
        assert path == tmp_path / f"{tag}.onnx"
        onnx.checker.check_model(str(path))
        assert _batch_dim(path) == "batch"
        # independent of export's own check: the example batch and another batch size
        other = torch.randn((3, *x.shape[1:]), generator=torch.Generator().manual_seed(7))
        _assert_parity(path, module, x, other)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["original.onnx", "slim.onnx"]
    # the slim file is smaller, by roughly the parameter ratio
    size_ratio = (tmp_path / "original.onnx").stat().st_size / (
        tmp_path / "slim.onnx"
    ).stat().st_size
    param_ratio = surgeon.count_params(model) / surgeon.count_params(slim)
    assert size_ratio == pytest.approx(param_ratio, rel=0.1)


# --------------------------------------------------------------------------------------------
# Parity failures: nothing is written.
# --------------------------------------------------------------------------------------------


class ExportsDifferently(nn.Module):
    """Adds ``offset`` to its output only while torch.onnx traces it: the ONNX graph is wrong."""

    def __init__(self, offset: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.offset = offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).mean(dim=(2, 3))
        if torch.onnx.is_in_onnx_export():
            y = y + self.offset
        return y


def _example() -> torch.Tensor:
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def test_parity_failure_raises_and_leaves_no_file(tmp_path) -> None:
    torch.manual_seed(0)
    model = ExportsDifferently(0.5)
    with pytest.raises(SurgeonExportError) as info:
        export(model, _example(), tmp_path / "bad.onnx")
    message = str(info.value)
    assert "output 'output'" in message
    assert "max |onnxruntime - torch| = 0.5" in message
    assert "atol=1e-05" in message and "rtol=0.0001" in message
    assert list(tmp_path.iterdir()) == []


def test_parity_failure_keeps_an_existing_file(tmp_path) -> None:
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous")
    with pytest.raises(SurgeonExportError, match="disagrees"):
        export(ExportsDifferently(0.5), _example(), target)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_tolerance_decides(tmp_path) -> None:
    """An offset of 1e-3 fails the default tolerance and passes atol=1e-2."""
    torch.manual_seed(0)
    model = ExportsDifferently(1e-3)
    with pytest.raises(SurgeonExportError, match=r"= 0\.001 > tolerance"):
        export(model, _example(), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []
    path = export(model, _example(), tmp_path / "m.onnx", atol=1e-2)
    (got,) = _ort_outputs(path, {"input": _example()})
    with torch.no_grad():
        want = model(_example())
    np.testing.assert_allclose(got - want.numpy(), 1e-3, atol=1e-6)


class HardCodedBatch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).reshape(1, 4 * 6 * 6))


def test_hard_coded_batch_is_reported_and_static_export_works(tmp_path) -> None:
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(SurgeonExportError, match="hard-codes its batch size"):
        export(HardCodedBatch(), x, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []
    path = export(HardCodedBatch(), x, tmp_path / "m.onnx", dynamic_batch=False)
    assert _batch_dim(path) == 1


# --------------------------------------------------------------------------------------------
# Determinism, inputs, model state.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["lenet5", "mobilenet_v2"])
def test_deterministic_bytes(name: str, tmp_path) -> None:
    model, x = zoo_case(name)
    a = export(model, x, tmp_path / "a.onnx")
    b = export(model, x, tmp_path / "b.onnx")
    assert a.read_bytes() == b.read_bytes()
    again, _ = zoo_case(name)  # a fresh but identical model
    c = export(again, x, tmp_path / "c.onnx")
    assert a.read_bytes() == c.read_bytes()


_PIPELINE = """
import sys, torch, surgeon
from surgeon.models import create
model, x = create("resnet18", input_shape=(1, 3, 64, 64))
surgeon.export(surgeon.slim(model, 0.5, x, round_to=8), x, sys.argv[1])
"""


def test_slim_and_export_give_byte_identical_files_across_processes(tmp_path) -> None:
    """Same model, inputs and options: the same ONNX bytes, in this process and in others."""
    model, x = create("resnet18", input_shape=(1, 3, 64, 64))
    a = export(surgeon.slim(model, 0.5, x, round_to=8), x, tmp_path / "a.onnx")
    b = export(surgeon.slim(model, 0.5, x, round_to=8), x, tmp_path / "b.onnx")
    assert a.read_bytes() == b.read_bytes()
    for name in ("c.onnx", "d.onnx"):
        subprocess.run(
            [sys.executable, "-c", _PIPELINE, str(tmp_path / name)], check=True, timeout=300
        )
        assert (tmp_path / name).read_bytes() == a.read_bytes()


class TwoInTwoOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 3)
        self.b = nn.Linear(5, 3)

    def forward(self, x, y=None, scale: float = 1.0):
        h = self.a(x) * scale
        if y is not None:
            h = h + self.b(y)
        return {"sum": h, "parts": (self.a(x), h.relu())}


def test_tuple_inputs_and_nested_outputs(tmp_path) -> None:
    torch.manual_seed(0)
    model = TwoInTwoOut().eval()
    x, y = torch.randn(2, 4), torch.randn(2, 5)
    path = export(model, (x, y), tmp_path / "m.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_0", "input_1"]
    assert [o.name for o in session.get_outputs()] == ["output_0", "output_1", "output_2"]
    got = session.run(None, {"input_0": x.numpy(), "input_1": y.numpy()})
    with torch.no_grad():
        want = model(x, y)
    for g, w in zip(got, [want["sum"], *want["parts"]], strict=True):
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-5, atol=1e-6)


def test_keyword_inputs_and_constants(tmp_path) -> None:
    torch.manual_seed(0)
    model = TwoInTwoOut().eval()
    x, y = torch.randn(2, 4), torch.randn(2, 5)
    path = export(model, {"x": x, "y": y, "scale": 2.0}, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["x", "y"]
    x3, y3 = torch.randn(3, 4), torch.randn(3, 5)
    (got, *_) = session.run(None, {"x": x3.numpy(), "y": y3.numpy()})
    with torch.no_grad():
        want = model(x3, y=y3, scale=2.0)["sum"]
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6)


def test_model_mode_and_buffers_are_untouched(tmp_path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5), nn.Flatten()
    )
    model.train()
    model[1].eval()  # a mixed state must come back as it was
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export(model, torch.randn(2, 3, 6, 6), tmp_path / "m.onnx")
    assert [m.training for m in model.modules()] == [True, True, False, True, True, True]
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_bad_arguments(tmp_path) -> None:
    model, x = tiny_conv()
    with pytest.raises(SurgeonInputError, match="rtol"):
        export(model, x, tmp_path / "m.onnx", rtol=-1.0)
    with pytest.raises(SurgeonInputError, match="opset"):
        export(model, x, tmp_path / "m.onnx", opset=3)
    with pytest.raises(SurgeonInputError, match="exporter"):
        export(model, x, tmp_path / "m.onnx", exporter="tflite")  # type: ignore[arg-type]
    with pytest.raises(SurgeonInputError, match="is a list"):
        export(model, ([x],), tmp_path / "m.onnx")
    with pytest.raises(SurgeonInputError, match="nn.Module"):
        export("model", x, tmp_path / "m.onnx")  # type: ignore[arg-type]
    with pytest.raises(SurgeonExportError, match="fails in PyTorch"):
        export(model, torch.randn(1, 5, 6, 6), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# Exporters.
# --------------------------------------------------------------------------------------------


class OddPool(nn.Module):
    """adaptive_avg_pool2d to a size that does not divide the input: TorchScript refuses it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(x)).flatten(1)


def test_auto_falls_back_to_dynamo(tmp_path, caplog) -> None:
    torch.manual_seed(0)
    model, x = OddPool().eval(), torch.randn(1, 3, 4, 4)
    with pytest.raises(SurgeonExportError, match="torchscript exporter: .*adaptive_avg_pool2d"):
        export(model, x, tmp_path / "m.onnx", exporter="torchscript")
    assert list(tmp_path.iterdir()) == []
    with caplog.at_level(logging.WARNING, logger="surgeon.export"):
        path = export(model, x, tmp_path / "m.onnx")
    assert "trying the dynamo exporter" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no .data side file
    (got,) = _ort_outputs(path, {"input": torch.ones(2, 3, 4, 4)})
    with torch.no_grad():
        want = model(torch.ones(2, 3, 4, 4))
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6)


def test_dynamo_exporter_is_deterministic(tmp_path) -> None:
    model, x = create("lenet5")
    a = export(model, x, tmp_path / "a.onnx", exporter="dynamo")
    b = export(model, x, tmp_path / "b.onnx", exporter="dynamo")
    assert a.read_bytes() == b.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx", "b.onnx"]
    _assert_parity(a, model, torch.randn(4, 1, 32, 32))


def test_public_name_is_the_function_after_importing_the_module(tmp_path) -> None:
    import surgeon.exporter as module

    model, x = tiny_conv()
    assert surgeon.export is module.export
    assert surgeon.export(model, x, tmp_path / "m.onnx") == tmp_path / "m.onnx"
    assert issubclass(SurgeonExportError, SurgeonError)


def test_a_float64_export_onnxruntime_cannot_run_says_so(tmp_path):
    model, x = create("digits_cnn")
    with pytest.raises(SurgeonExportError, match="computes in float64.*model.float"):
        surgeon.export(model.double(), x.double(), tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("opset", [6, 1000])
def test_an_opset_out_of_range_is_refused(opset, tmp_path):
    model, x = create("digits_cnn")
    with pytest.raises(SurgeonInputError, match="opset must be an int from 7 to"):
        surgeon.export(model, x, tmp_path / "m.onnx", opset=opset)


def test_an_opset_the_exporter_would_replace_is_refused(tmp_path):
    model, x = create("digits_cnn")
    with pytest.raises(SurgeonExportError, match="wrote opset 18 where opset 17 was asked"):
        surgeon.export(model, x, tmp_path / "m.onnx", opset=17, exporter="dynamo")
    assert not list(tmp_path.iterdir())


class _GroupedQueryAttention(nn.Module):
    """4 query heads read 2 key / value heads through ``enable_gqa``, which neither torch
    exporter translates."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.kv, self.o = nn.Linear(32, 32), nn.Linear(32, 32), nn.Linear(32, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.q(x).view(b, n, 4, 8).transpose(1, 2)
        k, v = self.kv(x).view(b, n, 2, 16).transpose(1, 2).chunk(2, dim=-1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return self.o(y.transpose(1, 2).reshape(b, n, 32))


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_grouped_query_attention_exports_with_heads_repeated(exporter, tmp_path) -> None:
    torch.manual_seed(0)
    model = _GroupedQueryAttention().eval()
    x = torch.randn(2, 6, 32)
    slim = surgeon.slim(model, 0.0, x, returns="graph")  # an fx graph calling it too
    for i, m in enumerate((model, slim)):
        path = tmp_path / f"gqa_{i}.onnx"
        export(m, x, path, exporter=exporter)  # parity with PyTorch checked inside
        got = ort.InferenceSession(str(path)).run(None, {"input": x.numpy()})[0]
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(got), m(x), rtol=1e-4, atol=1e-5)
    assert F.scaled_dot_product_attention.__name__ == "scaled_dot_product_attention"
    calls = [n for n in slim.graph.nodes if "scaled_dot_product" in str(n.target)]
    assert len(calls) == 1 and calls[0].target is F.scaled_dot_product_attention
    assert calls[0].kwargs.get("enable_gqa") is True
