"""Say when little was pruned: the warning, the diagnosis in gm.meta, the CLI section."""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

import surgeon
from surgeon.capture import trace
from surgeon.diagnose import dense_macs
from surgeon.keys import DIAGNOSIS_KEY
from surgeon.models import create


class Mostly(nn.Module):
    """A wide conv pair joined by an op with no rule (cumsum over channels): little prunes."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 64, 3, padding=1)
        self.b = nn.Conv2d(64, 64, 3, padding=1)
        self.c = nn.Conv2d(64, 4, 1)

    def forward(self, x):
        y = torch.relu(self.a(x)).cumsum(1)
        return self.c(torch.relu(self.b(y)).cumsum(1))


def test_dense_macs_counts_conv_and_linear_from_shapes():
    model, x = create("lenet5")
    gm = trace(model, x)
    # conv1 6x28x28 x (1x5x5), conv2 16x10x10 x (6x5x5), fc 120x400 + 84x120 + 10x84
    assert dense_macs(gm) == 6 * 28 * 28 * 25 + 16 * 100 * 150 + 120 * 400 + 84 * 120 + 10 * 84


def test_little_pruned_is_said_with_the_reasons(caplog):
    x = torch.randn(1, 3, 8, 8)
    with caplog.at_level(logging.WARNING):
        slim = surgeon.slim(Mostly().eval(), 0.5, x)
    found = slim.meta[DIAGNOSIS_KEY]
    assert found["mac_drop"] < 2 and found["expected"] == 4.0
    (top,) = found["top_blocked"]
    assert (
        top["reason"] == "no rule for method .cumsum()" and top["groups"] == 4
    )  # both sides of each cumsum
    assert "at node 'cumsum'" in top["first"]
    assert "little was pruned" in caplog.text and "cumsum" in caplog.text


def test_a_model_that_prunes_well_says_nothing(caplog):
    model, x = create("resnet18")
    with caplog.at_level(logging.WARNING):
        slim = surgeon.slim(model, 0.5, x)
    assert slim.meta[DIAGNOSIS_KEY] is None and "little was pruned" not in caplog.text


class Scaled(nn.Module):
    """forward(x, **kwargs): a keyword input multiplies the hidden channels, so it carries
    them and they must keep their size: the only blocker is a model input."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3)
        self.b = nn.Conv2d(8, 4, 3)

    def forward(self, x, **kwargs):
        return self.b(torch.relu(self.a(x)) * kwargs["scale"])


def test_an_input_that_carries_channels_is_named_when_nothing_else_blocks(caplog):
    example = {"x": torch.randn(1, 3, 12, 12), "scale": torch.rand(1, 8, 1, 1)}
    with caplog.at_level(logging.WARNING):
        slim = surgeon.slim(Scaled().eval(), 0.5, example)
    reasons = [r["reason"] for r in slim.meta[DIAGNOSIS_KEY]["top_blocked"]]
    assert "model input [scale dim 1]" in reasons
    assert "model input [scale dim 1] (1 group)" in caplog.text
    assert "the prunable groups are small" not in caplog.text
