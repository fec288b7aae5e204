"""Recurrent layers (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``): the hidden size prunes, with the
gate blocks, every layer and both directions together; ``proj_size`` is a space of its own.
Checked by numbers: ratio 0 against the original, exact parameter counts from the widths,
the slim model at another length and batch, onnxruntime parity of the export, MACs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import surgeon
from surgeon.cost import count_macs
from tests.helpers import assert_exact


class TokenLM(nn.Module):
    """Embedding -> recurrent layer -> a head per step (the recurrent language model)."""

    def __init__(self, kind: type[nn.RNNBase] = nn.LSTM, **kw) -> None:
        super().__init__()
        self.emb = nn.Embedding(60, 32)
        self.rnn = kind(32, 48, **kw)
        width = kw.get("proj_size") or 48
        self.head = nn.Linear(width * (2 if kw.get("bidirectional") else 1), 60)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(self.emb(ids))[0])


class GRUClassifier(nn.Module):
    """A conv front end, a two-layer batch-first GRU, a classifier on the last state."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(8, 32, 3, padding=1)
        self.rnn = nn.GRU(32, 40, num_layers=2, batch_first=True)
        self.fc = nn.Linear(40, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv(x)).transpose(1, 2)
        _, h = self.rnn(y)
        return self.fc(h[-1])


def _lstm_params(inp: int, hidden: int, layers: int, dirs: int, gates: int, proj: int = 0) -> int:
    width = proj or hidden
    total = 0
    for layer in range(layers):
        reads = inp if layer == 0 else width * dirs
        per = gates * hidden * (reads + width) + 2 * gates * hidden + (proj * hidden)
        total += dirs * per
    return total


@pytest.mark.parametrize(
    ("kind", "kw"),
    [
        (nn.LSTM, {}),
        (nn.LSTM, {"num_layers": 2, "bidirectional": True}),
        (nn.GRU, {"num_layers": 2, "batch_first": True}),
        (nn.RNN, {"nonlinearity": "relu", "batch_first": True}),
        (nn.LSTM, {"num_layers": 2, "proj_size": 24, "batch_first": True}),
    ],
    ids=["lstm", "lstm-2-layers-bidirectional", "gru-batch-first", "rnn-relu", "lstm-proj"],
)
def test_hidden_size_prunes_exactly(kind: type[nn.RNNBase], kw: dict, tmp_path) -> None:
    torch.manual_seed(0)
    model = TokenLM(kind, **kw).eval()
    batch_first = kw.get("batch_first", False)
    ids = torch.randint(0, 60, (3, 12) if batch_first else (12, 3))
    assert_exact(model, ids)  # ratio 0: the same function
    slim = surgeon.slim(model, 0.5, ids)
    assert type(slim) is TokenLM
    rnn = slim.rnn
    assert rnn.hidden_size == 24
    proj = kw.get("proj_size", 0)
    if proj:
        assert rnn.proj_size == 12
    dirs = 2 if kw.get("bidirectional") else 1
    gates = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}[kind]
    want = _lstm_params(rnn.input_size, 24, rnn.num_layers, dirs, gates, rnn.proj_size)
    assert sum(p.numel() for p in rnn.parameters()) == want
    assert rnn.input_size == 16  # the embedding's width, pruned with it
    # another length and batch than the example's
    other = torch.randint(0, 60, (5, 7) if batch_first else (7, 5))
    with torch.no_grad():
        out = slim(other)
    assert out.shape == model(other).shape
    assert count_macs(slim, ids) < 0.4 * count_macs(model, ids)
    if not proj:  # neither torch exporter writes an LSTM with projections
        surgeon.export(slim, ids, tmp_path / "rnn.onnx")  # onnxruntime parity checked inside


def test_gru_classifier_reads_the_last_state() -> None:
    torch.manual_seed(0)
    model = GRUClassifier().eval()
    x = torch.randn(4, 8, 20)
    assert_exact(model, x)
    slim = surgeon.slim(model, 0.5, x)
    assert (slim.conv.out_channels, slim.rnn.input_size, slim.rnn.hidden_size) == (16, 16, 20)
    assert slim.fc.in_features == 20
    with torch.no_grad():
        assert slim(torch.randn(2, 8, 9)).shape == (2, 5)


def test_dead_input_features_go_and_hidden_units_never_do() -> None:
    """An embedding feature no gate reads is removed at ratio 0; a hidden unit the head
    ignores stays (the recurrence reads it at the next step)."""
    torch.manual_seed(0)
    model = TokenLM(nn.LSTM).eval()
    with torch.no_grad():
        model.rnn.weight_ih_l0[:, :5] = 0  # features 0-4 are read by nothing
        model.head.weight[:, :7] = 0  # the head ignores units 0-6; the recurrence does not
    ids = torch.randint(0, 60, (12, 3))
    slim = assert_exact(model, ids)
    assert slim.rnn.input_size == 27
    assert slim.rnn.hidden_size == 48


def test_recurrent_macs_are_counted() -> None:
    x = torch.randn(5, 2, 32)  # 10 steps of sequences
    lstm = nn.LSTM(32, 48, num_layers=2, bidirectional=True).eval()
    per_step = 2 * 4 * 48 * (32 + 48) + 2 * 4 * 48 * (96 + 48)
    assert count_macs(lstm, x) == 10 * per_step
    assert count_macs(nn.GRU(32, 48).eval(), x) == 10 * 3 * 48 * (32 + 48)
