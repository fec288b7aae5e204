"""``surgeon.slim`` / ``surgeon.analyze`` as a whole (surgeon/api.py): a model with a scripted
part slims, saves, loads and exports with every parameter kept; non-finite example inputs and
weights are named before anything is blamed on the ratio, while infinities the model itself
outputs are kept."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

import surgeon
from surgeon.cost import count_params, metrics
from surgeon.errors import SurgeonInputError
from surgeon.models import create
from tests.helpers import ConvBN, assert_same, unused_head_net

X = torch.randn(2, 3, 12, 12)


@pytest.mark.parametrize("returns", ["auto", "graph"])
def test_a_scripted_submodule_keeps_every_parameter(returns, tmp_path):
    model = unused_head_net(torch.jit.script(ConvBN()))
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
    back = surgeon.load(tmp_path / "m.surgeon", unused_head_net(torch.jit.script(ConvBN())))
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
