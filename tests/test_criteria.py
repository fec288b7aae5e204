"""Importance criteria, compensation, schedules, rewind and distillation, on small models with
hand-computed expectations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import surgeon
from surgeon.errors import SurgeonInputError
from surgeon.importance import class_scores, collect_stats
from surgeon.passes.compensate import expected_mean
from tests.helpers import assert_same, randomize_norms


class MLP(nn.Module):
    def __init__(self, d_in: int = 6, hidden: int = 8, d_out: int = 3, bias: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, d_out, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class ConvNet(nn.Module):
    """conv-bn-relu x2, pooled, linear head: three prunable spaces in two groups."""

    def __init__(self, c1: int = 8, c2: int = 12) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, c1, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c2)
        self.fc = nn.Linear(c2, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _mlp_data(seed: int = 0, batches: int = 3, n: int = 16):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g))
        for _ in range(batches)
    ]


def _convnet(seed: int = 0) -> tuple[ConvNet, torch.Tensor]:
    torch.manual_seed(seed)
    model = ConvNet().eval()
    randomize_norms(model, seed)
    return model, torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def _hidden_group(model: nn.Module, x: torch.Tensor):
    graph = surgeon.analyze(model, x)
    (group,) = [g for g in graph.prunable_groups() if g.n_classes == model.fc1.out_features]
    return graph, group


# -- criteria ------------------------------------------------------------------------------
def test_grad_scores_equal_hand_computed_w_times_grad():
    torch.manual_seed(0)
    model, data = MLP(bias=False), _mlp_data()
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
    model, data = MLP(), _mlp_data(1)
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
    model, data = MLP(hidden=10), _mlp_data(2)
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
    model, x = _convnet()
    with torch.no_grad():
        model.bn1.weight.copy_(torch.tensor([0.9, 0.05, 0.8, -0.02, 0.7, 0.6, 0.03, 0.5]))
    slim = surgeon.slim(model, 0.375, x, importance="bn_scale")
    torch.testing.assert_close(slim.bn1.weight, torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5]))


def test_random_is_a_seeded_baseline_unlike_l2():
    model, x = _convnet()
    a = surgeon.slim(model, 0.5, x, importance="random")
    b = surgeon.slim(model, 0.5, x, importance="random")
    c = surgeon.slim(model, 0.5, x, importance="l2")
    torch.testing.assert_close(a.conv1.weight, b.conv1.weight)
    assert a.conv1.weight.shape == c.conv1.weight.shape
    assert not torch.equal(a.conv2.weight, c.conv2.weight)


@pytest.mark.parametrize("criterion", ["l1", "l2", "bn_scale", "random", "taylor", "grad"])
def test_every_criterion_gives_the_same_sizes_and_a_working_model(criterion):
    model, x = _convnet()
    data = [(x, torch.tensor([0, 3]))]
    slim = surgeon.slim(model, 0.5, x, importance=criterion, data=data, loss_fn=F.cross_entropy)
    assert (slim.conv1.out_channels, slim.conv2.out_channels) == (4, 6)
    assert slim(x).shape == model(x).shape


@pytest.mark.parametrize("criterion", ["taylor", "grad"])
def test_data_criteria_without_data_name_what_is_missing(criterion):
    model, x = _convnet()
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
    model, x = _convnet()
    data = [(x, torch.tensor([0, 1]))] if data is None else data
    with pytest.raises(SurgeonInputError, match=message):
        surgeon.slim(model, 0.5, x, importance="taylor", data=data, loss_fn=loss_fn)


def test_loss_that_is_not_a_scalar_is_rejected():
    model, x = _convnet()
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
    model, x = _convnet()
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


# -- compensation ----------------------------------------------------------------------------
def test_expected_mean_of_bn_relu_is_the_rectified_gaussian_mean():
    model, x = _convnet()
    graph = surgeon.analyze(model, x)
    relu = next(n for n in graph.gm.graph.nodes if n.name == "relu")
    got = expected_mean(graph.gm, relu, 1)
    mu, sigma = model.bn1.bias.double(), model.bn1.weight.double().abs()
    z = mu / sigma
    phi = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
    want = mu * cdf + sigma * phi
    np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-5, atol=1e-7)


def test_expected_mean_through_pool_and_flatten_and_unknown_producers():
    model, x = _convnet()
    graph = surgeon.analyze(model, x)
    nodes = {n.name: n for n in graph.gm.graph.nodes}
    flat = expected_mean(graph.gm, nodes["flatten"], 1)
    relu1 = expected_mean(graph.gm, nodes["relu_1"], 1)
    np.testing.assert_allclose(flat, relu1)
    assert expected_mean(graph.gm, nodes["conv1"], 1) is None  # no norm: not computable


def test_compensation_from_data_keeps_the_consumer_mean_exactly():
    """For a Linear consumer, folding the measured means keeps its mean output over the same
    data exactly (the fold is linear); without it the mean moves."""
    torch.manual_seed(3)
    model = MLP(hidden=10).eval()
    with torch.no_grad():
        model.fc1.bias.add_(1.0)  # most units active: a clear mean to lose
    data = _mlp_data(3)
    xs = torch.cat([x for x, _ in data])
    want = model(xs).mean(0)
    comp = surgeon.slim(model, 0.5, data[0][0], data=data)
    plain = surgeon.slim(model, 0.5, data[0][0], compensate=False)
    torch.testing.assert_close(comp(xs).mean(0), want, atol=1e-5, rtol=1e-5)
    assert (plain(xs).mean(0) - want).abs().max() > 1e-2


def test_compensate_false_is_plain_slicing():
    model, x = _convnet()
    slim = surgeon.slim(model, 0.5, x, compensate=False)
    ref = surgeon.slim(model, 0.5, x)
    # compensation moved bn2's running mean (conv2 lost inputs), slicing alone does not
    assert not torch.equal(slim.bn2.running_mean, ref.bn2.running_mean)
    torch.testing.assert_close(slim.bn1.running_mean, ref.bn1.running_mean)
    masked = ConvNet().eval()
    masked.load_state_dict(model.state_dict())
    keep1 = _matching_rows(model.bn1.weight, slim.bn1.weight)
    drop = torch.ones(8, dtype=torch.bool)
    drop[keep1] = False
    with torch.no_grad():
        masked.conv2.weight[:, drop] = 0
    keep2 = _matching_rows(model.bn2.weight, slim.bn2.weight)
    drop2 = torch.ones(12, dtype=torch.bool)
    drop2[keep2] = False
    with torch.no_grad():
        masked.fc.weight[:, drop2] = 0
    assert_same(slim(x), masked(x))


def test_compensation_into_bn_adds_no_parameter_and_a_bias_when_there_is_no_bn():
    model, x = _convnet()
    comp, plain = surgeon.slim(model, 0.5, x), surgeon.slim(model, 0.5, x, compensate=False)
    assert surgeon.count_params(comp) == surgeon.count_params(plain)
    assert comp.conv2.bias is None
    torch.testing.assert_close(comp.bn2.weight, plain.bn2.weight)
    assert not torch.equal(comp.bn2.running_mean, plain.bn2.running_mean)
    assert not torch.equal(comp.fc.bias, plain.fc.bias)  # the head has no norm: its bias


# -- schedules -------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [1, 3, 5])
def test_agp_ratio_follows_the_cubic_formula(steps):
    final = 0.75
    for t in range(steps + 1):
        assert surgeon.agp_ratio(t, steps, final) == pytest.approx(
            final + (0 - final) * (1 - t / steps) ** 3
        )
    assert surgeon.agp_ratio(0, steps, final) == 0
    assert surgeon.agp_ratio(steps, steps, final) == pytest.approx(final)


@pytest.mark.parametrize("schedule", ["agp", "linear", "oneshot"])
def test_each_step_reaches_the_scheduled_width(schedule):
    model, x = _convnet()
    steps, final = 4, 0.75
    seen = []
    slim = surgeon.prune_iteratively(
        model,
        final,
        x,
        steps=steps,
        schedule=schedule,
        finetune=lambda m, step: seen.append((step, m.conv1.out_channels, m.conv2.out_channels)),
    )
    for step, c1, c2 in seen:
        t = step + 1
        r = {
            "agp": final * (1 - (1 - t / steps) ** 3),
            "linear": final * t / steps,
            "oneshot": final,
        }[schedule]
        assert (c1, c2) == (8 - int(r * 8 + 1e-9), 12 - int(r * 12 + 1e-9)), (step, r)
    assert [s for s, _, _ in seen] == list(range(steps))
    history = slim.meta["surgeon.history"]
    assert [h["ratio"] for h in history] == pytest.approx(
        [
            {
                "agp": final * (1 - (1 - t / steps) ** 3),
                "linear": final * t / steps,
                "oneshot": final,
            }[schedule]
            for t in range(1, steps + 1)
        ]
    )
    assert (slim.conv1.out_channels, slim.conv2.out_channels) == (2, 3)


def test_finetune_is_called_exactly_steps_times_with_the_current_model():
    model, x = _convnet()
    calls = []

    def finetune(m, step):
        calls.append((step, m, surgeon.count_params(m)))

    slim = surgeon.prune_iteratively(model, 0.5, x, steps=3, schedule="linear", finetune=finetune)
    assert [c[0] for c in calls] == [0, 1, 2]
    assert calls[-1][1] is slim
    assert calls[0][2] > calls[1][2] > calls[2][2] == surgeon.count_params(slim)


def _matching_rows(original: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """Indices of ``original`` whose values the (distinct) values of ``kept`` are."""
    idx = [int((original == v).nonzero()[0]) for v in kept.detach()]
    assert idx == sorted(idx)
    return torch.as_tensor(idx)


@pytest.mark.parametrize("to", ["start", "state_dict"])
def test_rewind_restores_the_start_values_of_the_survivors(to):
    model, x = _convnet()
    init = ConvNet()  # "initialisation": other values
    randomize_norms(init, seed=7)
    start = {k: v.clone() for k, v in (model if to == "start" else init).state_dict().items()}
    checked = []

    def finetune(m, step):
        k1 = _matching_rows(start["bn1.weight"], m.bn1.weight)
        k2 = _matching_rows(start["bn2.weight"], m.bn2.weight)
        torch.testing.assert_close(m.conv1.weight, start["conv1.weight"][k1], rtol=0, atol=0)
        torch.testing.assert_close(m.conv2.weight, start["conv2.weight"][k2][:, k1], rtol=0, atol=0)
        torch.testing.assert_close(m.fc.weight, start["fc.weight"][:, k2], rtol=0, atol=0)
        torch.testing.assert_close(m.bn2.running_var, start["bn2.running_var"][k2])
        checked.append(step)
        with torch.no_grad():  # "training" moves every weight: the next rewind must undo it
            for p in m.parameters():
                p.add_(0.5)

    rewind = True if to == "start" else init.state_dict()
    surgeon.prune_iteratively(model, 0.5, x, steps=3, finetune=finetune, rewind=rewind)
    assert checked == [0, 1, 2]


def test_without_rewind_the_finetuned_values_stay():
    model, x = _convnet()
    state = []
    surgeon.prune_iteratively(
        model,
        0.5,
        x,
        steps=2,
        schedule="linear",
        finetune=lambda m, step: state.append(m.fc.bias.detach().clone()) or m.fc.bias.data.add_(1),
    )
    assert (state[1] - state[0]).abs().min() > 0.5


def test_iterative_model_saves_and_loads(tmp_path):
    model, x = _convnet()
    slim = surgeon.prune_iteratively(
        model, 0.5, x, steps=3, finetune=lambda m, s: m.fc.bias.data.add_(0.1)
    )
    path = surgeon.save(slim, tmp_path / "it.surgeon")
    fresh = ConvNet().eval()
    back = surgeon.load(path, fresh)
    assert_same(back(x), slim(x))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 0}, "steps=0"),
        ({"schedule": "cosine"}, "schedule='cosine'"),
        ({"finetune": 3}, "not callable"),
        ({"rewind": "yes"}, "rewind="),
        ({"importance": "taylor"}, "needs data="),
        (
            {
                "importance": "taylor",
                "loss_fn": F.cross_entropy,
                "data": iter([(torch.zeros(2, 3, 8, 8), torch.tensor([0, 1]))]),
            },
            "one-shot iterator",
        ),
    ],
)
def test_prune_iteratively_bad_arguments(kwargs, message):
    model, x = _convnet()
    with pytest.raises(SurgeonInputError, match=message):
        surgeon.prune_iteratively(model, 0.5, x, **{"steps": 2, **kwargs})


# -- distillation ----------------------------------------------------------------------------
def test_distill_loss_is_hintons_formula():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    y = torch.tensor([0, 1, 2, 3, 0])
    T, alpha = 3.0, 0.3
    p_t = torch.softmax(t / T, 1)
    kl = (p_t * (torch.log(p_t) - torch.log_softmax(s / T, 1))).sum(1).mean()
    want = alpha * kl * T * T + (1 - alpha) * F.cross_entropy(s, y)
    torch.testing.assert_close(surgeon.distill_loss(s, t, y, T=T, alpha=alpha), want)
    torch.testing.assert_close(surgeon.distill_loss(s, t, y, alpha=0.0), F.cross_entropy(s, y))
    assert float(surgeon.distill_loss(t, t, y, alpha=1.0)) == pytest.approx(0.0, abs=1e-6)


def test_distill_loss_does_not_train_the_teacher():
    s = torch.randn(3, 4, requires_grad=True)
    t = torch.randn(3, 4, requires_grad=True)
    surgeon.distill_loss(s, t, torch.tensor([0, 1, 2])).backward()
    assert s.grad is not None and t.grad is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"T": 0.0}, "temperature"), ({"alpha": 1.5}, "alpha"), ({"shape": True}, "differ in shape")],
)
def test_distill_loss_bad_arguments(kwargs, message):
    s = torch.randn(3, 4)
    t = torch.randn(3, 5) if kwargs.pop("shape", False) else torch.randn(3, 4)
    with pytest.raises(SurgeonInputError, match=message):
        surgeon.distill_loss(s, t, torch.tensor([0, 1, 2]), **kwargs)


def test_compensation_from_data_reconstructs_a_removed_unit_that_its_kept_units_span():
    """Hidden unit 5 is half of unit 2 (ReLU is positively homogeneous): regressing it on the
    kept units recovers it exactly, so removing it with data changes nothing."""
    torch.manual_seed(4)
    model = MLP(hidden=8).eval()
    with torch.no_grad():
        model.fc1.weight[5] = 0.5 * model.fc1.weight[2]
        model.fc1.bias[5] = 0.5 * model.fc1.bias[2]
        model.fc2.weight[:, 5] *= 0.3  # the lowest l2 score: it is the unit removed
    data = _mlp_data(4, batches=4, n=64)
    xs = torch.cat([x for x, _ in data])
    slim = surgeon.slim(model, 0.125, data[0][0], data=data)
    plain = surgeon.slim(model, 0.125, data[0][0], compensate=False)
    assert slim.fc1.out_features == 7
    assert_same(slim(xs), model(xs), tol=1e-4)
    assert (plain(xs) - model(xs)).abs().max() > 1e-2


def test_prune_iteratively_keeps_ignored_modules_across_steps():
    model, x = _convnet()
    slim = surgeon.prune_iteratively(model, 0.5, x, steps=3, ignore=[model.conv1])
    assert slim.conv1.out_channels == 8 and slim.conv2.out_channels == 6


def test_prune_iteratively_refuses_leaf_instances_over_several_steps():
    model, x = _convnet()
    with pytest.raises(SurgeonInputError, match="module types"):
        surgeon.prune_iteratively(model, 0.5, x, steps=2, leaf_modules=[model.bn1])


class TiedHeads(nn.Module):
    """Two branches whose heads share one weight: their hidden spaces form one prunable group
    through the tie, and compensation must not change the shared tensor for one of them."""

    def __init__(self) -> None:
        super().__init__()
        self.fc_a, self.fc_b = nn.Linear(6, 8), nn.Linear(6, 8)
        self.head_a, self.head_b = nn.Linear(8, 3), nn.Linear(8, 3, bias=False)
        self.head_b.weight = self.head_a.weight  # tied

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_a(torch.relu(self.fc_a(x))) + self.head_b(torch.relu(self.fc_b(x)))


def test_compensation_never_changes_a_tied_weight():
    torch.manual_seed(5)
    model = TiedHeads().eval()
    data = [(torch.randn(32, 6), torch.randint(0, 3, (32,)))]
    assert surgeon.analyze(model, data[0][0]).prunable_groups()  # the check is not vacuous
    slim = surgeon.slim(model, 0.25, data[0][0], data=data)
    plain = surgeon.slim(model, 0.25, data[0][0], compensate=False)
    assert slim.head_a.in_features == 6
    torch.testing.assert_close(slim.head_a.weight, plain.head_a.weight, rtol=0, atol=0)
    assert slim.head_b.weight is slim.head_a.weight  # the tie survives the cut
    assert len(list(slim.parameters())) == len(list(model.parameters()))
    assert slim.head_b.bias is None
