"""Importance criteria (surgeon/importance.py) on small models with hand-computed
expectations: l1 / l2, bn_scale, random, and the data criteria (taylor, grad) with their
input checks."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import surgeon
from surgeon import importance
from surgeon.errors import SurgeonInputError
from surgeon.importance import class_scores, collect_stats, power_sums
from tests.helpers import MLP, convnet, mlp_data


def _hidden_group(model: nn.Module, x: torch.Tensor):
    graph = surgeon.analyze(model, x)
    (group,) = [g for g in graph.prunable_groups() if g.n_classes == model.fc1.out_features]
    return graph, group


def test_grad_scores_equal_hand_computed_w_times_grad():
    torch.manual_seed(0)
    model, data = MLP(bias=False), mlp_data()
    graph, group = _hidden_group(model, data[0][0])
    stats = collect_stats(graph.gm, graph, data, F.cross_entropy, grads=True)
    got = class_scores(graph.gm, group, "grad", stats)
    model.zero_grad()
    for x, y in data:
        F.cross_entropy(model(x), y).backward()
    w1, w2 = model.fc1.weight, model.fc2.weight
    want = (w1 * w1.grad).abs().sum(1) + (w2 * w2.grad).abs().sum(0)
    np.testing.assert_allclose(got, want.detach().double().numpy(), rtol=1e-5)


def test_taylor_scores_equal_hand_computed_activation_times_gradient():
    torch.manual_seed(1)
    model, data = MLP(), mlp_data(1)
    graph, group = _hidden_group(model, data[0][0])
    stats = collect_stats(graph.gm, graph, data, F.cross_entropy, taylor=True)
    got = class_scores(graph.gm, group, "taylor", stats)
    total, count = torch.zeros(model.fc1.out_features, dtype=torch.float64), 0
    for x, y in data:
        h = torch.relu(model.fc1(x))
        h.retain_grad()
        F.cross_entropy(model.fc2(h), y).backward()
        total += (h * h.grad).detach().abs().sum(0).double()  # per example |a * g|, summed
        count += len(x)
    want = (total / count).numpy()
    np.testing.assert_allclose(got, want / np.linalg.norm(want), rtol=1e-5)
    assert got.argmin() == want.argmin()


def test_taylor_slim_removes_the_units_the_hand_scores_rank_lowest():
    torch.manual_seed(2)
    model, data = MLP(hidden=10), mlp_data(2)
    graph, group = _hidden_group(model, data[0][0])
    stats = collect_stats(graph.gm, graph, data, F.cross_entropy, taylor=True)
    scores = class_scores(graph.gm, group, "taylor", stats)
    slim = surgeon.slim(
        model,
        0.3,
        data[0][0],
        importance="taylor",
        data=data,
        loss_fn=F.cross_entropy,
        compensate=False,
    )
    keep = np.sort(np.argsort(scores, kind="stable")[3:])
    torch.testing.assert_close(slim.fc1.weight, model.fc1.weight[torch.as_tensor(keep)])


def test_bn_scale_removes_the_channels_with_smallest_gamma():
    model, x = convnet()
    with torch.no_grad():
        model.bn1.weight.copy_(torch.tensor([0.9, 0.05, 0.8, -0.02, 0.7, 0.6, 0.03, 0.5]))
    slim = surgeon.slim(model, 0.375, x, importance="bn_scale")
    torch.testing.assert_close(slim.bn1.weight, torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5]))


def test_random_is_a_seeded_baseline_unlike_l2():
    model, x = convnet()
    a = surgeon.slim(model, 0.5, x, importance="random")
    b = surgeon.slim(model, 0.5, x, importance="random")
    c = surgeon.slim(model, 0.5, x, importance="l2")
    torch.testing.assert_close(a.conv1.weight, b.conv1.weight)
    assert a.conv1.weight.shape == c.conv1.weight.shape
    assert not torch.equal(a.conv2.weight, c.conv2.weight)


@pytest.mark.parametrize("criterion", ["l1", "l2", "bn_scale", "random", "taylor", "grad"])
def test_every_criterion_gives_the_same_sizes_and_a_working_model(criterion):
    model, x = convnet()
    data = [(x, torch.tensor([0, 3]))]
    slim = surgeon.slim(model, 0.5, x, importance=criterion, data=data, loss_fn=F.cross_entropy)
    assert (slim.conv1.out_channels, slim.conv2.out_channels) == (4, 6)
    assert slim(x).shape == model(x).shape


@pytest.mark.parametrize("criterion", ["taylor", "grad"])
def test_data_criteria_without_data_name_what_is_missing(criterion):
    model, x = convnet()
    with pytest.raises(SurgeonInputError, match=r"needs data= and loss_fn=.*DataLoader"):
        surgeon.slim(model, 0.5, x, importance=criterion)
    with pytest.raises(SurgeonInputError, match=r"needs loss_fn="):
        surgeon.slim(model, 0.5, x, importance=criterion, data=[(x, torch.tensor([0, 1]))])


@pytest.mark.parametrize(
    ("data", "loss_fn", "message"),
    [
        (torch.zeros(2, 3), F.cross_entropy, "iterable of \\(input, target\\) batches"),
        ([torch.zeros(2, 3, 8, 8)], F.cross_entropy, "batch 0 is a Tensor"),
        ([], F.cross_entropy, "yielded no batches"),
        (None, "ce", "not callable"),
        ("x", lambda out, t: out, "iterable of"),
    ],
)
def test_bad_data_or_loss_gets_a_clear_error(data, loss_fn, message):
    model, x = convnet()
    data = [(x, torch.tensor([0, 1]))] if data is None else data
    with pytest.raises(SurgeonInputError, match=message):
        surgeon.slim(model, 0.5, x, importance="taylor", data=data, loss_fn=loss_fn)


def test_loss_that_is_not_a_scalar_is_rejected():
    model, x = convnet()
    with pytest.raises(SurgeonInputError, match="scalar tensor"):
        surgeon.slim(
            model,
            0.5,
            x,
            importance="grad",
            data=[(x, torch.tensor([0, 1]))],
            loss_fn=lambda out, t: out,
        )


def test_scoring_on_data_leaves_the_model_untouched():
    model, x = convnet()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    surgeon.slim(
        model,
        0.5,
        x,
        importance="taylor",
        data=[(x, torch.tensor([0, 1]))],
        loss_fn=F.cross_entropy,
    )
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())


@settings(max_examples=60)
@given(
    shape=st.lists(st.integers(0, 6), min_size=1, max_size=4),
    data=st.data(),
    p=st.sampled_from([1, 2]),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    scale=st.sampled_from([1.0, 1e-4, 300.0]),
)
def test_power_sums_equal_the_plain_sum_over_the_other_dims(shape, data, p, dtype, scale):
    # a chunk size of one row forces the chunked path through every row; float16 weights of
    # 1e-4 square to 0 and of 300 to inf in their own dtype; a zero-size dim sums to zeros
    dim = data.draw(st.integers(0, len(shape) - 1))
    t = torch.randn(shape, generator=torch.Generator().manual_seed(len(shape) + dim))
    t = (t * scale).to(dtype)
    others = [d for d in range(t.dim()) if d != dim]
    want = t.double().abs().pow(p)
    want = want.sum(others) if others else want
    torch.testing.assert_close(power_sums(t, dim, p), want, rtol=1e-5, atol=0)
    importance._CHUNK, old = 1, importance._CHUNK
    try:
        torch.testing.assert_close(power_sums(t, dim, p), want, rtol=1e-5, atol=0)
    finally:
        importance._CHUNK = old


# -- activation and fluctuation ---------------------------------------------------------------
def _calibrated_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    data = [(torch.randn(16, 6), torch.zeros(16, dtype=torch.long)) for _ in range(2)]
    return model, data


@pytest.mark.parametrize("criterion", ["activation", "fluctuation"])
def test_calibrated_scores_weigh_each_channel_by_its_activations(criterion):
    """The hidden group's scores at fc2: activation, sum_i |W2[i, j]| x rms(h_j);
    fluctuation, sum_i W2[i, j]^2 x var(h_j) (the population variance over the data)."""
    from surgeon.capture import capture
    from surgeon.graph import build_channel_graph

    model, data = _calibrated_mlp()
    gm = capture(copy.deepcopy(model), data[0][0]).gm
    graph = build_channel_graph(gm)
    stats = collect_stats(gm, graph, data, None, squares=True, means=True)
    hidden = next(g for g in graph.prunable_groups() if g.n_classes == 8)
    got = class_scores(gm, hidden, criterion, stats)
    with torch.no_grad():
        h = torch.cat([model[1](model[0](x)) for x, _ in data]).double()
        w = model[2].weight.double()
        if criterion == "activation":
            want = w.abs().sum(0) * h.pow(2).mean(0).sqrt()
        else:
            want = w.pow(2).sum(0) * h.var(0, unbiased=False)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("criterion", ["activation", "fluctuation"])
def test_calibrated_criteria_remove_the_channel_that_never_fires(criterion):
    """A hidden unit with the largest weights but no activation on the data goes under the
    calibrated criteria; weight magnitude alone keeps it."""
    model, data = _calibrated_mlp()
    with torch.no_grad():
        model[0].weight[3] = 0.0
        model[0].bias[3] = -5.0  # ReLU: never fires
        model[2].weight[:, 3] = 10.0  # the largest weights read it
        model[0].weight[3, 0] = 1e-3  # not dead: still computed from the input
    x = data[0][0]

    def removed(**settings):
        slim = surgeon.slim(model, 0.25, x, compensate=False, returns="graph", **settings)
        return slim.meta["surgeon.plan"]["removed"]

    assert any(3 in v for v in removed(importance=criterion, data=data).values())
    assert not any(3 in v for v in removed(importance="l2").values())


def test_fluctuation_keeps_a_busy_channel_that_activation_would_drop_for_its_constant():
    """A channel that is large but nearly constant on the data changes little when replaced
    by its mean (compensation folds the mean into fc2's bias): fluctuation removes it, and the
    slim model computes nearly what the original did; activation keeps it for its size."""
    model, data = _calibrated_mlp()
    with torch.no_grad():
        model[0].weight[5] = 1e-4
        model[0].bias[5] = 4.0  # about 4 after the ReLU: big, barely varies
    x = data[0][0]
    slim = surgeon.slim(model, 0.125, x, importance="fluctuation", data=data, returns="graph")
    assert any(5 in v for v in slim.meta["surgeon.plan"]["removed"].values())
    torch.testing.assert_close(slim(x), model(x), atol=1e-2, rtol=0)
    active = surgeon.slim(model, 0.125, x, importance="activation", data=data, returns="graph")
    assert not any(5 in v for v in active.meta["surgeon.plan"]["removed"].values())


@pytest.mark.parametrize("criterion", ["activation", "fluctuation"])
def test_calibrated_criteria_need_data_but_no_loss(criterion):
    model, data = _calibrated_mlp()
    with pytest.raises(SurgeonInputError, match=f"importance='{criterion}'.*needs data="):
        surgeon.slim(model, 0.5, data[0][0], importance=criterion)
    slim = surgeon.slim(model, 0.5, data[0][0], importance=criterion, data=data)
    assert slim(data[0][0]).shape == (16, 3)
