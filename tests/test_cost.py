"""Counting work (surgeon/cost.py: ``count_macs`` and the FLOPs of ``metrics``): eval fast
paths are counted as the work they do, counting never moves batch-norm statistics, a model
that fails under no_grad is counted with grad, and work the counter misses is counted from the
modules. (``metrics`` and ``level_prune`` themselves: tests/test_metrics.py.)"""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn as nn

from surgeon.cost import count_macs, metrics
from surgeon.models import create


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
