"""Schedules (surgeon/schedule.py): prune_iteratively with AGP / linear / one-shot steps and a
fine-tune callback, rewinding the survivors, distill_loss, and the pipeline on real data."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import surgeon
from surgeon.errors import SurgeonInputError
from tests.helpers import (
    ConvNet,
    assert_same,
    convnet,
    digits_test_accuracy,
    matching_rows,
    randomize_norms,
)


# -- prune_iteratively -----------------------------------------------------------------------
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
    model, x = convnet()
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
    model, x = convnet()
    calls = []

    def finetune(m, step):
        calls.append((step, m, surgeon.count_params(m)))

    slim = surgeon.prune_iteratively(model, 0.5, x, steps=3, schedule="linear", finetune=finetune)
    assert [c[0] for c in calls] == [0, 1, 2]
    assert calls[-1][1] is slim
    assert calls[0][2] > calls[1][2] > calls[2][2] == surgeon.count_params(slim)


@pytest.mark.parametrize("to", ["start", "state_dict"])
def test_rewind_restores_the_start_values_of_the_survivors(to):
    model, x = convnet()
    init = ConvNet()  # "initialisation": other values
    randomize_norms(init, seed=7)
    start = {k: v.clone() for k, v in (model if to == "start" else init).state_dict().items()}
    checked = []

    def finetune(m, step):
        k1 = matching_rows(start["bn1.weight"], m.bn1.weight)
        k2 = matching_rows(start["bn2.weight"], m.bn2.weight)
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
    model, x = convnet()
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
    model, x = convnet()
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
    model, x = convnet()
    with pytest.raises(SurgeonInputError, match=message):
        surgeon.prune_iteratively(model, 0.5, x, **{"steps": 2, **kwargs})


def test_prune_iteratively_keeps_ignored_modules_across_steps():
    model, x = convnet()
    slim = surgeon.prune_iteratively(model, 0.5, x, steps=3, ignore=[model.conv1])
    assert slim.conv1.out_channels == 8 and slim.conv2.out_channels == 6


def test_prune_iteratively_refuses_leaf_instances_over_several_steps():
    model, x = convnet()
    with pytest.raises(SurgeonInputError, match="module types"):
        surgeon.prune_iteratively(model, 0.5, x, steps=2, leaf_modules=[model.bn1])


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


# -- on real data: the digits baseline (tests/conftest.py) -----------------------------------
def test_iterative_agp_with_distillation_and_level_prune_pipeline(digits_trained):
    """The schedule machinery on real data: AGP in 3 steps with a distillation fine-tune each
    step, then unstructured pruning whose dead channels slim(0) removes exactly."""
    from surgeon.digits import fit

    model, data = digits_trained
    teacher = copy.deepcopy(model)
    x = data.x_test[:1]

    def finetune(m, step):
        fit(m, data, epochs=0.5, lr=1e-3, seed=step, teacher=teacher)

    slim = surgeon.prune_iteratively(model, 0.5, x, steps=3, schedule="agp", finetune=finetune)
    assert [h["step"] for h in slim.meta["surgeon.history"]] == [0, 1, 2]
    assert digits_test_accuracy(slim, data) >= 95.0
    sparse = surgeon.level_prune(copy.deepcopy(slim), 0.6)
    m = surgeon.metrics(sparse, x, reference=model)
    assert m.nonzero_params < 0.45 * surgeon.count_params(slim)
    smaller = surgeon.slim(sparse, 0.0, x)
    with torch.no_grad():
        torch.testing.assert_close(smaller(data.x_test), sparse(data.x_test), rtol=1e-4, atol=1e-4)
    assert surgeon.count_params(smaller) <= surgeon.count_params(sparse)
