"""Pruning quality on real data: scikit-learn's digits with the zoo's DigitsNet."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import surgeon

pytest.importorskip("sklearn", reason="the digits data ships with scikit-learn")

from surgeon.digits import accuracy, fit  # noqa: E402


def _batches(data, n: int = 4, size: int = 256):
    return [
        (data.x_train[i : i + size], data.y_train[i : i + size]) for i in range(0, n * size, size)
    ]


def _test_accuracy(model, data) -> float:
    return accuracy(model, data.x_test, data.y_test)


@pytest.mark.parametrize("importance", ["l2", "taylor"])
def test_slim_then_finetune_keeps_digits_accuracy(digits_trained, importance):
    model, data = digits_trained
    x = data.x_test[:1]
    base = _test_accuracy(model, data)
    assert base >= 95.0
    slim = surgeon.slim(
        model, 0.5, x, importance=importance, data=_batches(data), loss_fn=F.cross_entropy
    )
    reduction = surgeon.count_macs(model, x) / surgeon.count_macs(slim, x)
    assert reduction >= 3.0
    fit(slim, data, epochs=2, lr=1e-3, seed=1)
    tuned = _test_accuracy(slim, data)
    print(f"{importance}: {base:.2f}% -> {tuned:.2f}% at {reduction:.2f}x fewer MACs")
    assert base - tuned <= 1.5


@pytest.mark.parametrize("importance", ["l2", "taylor"])
def test_compensation_raises_zero_shot_digits_accuracy(digits_trained, importance):
    model, data = digits_trained
    x, batches = data.x_test[:1], _batches(data)
    kwargs = {"importance": importance, "data": batches, "loss_fn": F.cross_entropy}
    with_it = _test_accuracy(surgeon.slim(model, 0.3, x, **kwargs), data)
    without = _test_accuracy(surgeon.slim(model, 0.3, x, compensate=False, **kwargs), data)
    print(f"{importance} at ratio 0.3, zero-shot: {with_it:.2f}% compensated, {without:.2f}% not")
    assert with_it >= without + 10


def test_compensation_from_norm_statistics_alone_helps_one_layer(digits_trained):
    """Without data, the removed channels' means come from block2's BN through its ReLU."""
    model, data = digits_trained
    x = data.x_test[:1]
    only_block2 = ["features.block1", "features.block4"]  # protects every other group
    with_it = surgeon.slim(model, 0.5, x, ignore=only_block2)
    without = surgeon.slim(model, 0.5, x, ignore=only_block2, compensate=False)
    assert with_it.features.block2.conv.out_channels == 32
    assert with_it.features.block3.conv.out_channels == 128
    a, b = _test_accuracy(with_it, data), _test_accuracy(without, data)
    print(f"block2 halved, zero-shot: {a:.2f}% compensated, {b:.2f}% not")
    assert a >= b + 10


def test_iterative_agp_with_distillation_and_level_prune_pipeline(digits_trained):
    """The schedule machinery on real data: AGP in 3 steps with a distillation fine-tune each
    step, then unstructured pruning whose dead channels slim(0) removes exactly."""
    model, data = digits_trained
    teacher = copy.deepcopy(model)
    x = data.x_test[:1]

    def finetune(m, step):
        fit(m, data, epochs=0.5, lr=1e-3, seed=step, teacher=teacher)

    slim = surgeon.prune_iteratively(model, 0.5, x, steps=3, schedule="agp", finetune=finetune)
    assert [h["step"] for h in slim.meta["surgeon.history"]] == [0, 1, 2]
    assert _test_accuracy(slim, data) >= 95.0
    sparse = surgeon.level_prune(copy.deepcopy(slim), 0.6)
    m = surgeon.metrics(sparse, x, reference=model)
    assert m.nonzero_params < 0.45 * surgeon.count_params(slim)
    smaller = surgeon.slim(sparse, 0.0, x)
    with torch.no_grad():
        torch.testing.assert_close(smaller(data.x_test), sparse(data.x_test), rtol=1e-4, atol=1e-4)
    assert surgeon.count_params(smaller) <= surgeon.count_params(sparse)
