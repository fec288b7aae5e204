"""Issue 15's core items: nothing the tracer cannot see is lost or miscounted, models people
really write (scripted parts, parametrized weights, unused heads) slim or say why, and every
message names the real cause."""

from __future__ import annotations

import logging

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.fx as fx
import torch.nn as nn
from torch.nn.utils import parametrizations

import surgeon
from surgeon.cost import count_macs, count_params, metrics
from surgeon.errors import SurgeonExportError, SurgeonInputError, SurgeonTraceError
from surgeon.models import create
from surgeon.passes import PropagatePass
from tests.helpers import assert_same


class Inner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        return self.bn(self.conv(x))


class Net(nn.Module):
    """conv -> [inner] -> conv -> head, with an auxiliary head forward never calls in eval."""

    def __init__(self, inner: nn.Module | None = None) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.inner = inner if inner is not None else Inner()
        self.b = nn.Conv2d(8, 16, 3, padding=1)
        self.head = nn.Linear(16, 4)
        self.aux = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8))  # unused: stays whole
        self.register_buffer("unused_table", torch.arange(5.0))

    def forward(self, x):
        x = self.inner(torch.relu(self.a(x)))
        return self.head(torch.relu(self.b(x)).mean((2, 3)))


X = torch.randn(2, 3, 12, 12)


def _net(inner: nn.Module | None = None) -> Net:
    torch.manual_seed(0)
    return Net(inner).eval()


@pytest.mark.parametrize("returns", ["auto", "graph"])
def test_a_scripted_submodule_keeps_every_parameter(returns, tmp_path):
    model = _net(torch.jit.script(Inner()))
    slim0 = surgeon.slim(model, 0.0, X, returns=returns)
    assert list(slim0.state_dict()) == list(model.state_dict())
    assert count_params(slim0) == count_params(model)
    assert metrics(slim0, X).params == metrics(model, X).params
    with torch.no_grad():
        assert_same(slim0(X), model(X), 1e-6)
    slim = surgeon.slim(model, 0.5, X, returns=returns)
    reasons = str(surgeon.analyze(model, X))
    assert "TorchScript module, opaque to torch.fx" in reasons
    # its channels stay, the rest prunes: b's outputs (16 -> 8)
    assert slim.inner.conv.weight.shape == (8, 8, 3, 3) and slim.b.weight.shape[0] == 8
    # its parameters are the slim model's own leaves (a deep copy of a ScriptModule gives
    # clones with a grad_fn), so a fine-tune step updates them
    inner = dict(slim.inner.named_parameters())
    assert all(p.is_leaf and isinstance(p, nn.Parameter) for p in inner.values())
    slim(X).square().sum().backward()
    assert all(p.grad is not None for p in inner.values())
    slim.zero_grad()
    surgeon.save(slim, tmp_path / "m.surgeon")
    back = surgeon.load(tmp_path / "m.surgeon", _net(torch.jit.script(Inner())))
    assert all(p.is_leaf for p in back.parameters())
    assert count_params(back) == count_params(slim)
    with torch.no_grad():
        assert_same(back(X), slim(X), 1e-6)
        want = slim(X).numpy()
    # torch.onnx cannot trace into a scripted submodule of a Python module; export traces the
    # whole model first (onnxruntime parity at another batch is checked inside export too)
    path = surgeon.export(slim, X, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"input": X.numpy()})[0], want, atol=1e-5)


def test_the_graph_form_keeps_parameters_and_buffers_forward_never_reads(tmp_path):
    model = _net()
    graph = surgeon.slim(model, 0.0, X, returns="graph")
    assert isinstance(graph, fx.GraphModule)
    assert list(graph.state_dict()) == list(model.state_dict())  # aux.*, unused_table
    assert count_params(graph) == count_params(model)
    slim = surgeon.slim(model, 0.5, X, returns="graph")
    assert "aux.0.weight" in slim.state_dict() and "unused_table" in slim.state_dict()
    surgeon.save(slim, tmp_path / "g.surgeon")
    back = surgeon.load(tmp_path / "g.surgeon", _net())
    assert list(back.state_dict()) == list(slim.state_dict())


@pytest.mark.parametrize("how", ["instance", "name"])
def test_a_leaf_module_instance_or_name_is_honoured(how):
    model = _net()
    leaf = model.inner if how == "instance" else "inner"
    graph = surgeon.slim(model, 0.5, X, leaf_modules=[leaf], returns="graph")
    called = [n.target for n in graph.graph.nodes if n.op == "call_module"]
    assert "inner" in called and "inner.conv" not in called  # not traced into
    assert graph.inner.conv.weight.shape == (8, 8, 3, 3)  # its channels stay
    assert graph.meta["surgeon.plan"]["leaf_modules"] == ["inner"]
    slim = surgeon.slim(model, 0.5, X, leaf_modules=[leaf])
    assert slim.inner.conv.weight.shape == (8, 8, 3, 3)


@pytest.mark.parametrize("bad", [nn.Conv2d(3, 3, 1), "no.such.module", 3])
def test_a_leaf_that_is_neither_a_type_nor_a_submodule_is_refused(bad):
    with pytest.raises(SurgeonInputError, match="neither a torch.nn.Module type nor a submodule"):
        surgeon.slim(_net(), 0.5, X, leaf_modules=[bad])
    with pytest.raises(SurgeonInputError, match="leaf_modules holds"):
        surgeon.analyze(_net(), X, leaf_modules=[bad])


def _encoder() -> nn.Module:
    torch.manual_seed(0)
    return nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2)


class MHA(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)

    def forward(self, x):
        return self.attn(x, x, x)[0]


def _attention_macs(layers: int, hidden: int, tokens: int, batch: int, ff: int | None) -> int:
    per = 3 * hidden * hidden + hidden * hidden + 2 * tokens * hidden  # in/out projections, QK, AV
    per += 2 * hidden * ff if ff else 0
    return layers * per * tokens * batch


@pytest.mark.parametrize(
    "make, expected",
    [(_encoder, _attention_macs(2, 32, 10, 2, 64)), (MHA, _attention_macs(1, 32, 10, 2, None))],
)
def test_eval_fast_paths_are_counted_as_the_work_they_do(make, expected):
    x = torch.randn(2, 10, 32)
    model = make().eval()
    assert count_macs(model, x) == expected
    assert metrics(model, x).flops == 2 * expected
    model.train()
    assert count_macs(model, x) == expected and model.training  # the mode is given back


def test_count_macs_and_metrics_never_move_batch_norm_statistics():
    model, x = create("digits_cnn")
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    count_macs(model, torch.randn(4, *x.shape[1:]))
    metrics(model, torch.randn(4, *x.shape[1:]))
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


class NeedsGrad(nn.Module):
    """Fails under no_grad as FlopCounterMode's module tracker does on some timm models."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        if not torch.is_grad_enabled():
            raise RuntimeError("Expected gradient function to be set")
        return self.fc(x)


def test_a_model_the_counter_fails_under_no_grad_is_counted_with_grad():
    assert count_macs(NeedsGrad(), torch.randn(3, 8)) == 3 * 64
    assert metrics(NeedsGrad(), torch.randn(3, 8)).flops == 2 * 3 * 64


class Hidden(nn.Module):
    """A Linear whose matmul the counter cannot see (it runs outside the dispatcher's view)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 16)

    def forward(self, x):
        return self.fc(x)


def test_work_the_counter_misses_is_counted_from_the_modules(monkeypatch, caplog):
    import surgeon.cost as cost

    def blind(model, args, kwargs, calls):
        model(*args, **kwargs)  # the hooks record the Linear; the counter sees nothing
        return 0

    monkeypatch.setattr(cost, "_counted", blind)
    with caplog.at_level(logging.WARNING):
        assert count_macs(Hidden(), torch.randn(3, 8)) == 3 * 8 * 16
    assert "FlopCounterMode counted 0 FLOPs" in caplog.text


def _wn_net(kind: str) -> nn.Module:
    torch.manual_seed(0)
    norm = {"weight": parametrizations.weight_norm, "spectral": parametrizations.spectral_norm}
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        norm[kind](nn.Conv2d(8, 8, 3, padding=1)),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    ).eval()


@pytest.mark.parametrize("kind", ["weight", "spectral"])
def test_a_parametrized_weight_keeps_its_channels_and_says_why(kind):
    model = _wn_net(kind)
    keys = list(model.state_dict())
    slim0 = surgeon.slim(model, 0.0, X)
    with torch.no_grad():
        assert_same(slim0(X), model(X), 1e-6)
    assert list(slim0.state_dict()) == keys
    slim = surgeon.slim(model, 0.5, X)
    assert list(slim.state_dict()) == keys
    assert slim[2].weight.shape == (8, 8, 3, 3)  # the parametrized conv stays whole
    assert slim[4].weight.shape == (8, 8, 3, 3)  # the next group still prunes
    assert "is parametrized" in str(surgeon.analyze(model, X))


def test_old_style_weight_norm_is_named_with_the_way_out():
    model = _wn_net("weight")
    model[2] = torch.nn.utils.weight_norm(nn.Conv2d(8, 8, 3, padding=1))
    model(X)  # the hook's computed weight cannot be deep-copied
    with pytest.raises(SurgeonInputError, match="parametrizations.weight_norm"):
        surgeon.slim(model, 0.5, X)
    slim = surgeon.slim(model, 0.5, X, inplace=True)  # no copy: the hook's conv stays whole
    assert slim[2].weight_v.shape == (8, 8, 3, 3)


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 8, 3)
        self.aux = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = self.body(x)
        if self.training:
            return y, self.aux(y)
        return y


def test_the_trace_check_compares_the_output_count():
    model = TwoHeads().train()
    with pytest.raises(SurgeonTraceError, match=r"returns 2 tensor\(s\) where the model returns 1"):
        surgeon.slim(model, 0.5, X)
    with pytest.raises(SurgeonTraceError, match="call model.eval"):
        surgeon.slim(model, 0.5, X)
    assert isinstance(surgeon.slim(model.eval(), 0.5, X), TwoHeads)


def test_non_finite_inputs_and_weights_are_named_not_blamed_on_the_ratio():
    model, x = create("digits_cnn")
    nan = x.clone()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(SurgeonInputError, match="NaN values in example input 0"):
        surgeon.slim(model, 0.5, nan)
    with pytest.raises(SurgeonInputError, match="NaN values in example input 'x'"):
        surgeon.slim(model, 0.5, {"x": nan})
    with pytest.raises(SurgeonInputError, match="infinite values in example input 0"):
        surgeon.slim(model, 0.5, x * float("inf"))
    bad, _ = create("digits_cnn")
    with torch.no_grad():
        bad.features.block1.conv.weight[0, 0, 0, 0] = float("inf")
    with pytest.raises(SurgeonInputError, match="parameter 'features.block1.conv.weight'"):
        surgeon.slim(bad, 0.5, x)


class MaskedScores(nn.Module):
    """Outputs -inf where a mask buffer says so: infinities that are the model's own."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, 4)
        self.register_buffer("mask", torch.tensor([0.0, 0.0, float("-inf"), 0.0]))

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3))) + self.mask


def test_infinities_the_model_itself_outputs_are_kept():
    model = MaskedScores().eval()
    slim = surgeon.slim(model, 0.5, X)
    with torch.no_grad():
        assert torch.equal(torch.isinf(slim(X)), torch.isinf(model(X)))


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


def test_propagate_says_when_it_stops_at_its_round_limit(caplog):
    from surgeon.api import _slim  # noqa: F401 - the passes run through slim's own set-up
    from surgeon.options import SlimOptions

    model, x = create("resnet18", input_shape=(1, 3, 32, 32))
    with torch.no_grad():
        model.layer1[0].conv1.weight[:4] = 0  # dead filters: one round of propagation
    original = surgeon.api.surgery_passes

    def limited(options: SlimOptions):
        passes = original(options)
        return [PropagatePass(max_rounds=1) if isinstance(p, PropagatePass) else p for p in passes]

    with pytest.MonkeyPatch.context() as mp, caplog.at_level(logging.WARNING):
        mp.setattr(surgeon.api, "surgery_passes", limited)
        slim = surgeon.slim(model, 0.0, x)
    assert "PropagatePass stopped at its round limit (1 rounds)" in caplog.text
    with torch.no_grad():
        assert_same(slim(x), model(x), 1e-5)
