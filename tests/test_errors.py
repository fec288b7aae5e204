"""Bad input gets a clear error naming the value and the way out. (Errors of tracing and of
example inputs: tests/test_capture.py.)"""

from __future__ import annotations

import pytest
import torch.nn as nn

import surgeon
from surgeon.errors import SurgeonInputError
from surgeon.models import create


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, float("nan"), "0.5", True])
def test_ratio_out_of_range(ratio):
    model, x = create("lenet5")
    with pytest.raises(ValueError, match="ratio="):
        surgeon.slim(model, ratio, x)


def test_bad_options():
    model, x = create("lenet5")
    with pytest.raises(SurgeonInputError, match="importance='l3'"):
        surgeon.slim(model, 0.5, x, importance="l3")
    with pytest.raises(SurgeonInputError, match="scope='everywhere'"):
        surgeon.slim(model, 0.5, x, scope="everywhere")
    with pytest.raises(SurgeonInputError, match="round_to=0"):
        surgeon.slim(model, 0.5, x, round_to=0)
    with pytest.raises(SurgeonInputError, match="not a submodule"):
        surgeon.slim(model, 0.5, x, ignore=[nn.Linear(2, 2)])
    with pytest.raises(SurgeonInputError, match="torch.nn.Module"):
        surgeon.slim(lambda t: t, 0.5, x)
