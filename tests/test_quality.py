"""Pruning quality on real data: scikit-learn's digits with the zoo's DigitsNet. (What
compensation gains is pinned in tests/test_compensate_pass.py, the iterative pipeline in
tests/test_schedule.py, on the same trained baseline.)"""

from __future__ import annotations

import pytest
import torch.nn.functional as F

import surgeon
from tests.helpers import digit_batches, digits_test_accuracy

pytest.importorskip("sklearn", reason="the digits data ships with scikit-learn")

from surgeon.digits import fit  # noqa: E402


@pytest.mark.parametrize("importance", ["l2", "taylor"])
def test_slim_then_finetune_keeps_digits_accuracy(digits_trained, importance):
    model, data = digits_trained
    x = data.x_test[:1]
    base = digits_test_accuracy(model, data)
    assert base >= 95.0
    slim = surgeon.slim(
        model, 0.5, x, importance=importance, data=digit_batches(data), loss_fn=F.cross_entropy
    )
    reduction = surgeon.count_macs(model, x) / surgeon.count_macs(slim, x)
    assert reduction >= 3.0
    fit(slim, data, epochs=2, lr=1e-3, seed=1)
    tuned = digits_test_accuracy(slim, data)
    print(f"{importance}: {base:.2f}% -> {tuned:.2f}% at {reduction:.2f}x fewer MACs")
    assert base - tuned <= 1.5
