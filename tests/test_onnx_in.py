"""ONNX files in, slim ONNX files out (``surgeon.slim_onnx``, ``surgeon export model.onnx``).

The files are made here, at test time: small PyTorch models exported by both PyTorch exporters
(a residual CNN with a dynamic batch, an attention block whose reshapes the exporter writes as
Shape / Gather / Concat chains with a dynamic batch and length), and graphs written with
``onnx.helper`` (an op no translation knows; a model with nothing to prune). Every check is
made in onnxruntime against the original file or against the slim graph.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import surgeon
from surgeon.errors import SurgeonInputError
from surgeon.onnxin.job import load_onnx


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.a = nn.Conv2d(16, 32, 3, padding=1)
        self.b = nn.Conv2d(32, 16, 3, padding=1)
        self.down = nn.Conv2d(16, 24, 3, stride=2, padding=1)
        self.head = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.relu(x + self.b(F.relu(self.a(x))))
        x = F.relu(self.down(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Attention(nn.Module):
    """x.shape read at run time: the exporters write Shape -> Gather -> Concat -> Reshape."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 64), nn.GELU(), nn.Linear(64, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, n, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attn = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)
        y = (attn.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c)
        x = x + self.proj(y)
        return x + self.mlp(x)


def _export(
    model: nn.Module, x: torch.Tensor, path: Path, *, opset: int, dynamo: bool, dynamic: dict
) -> Path:
    torch.manual_seed(0)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if dynamo:
            dims = {i: torch.export.Dim(name, min=2, max=64) for i, name in dynamic.items()}
            program = torch.onnx.export(
                model.eval(), (x,), dynamo=True, opset_version=opset, dynamic_shapes=(dims,),
                verbose=False, input_names=["pixels"], output_names=["scores"],
            )  # fmt: skip
            program.save(str(path), external_data=False)
        else:
            torch.onnx.export(
                model.eval(), (x,), str(path), dynamo=False, opset_version=opset,
                input_names=["pixels"], output_names=["scores"],
                dynamic_axes={"pixels": dynamic, "scores": {0: dynamic[0]}},
            )  # fmt: skip
    return path


def _randomise_norms(model: nn.Module) -> nn.Module:
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return model


def _run(path: Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def _assert_same(got: list[np.ndarray], want: list[np.ndarray], rtol: float = 1e-4) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        scale = float(np.abs(w).max())
        assert scale > 1e-3  # a check on outputs that are all ~0 could not fail
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-5 + rtol * scale)


@pytest.fixture(scope="module")
def cnn_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "residual.onnx"
    model = _randomise_norms(Residual())
    return _export(
        model, torch.randn(1, 3, 32, 32), path, opset=17, dynamo=False, dynamic={0: "batch"}
    )


def test_ratio_zero_gives_the_original_files_outputs(cnn_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "zero.onnx"
    result = surgeon.slim_onnx(cnn_file, 0.0, out)
    assert result.original_diff is not None and result.original_diff < 1e-4
    feed = {"pixels": np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)}
    _assert_same(_run(out, feed), _run(cnn_file, feed))
    assert result.params[0] == result.params[1]


def test_half_keeps_names_free_dims_and_opset_and_records_what_went(
    cnn_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "half.onnx"
    result = surgeon.slim_onnx(cnn_file, 0.5, out)
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    assert [i.name for i in proto.graph.input] == ["pixels"]
    assert [o.name for o in proto.graph.output] == ["scores"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert next(o.version for o in proto.opset_import if o.domain == "") == 17
    meta = {p.key: p.value for p in proto.metadata_props}
    removed = json.loads(meta["surgeon.removed"])
    assert meta["surgeon.source"] == "residual.onnx"
    assert any(after[0] < before[0] for before, after in removed.values() if after)
    # the slim file computes what the slim graph computes, at another batch too
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        want = result.model(x).numpy()
    _assert_same(_run(out, {"pixels": x.numpy()}), [want])
    # the parameters: what the slim graph holds, fewer than the original's
    assert result.params[1] == sum(p.numel() for p in result.model.parameters())
    assert result.params[1] < 0.5 * result.params[0]
    assert result.mac_drop > 2.5


def test_dynamo_file_with_shape_arithmetic_slims_heads_and_keeps_length_free(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    model = Attention()
    src = _export(
        model, torch.randn(2, 8, 32), tmp_path / "attn.onnx", opset=18, dynamo=True,
        dynamic={0: "batch", 1: "length"},
    )  # fmt: skip
    with pytest.raises(SurgeonInputError, match="free dim 1 .length"):
        load_onnx(src)
    source = load_onnx(src, input_shape=(2, 8, 32))
    assert source.import_diff < 1e-4
    code = source.module.code
    assert ".size(" in code  # the run-time sizes stay sizes, not the example's
    out = tmp_path / "attn_slim.onnx"
    result = surgeon.slim_onnx(src, 0.5, out, input_shape=(2, 8, 32))
    assert result.params[1] < result.params[0]
    x = torch.randn(3, 11, 32)  # another batch and length than the example's
    with torch.no_grad():
        want = result.model(x).numpy()
    _assert_same(_run(out, {"pixels": x.numpy()}), [want])
    dims = onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims][:2] == ["batch", "length"]


def test_torchscript_attention_file_ratio_zero(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = _export(
        Attention(), torch.randn(2, 8, 32), tmp_path / "attn_ts.onnx", opset=14, dynamo=False,
        dynamic={0: "batch", 1: "length"},
    )  # fmt: skip
    out = tmp_path / "zero.onnx"
    surgeon.slim_onnx(src, 0.0, out, example_inputs=torch.randn(2, 8, 32))
    feed = {"pixels": np.random.default_rng(1).standard_normal((4, 5, 32)).astype(np.float32)}
    _assert_same(_run(out, feed), _run(src, feed))


def _lrn_file(path: Path) -> Path:
    """Conv -> Relu -> LRN (no translation) -> Conv -> Relu -> Conv -> pool -> Gemm."""
    rng = np.random.default_rng(0)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="stem", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("LRN", ["r1"], ["n1"], name="norm1", size=3),
        helper.make_node("Conv", ["n1", "w2", "b2"], ["c2"], name="mid", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], name="last"),
        helper.make_node("GlobalAveragePool", ["c3"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "lrn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [
            init("w1", 8, 3, 3, 3), init("b1", 8), init("w2", 16, 8, 3, 3), init("b2", 16),
            init("w3", 12, 16, 1, 1), init("b3", 12), init("wf", 10, 12), init("bf", 10),
        ],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_an_op_no_rule_knows_blocks_its_groups_and_the_file_stays_right(tmp_path: Path) -> None:
    src = _lrn_file(tmp_path / "lrn.onnx")
    source = load_onnx(src)
    assert source.opaque == ["LRN 'norm1' (no translation)"]
    graph = surgeon.analyze(source.module, source.example, leaf_modules=[surgeon.OnnxOp])
    stem = next(
        g
        for g in graph.groups
        if any((p.owner, p.name, p.dim) == ("stem", "weight", 0) for p in g.params)
    )
    assert stem.blocked
    assert any("LRN" in r and "'norm1'" in r for r in stem.reasons), stem.reasons
    out = tmp_path / "lrn_slim.onnx"
    result = surgeon.slim_onnx(src, 0.5, out)
    proto = onnx.load(str(out))
    assert [n.op_type for n in proto.graph.node].count("LRN") == 1
    weights = {t.name: tuple(t.dims) for t in proto.graph.initializer}
    assert (8, 3, 3, 3) in weights.values()  # the stem, blocked, kept whole
    assert result.params[1] < result.params[0]  # the groups after the LRN were slimmed
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        want = result.model(x).numpy()
    _assert_same(_run(out, {"x": x.numpy()}), [want])
    zero = tmp_path / "lrn_zero.onnx"
    surgeon.slim_onnx(src, 0.0, zero)
    _assert_same(_run(zero, {"x": x.numpy()}), _run(src, {"x": x.numpy()}))


def test_nothing_prunable_says_why(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 6)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["y"], name="only", transB=1)], "one",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], [w],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    src = tmp_path / "one.onnx"
    onnx.save(model, str(src))
    result = surgeon.slim_onnx(src, 0.5, tmp_path / "one_slim.onnx")
    assert result.params[0] == result.params[1]
    assert result.diagnosis is not None and "model output" in result.diagnosis


def test_a_free_spatial_dim_needs_an_input_shape(tmp_path: Path) -> None:
    src = _export(
        _randomise_norms(Residual()), torch.randn(1, 3, 32, 32), tmp_path / "free.onnx",
        opset=17, dynamo=False, dynamic={0: "batch", 2: "height", 3: "width"},
    )  # fmt: skip
    with pytest.raises(SurgeonInputError, match="--input-shape"):
        load_onnx(src)
    out = tmp_path / "free_slim.onnx"
    result = surgeon.slim_onnx(src, 0.5, out, input_shape=(1, 3, 24, 40))
    dims = onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "", "height", "width"]
    x = torch.randn(2, 3, 48, 20)
    with torch.no_grad():
        want = result.model(x).numpy()
    _assert_same(_run(out, {"pixels": x.numpy()}), [want])


def test_cli_export_takes_an_onnx_file(cnn_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli.onnx"
    report = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "surgeon.cli", "export", str(cnn_file), "--ratio", "0.5", "-o",
         str(out), "--report", str(report), "--runs", "3", "--warmup", "1", "--round-to", "1"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert out.exists()
    data = json.loads(report.read_text())
    assert data["slim"]["macs"] < data["original"]["macs"] / 2
    assert [i.name for i in onnx.load(str(out)).graph.input] == ["pixels"]


def test_cli_refuses_a_free_dim_without_a_shape_and_writes_nothing(tmp_path: Path) -> None:
    src = _export(
        Residual(), torch.randn(1, 3, 32, 32), tmp_path / "free.onnx", opset=17, dynamo=False,
        dynamic={0: "batch", 2: "height", 3: "width"},
    )  # fmt: skip
    out = tmp_path / "never.onnx"
    result = subprocess.run(
        [sys.executable, "-m", "surgeon.cli", "export", str(src), "--ratio", "0.5", "-o", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--input-shape" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def test_a_target_and_an_opset_above_the_torchscript_exporters(tmp_path: Path) -> None:
    src = _export(
        _randomise_norms(Residual()), torch.randn(2, 3, 32, 32), tmp_path / "r21.onnx",
        opset=21, dynamo=True, dynamic={0: "batch"},
    )  # fmt: skip
    out = tmp_path / "r21_slim.onnx"
    result = surgeon.slim_onnx(src, surgeon.Target(macs=2.0), out)
    assert 1.9 <= result.mac_drop <= 2.3
    proto = onnx.load(str(out))
    assert next(o.version for o in proto.opset_import if o.domain == "") == 21 == result.opset
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = result.model(x).numpy()
    _assert_same(_run(out, {"pixels": x.numpy()}), [want])


def test_an_unknown_op_with_an_optional_input_left_out_is_kept_whole(tmp_path: Path) -> None:
    """An LSTM (no translation) whose sequence_lens is left out between B and initial_h."""
    rng = np.random.default_rng(0)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1]),
        helper.make_node("Transpose", ["c2"], ["t"], name="to_time", perm=[2, 0, 1]),
        helper.make_node("LSTM", ["t", "W", "R", "B", "", "h0"], ["y"], name="rnn", hidden_size=6),
        helper.make_node("Squeeze", ["y", "axis1"], ["ys"], name="squeeze"),
        helper.make_node("MatMul", ["ys", "wo"], ["o"], name="out"),
    ]
    axis1 = numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1")
    graph = helper.make_graph(
        nodes, "rnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 10])],
        [helper.make_tensor_value_info("o", TensorProto.FLOAT, [10, "N", 5])],
        [
            init("w1", 12, 4, 3), init("b1", 12), init("w2", 8, 12, 3), init("b2", 8),
            init("W", 1, 24, 8), init("R", 1, 24, 6), init("B", 1, 48), init("wo", 6, 5),
            numpy_helper.from_array(np.zeros((1, 1, 6), np.float32) + 0.1, "h0"), axis1,
        ],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    src = tmp_path / "rnn.onnx"
    onnx.save(model, str(src))
    out = tmp_path / "rnn_slim.onnx"
    result = surgeon.slim_onnx(src, 0.5, out)
    assert result.source.opaque == ["LSTM 'rnn' (no translation)"]
    assert result.params[1] < result.params[0]  # conv1's 12 channels: free of the LSTM
    lstm = next(n for n in onnx.load(str(out)).graph.node if n.op_type == "LSTM")
    assert list(lstm.input)[4] == "" and len(lstm.input) == 6
    x = torch.randn(1, 4, 10)  # the LSTM's initial state holds a batch of 1
    with torch.no_grad():
        want = result.model(x).numpy()
    _assert_same(_run(out, {"x": x.numpy()}), [want])


def _graph_file(path: Path, nodes, inputs, outputs, inits, opset: int = 17) -> Path:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _weights(name: str, *shape: int, seed: int = 0) -> onnx.TensorProto:
    rng = np.random.default_rng(seed)
    return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)


def _ints(name: str, values: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def test_sizes_read_from_a_free_dim_stay_free(tmp_path: Path) -> None:
    """SAME padding at stride 2, a gather of the last two steps, an equal split: what each
    computes depends on the input's sizes, so the slim file must too (checked at sizes the
    example does not have)."""
    f = TensorProto.FLOAT
    src = _graph_file(
        tmp_path / "free.onnx",
        [
            helper.make_node(
                "Conv", ["x", "w1"], ["c1"], name="down", strides=[2, 2], auto_pad="SAME_UPPER"
            ),  # fmt: skip
            helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
            helper.make_node("Conv", ["r1", "w2"], ["c2"], name="mix"),
            helper.make_node("Split", ["c2"], ["a", "b"], name="halves", axis=2, num_outputs=2),
            helper.make_node("Add", ["a", "b"], ["s"], name="sum"),
            helper.make_node("Gather", ["s", "last2"], ["g"], name="last", axis=3),
            helper.make_node("ReduceMean", ["g", "axes"], ["y"], name="mean", keepdims=0),
        ],
        [helper.make_tensor_value_info("x", f, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", f, ["N", 8])],
        [
            _weights("w1", 16, 3, 3, 3),
            _weights("w2", 8, 16, 1, 1),
            _ints("last2", [-2, -1]),
            _ints("axes", [2, 3]),
        ],  # fmt: skip
        opset=18,
    )
    out = tmp_path / "free_slim.onnx"
    surgeon.slim_onnx(src, 0.0, out, input_shape=(2, 3, 16, 20))
    for shape in [(2, 3, 16, 20), (3, 3, 15, 23), (1, 3, 28, 9)]:  # ceil(H / 2) even: halves
        x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
        _assert_same(_run(out, {"x": x}), _run(src, {"x": x}))
    half = surgeon.slim_onnx(src, 0.5, tmp_path / "free_half.onnx", input_shape=(2, 3, 16, 20))
    assert half.params[1] < half.params[0]
    x = torch.randn(3, 3, 15, 23)
    with torch.no_grad():
        want = half.model(x).numpy()
    _assert_same(_run(half.path, {"x": x.numpy()}), [want])


def test_an_unused_input_and_an_empty_cache_are_kept(tmp_path: Path) -> None:
    """An input the graph never reads stays an input of the slim file; a cache that is empty
    in the example (a concat of length 0) stays part of the graph."""
    f = TensorProto.FLOAT
    src = _graph_file(
        tmp_path / "cache.onnx",
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="up"),
            helper.make_node("Relu", ["h"], ["r"], name="relu"),
            helper.make_node("Concat", ["past", "r"], ["all"], name="append", axis=1),
            helper.make_node("MatMul", ["all", "w2"], ["y"], name="down"),
        ],
        [
            helper.make_tensor_value_info("x", f, ["N", "T", 8]),
            helper.make_tensor_value_info("past", f, ["N", "P", 16]),
            helper.make_tensor_value_info("unused", f, ["N", 4]),
        ],
        [helper.make_tensor_value_info("y", f, ["N", "L", 6])],
        [_weights("w1", 8, 16), _weights("w2", 16, 6)],
    )
    example = (torch.randn(2, 5, 8), torch.zeros(2, 0, 16), torch.randn(2, 4))
    out = tmp_path / "cache_slim.onnx"
    surgeon.slim_onnx(src, 0.0, out, example_inputs=example)
    proto = onnx.load(str(out))
    assert [i.name for i in proto.graph.input] == ["x", "past", "unused"]
    feed = {
        "x": np.ones((1, 3, 8), np.float32),
        "past": np.full((1, 2, 16), 0.5, np.float32),
        "unused": np.zeros((1, 4), np.float32),
    }
    _assert_same(_run(out, feed), _run(src, feed))
