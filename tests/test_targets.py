"""Targets in place of ratios: surgeon.Target, the budget's allocation, the rounds, the CLI."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn

import surgeon
from surgeon.autotune import MAX_ROUNDS, MEASURED_BAND, _Meter
from surgeon.budget import Budget
from surgeon.capture import capture
from surgeon.cost import count_macs, count_params
from surgeon.errors import SurgeonInputError, SurgeonTargetError
from surgeon.graph import build_channel_graph
from surgeon.keys import PLAN_KEY
from surgeon.latency import LayerTime, layer_table, layers_of
from surgeon.models import create
from surgeon.options import SlimOptions, Target
from surgeon.pipeline import slim_model
from tests.helpers import randomize_norms


def _net(seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1, stride=2), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1, groups=64), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, 48, 1), nn.BatchNorm2d(48), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(48, 10),
    ).eval()  # fmt: skip
    randomize_norms(model, seed)
    return model, torch.randn(1, 3, 32, 32)


# -- the value ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"speedup": 2.0, "macs": 3.0}, {"speedup": 1.0}, {"macs": 0.5}, {"params": True},
     {"latency_ms": 0}, {"speedup": 2.0, "device": "tpu"}, {"speedup": 2.0, "threads": 0}],
)  # fmt: skip
def test_a_target_that_is_not_one_is_refused(kwargs):
    with pytest.raises(SurgeonInputError) as err:
        Target(**kwargs)
    assert err.value.option == "target"


def test_a_target_takes_the_ratio_place_in_the_options():
    t = Target(macs=3)
    options = SlimOptions(t)
    assert (options.ratio, options.target, t.kind, t.value) == (0.0, t, "macs", 3.0)
    assert options.prunes and not t.measured and Target(latency_ms=5).measured
    assert options.replace(ratio=0.3).target is None  # a ratio replaces the target
    assert options.to_record()["target"] == {
        "kind": "macs", "value": 3.0, "device": "cpu", "threads": None
    }  # fmt: skip
    with pytest.raises(SurgeonInputError, match="both given"):
        SlimOptions(0.5, target=t)


# -- counted targets --------------------------------------------------------------------------
@pytest.mark.parametrize("kind, value", [("params", 4.0), ("macs", 3.0), ("params", 1.5)])
def test_a_counted_target_lands_on_its_value(kind, value):
    model, x = create("resnet18")[0].eval(), torch.randn(1, 3, 64, 64)
    slim = surgeon.slim(model, Target(**{kind: value}), x)
    count = count_params if kind == "params" else lambda m: count_macs(m, x)
    achieved = count(model) / count(slim)
    assert abs(achieved / value - 1) <= 0.01
    record = slim.meta[PLAN_KEY]["target"]
    assert record["achieved"] == pytest.approx(achieved, rel=1e-3)
    assert record["theoretical"] == pytest.approx(
        count_macs(model, x) / count_macs(slim, x), rel=1e-3
    )
    assert 1 <= len(record["rounds"]) <= MAX_ROUNDS
    assert slim(x).shape == model(x).shape


def test_the_budget_estimates_the_parameters_a_decision_leaves_exactly():
    model, x = _net()
    options = SlimOptions(Target(params=2.0))
    gm = capture(copy.deepcopy(model), x).gm
    graph = build_channel_graph(gm)
    budget = Budget(gm, graph, options, None, "params", count_params(model))
    for level in (0, budget.levels // 3, budget.levels):
        decision = budget.decision(level)
        slim = slim_model(model, x, options, decision=decision).model
        assert budget.estimate(decision) == count_params(slim)
    assert budget.factor(budget.decision(0)) == 1.0


def test_allocation_keeps_the_channel_multiple_and_the_ignored_modules():
    model, x = _net()
    slim = surgeon.slim(model, Target(macs=2.5), x, round_to=8, ignore=[model[9]])
    convs = [m for m in slim.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.out_channels % 8 == 0 for c in convs[:3])
    assert convs[3].weight.shape[0] == 48  # the ignored conv keeps its outputs


def test_allocation_goes_by_cost_not_by_ratio():
    """A full-resolution conv's channels cost MACs (27 x 4096 each), the hidden Linear width's
    parameters (16 + 1000 each): a MAC target takes more of the conv's channels than of the
    Linear's, a parameter target the other way."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 1000),
    ).eval()  # fmt: skip
    x = torch.randn(1, 3, 64, 64)
    kept = {}
    for kind in ("macs", "params"):
        slim = surgeon.slim(model, Target(**{kind: 2.0}), x, returns="graph")
        conv = next(m for m in slim.modules() if isinstance(m, nn.Conv2d))
        linear = next(m for m in slim.modules() if isinstance(m, nn.Linear))
        kept[kind] = (conv.out_channels / 16, linear.out_features / 64)
    assert kept["macs"][0] < kept["macs"][1]
    assert kept["params"][0] > kept["params"][1]


def test_an_impossible_target_says_how_close_it_got():
    model, x = _net()
    with pytest.raises(SurgeonTargetError, match="cannot be met") as err:
        surgeon.slim(model, Target(params=1000.0), x)
    assert err.value.closest is not None and err.value.closest.endswith("x")
    assert float(err.value.closest[:-1]) < 1000


# -- measured targets: the rounds, with a deterministic clock ----------------------------------
def _layer_macs(layer) -> float:
    """A layer's MACs / 1e6: its weight's size times the positions it is applied at."""
    positions = math.prod(layer.input[:-1]) if layer.kind == "linear" else (
        layer.input[0] * math.prod(s // st for s, st in zip(layer.input[2:], layer.stride, strict=True))
    )  # fmt: skip
    return math.prod(layer.weight_shape) * positions / 1e6


def _fake_clock(monkeypatch, tmp_path, layer_ms=None, overhead_ms: float = 2.0, trail: float = 0.0):
    """Latency = a fixed overhead plus the MACs / 1e6, slowed by ``(M0 / M) ** trail`` (a
    runtime that runs narrow layers less efficiently: the speedup trails the MAC drop, which
    the layer table does not know); each layer alone ``layer_ms(layer)`` (default: its MACs
    / 1e6), cached in ``tmp_path``."""
    import surgeon.latency

    monkeypatch.setenv("SURGEON_CACHE_DIR", str(tmp_path))
    timer = layer_ms or _layer_macs
    monkeypatch.setattr(surgeon.latency, "_time", lambda layer, p, t: timer(layer))
    calls = []

    def original_ms(self, model):
        self.orig = count_macs(model, self.inputs)
        return overhead_ms + self.orig / 1e6

    def timed(self, model, n):
        calls.append(n)
        macs = count_macs(model, self.inputs)
        return overhead_ms + self.orig / 1e6, overhead_ms + macs / 1e6 * (self.orig / macs) ** trail

    monkeypatch.setattr(_Meter, "original_ms", original_ms)
    monkeypatch.setattr(_Meter, "timed", timed)
    return calls


def test_a_speedup_target_tightens_until_it_holds(monkeypatch, tmp_path):
    calls = _fake_clock(monkeypatch, tmp_path, trail=0.3)
    model, x = create("resnet18")[0].eval(), torch.randn(1, 3, 64, 64)
    slim = surgeon.slim(model, Target(speedup=2.0, threads=1), x)
    record = slim.meta[PLAN_KEY]["target"]
    low, high = MEASURED_BAND
    assert 2.0 * (1 - low) <= record["achieved"] <= 2.0 * (1 + high)
    assert 1 < len(record["rounds"]) == len(calls) <= MAX_ROUNDS  # round 1 fell short
    assert record["rounds"][0]["achieved"] < 2.0 * (1 - low)
    assert record["rounds"][record["round"] - 1]["achieved"] == record["achieved"]
    # the overhead does not shrink: the MACs had to drop by more than the speedup
    assert record["theoretical"] > record["achieved"]


def test_a_latency_target_is_the_speedup_it_means(monkeypatch, tmp_path):
    _fake_clock(monkeypatch, tmp_path)
    model, x = _net()
    full = 2.0 + count_macs(model, x) / 1e6
    slim = surgeon.slim(model, Target(latency_ms=full / 1.5), x)
    record = slim.meta[PLAN_KEY]["target"]
    assert record["slim_ms"] <= full / 1.5 * (1 + MEASURED_BAND[0])
    assert record["asked"] == pytest.approx(1.5)


def test_a_latency_under_what_the_model_can_reach_is_an_error(monkeypatch, tmp_path):
    _fake_clock(monkeypatch, tmp_path, lambda layer: 0.01, overhead_ms=5.0)  # 5 ms fixed
    model, x = _net()
    with pytest.raises(SurgeonTargetError, match="cannot be met") as err:
        surgeon.slim(model, Target(latency_ms=1.0), x)
    assert err.value.closest.endswith("ms")


# -- the schedule, analyze ------------------------------------------------------------------
def test_prune_iteratively_ends_at_the_target():
    model, x = _net()
    slim = surgeon.prune_iteratively(model, Target(macs=2.0), x, steps=2, schedule="linear")
    assert count_macs(model, x) / count_macs(slim, x) == pytest.approx(2.0, rel=0.02)
    history = slim.meta["surgeon.history"]
    assert [h["target"] for h in history] == pytest.approx([math.sqrt(2.0), 2.0])
    assert count_macs(model, x) / history[0]["macs"] == pytest.approx(math.sqrt(2.0), rel=0.02)


def test_analyze_says_what_a_target_removes():
    model, x = _net()
    graph = surgeon.analyze(model, x, target=Target(params=2.0))
    assert graph.planned and sum(graph.planned.values()) > 0
    assert "the target removes" in str(graph)
    assert surgeon.analyze(model, x).planned is None


# -- the latency table ----------------------------------------------------------------------
def test_the_layer_table_times_each_shape_once(monkeypatch, tmp_path):
    import surgeon.latency

    monkeypatch.setenv("SURGEON_CACHE_DIR", str(tmp_path))
    timed = []

    def fake(layer, provider, threads):
        timed.append(layer.key())
        return math.prod(layer.weight_shape) / 1e4

    monkeypatch.setattr(surgeon.latency, "_time", fake)
    model, x = _net()
    gm = capture(copy.deepcopy(model), x).gm
    assert [la.kind for la in layers_of(gm)] == ["conv"] * 4 + ["linear"]
    table = layer_table(gm, "cpu", 1)
    assert len(timed) == len(set(timed)) and timed
    n = len(timed)
    again = layer_table(gm, "cpu", 1)  # cached
    assert len(timed) == n and again.keys() == table.keys()
    dw = table["6.weight"]
    assert dw.layer.scaled(1.0, 0.5).groups == 32 and dw.ins == (1.0,)  # stays depthwise
    assert dw.at(1.0, 1.0) == pytest.approx(dw.full)
    assert dw.at(1.0, 0.0) == dw.at(1.0, 0.125) > 0  # held below the narrowest width timed
    assert dw.at(1.0, 0.6) < dw.at(1.0, 0.8) < dw.full
    pw = table["9.weight"]  # 64 -> 48, timed at every pair of widths
    assert len(pw.ins) == len(pw.outs) == 5 and pw.at(0.5, 1.0) < pw.full
    assert pw.at(0.5, 0.5) == pytest.approx(fake(pw.layer.scaled(0.5, 0.5), "cpu", 1))


def test_layer_times_interpolate_between_the_widths_timed():
    from surgeon.latency import Layer

    lt = LayerTime(
        Layer("n", "w", "linear", (1, 4), (4, 4)), (0.0, 0.5, 1.0), (0.0, 1.0),
        ((0.0, 0.0), (0.0, 2.0), (0.0, 4.0)),
    )  # fmt: skip
    assert lt.at(0.75, 1.0) == pytest.approx(3.0)
    assert lt.at(1.0, 0.5) == pytest.approx(2.0)
    assert lt.at(0.5, 0.5) == pytest.approx(1.0) and lt.full == 4.0


def test_a_real_layer_is_timed_in_onnxruntime():
    from surgeon.latency import Layer, _time

    conv = Layer("n", "w", "conv", (1, 16, 14, 14), (16, 16, 3, 3), (1, 1), (1, 1), (1, 1), 1)
    assert _time(conv, "cpu", 1) > 0
    assert _time(Layer("n", "w", "linear", (1, 8, 32), (16, 32)), "cpu", 1) > 0


# -- whole blocks ------------------------------------------------------------------------------
LAYERS = ("channels", "heads", "layers")


def _resnet_with_a_dead_block():
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    randomize_norms(model)
    nn.init.zeros_(model.layer2[1].bn2.weight)  # that block's branch computes bn2's shift
    return model, torch.randn(2, 3, 64, 64)


def test_a_block_whose_branch_is_constant_goes_exactly():
    model, x = _resnet_with_a_dead_block()
    slim = surgeon.slim(model, 0.0, x, structures=LAYERS)
    plan = slim.meta[PLAN_KEY]
    assert [b["add"] for b in plan["blocks"]] == ["add_3"]
    torch.testing.assert_close(slim(x), model(x), rtol=1e-5, atol=1e-5)
    branch = model.layer2[1]
    gone = sum(p.numel() for n, p in branch.named_parameters() if not n.startswith("downsample"))
    assert count_params(model) - count_params(slim) == gone
    assert isinstance(slim, torch.fx.GraphModule) and "whole block" in plan["form_reason"]
    # without "layers" the block stays
    assert not surgeon.slim(model, 0.0, x).meta[PLAN_KEY].get("blocks")


def test_a_model_that_lost_blocks_saves_and_loads(tmp_path):
    model, x = _resnet_with_a_dead_block()
    slim = surgeon.slim(model, 0.3, x, structures=LAYERS)
    surgeon.save(slim, tmp_path / "m.surgeon")
    fresh, _ = _resnet_with_a_dead_block()
    nn.init.normal_(fresh.layer2[1].bn2.bias)  # the constant must come from the file
    loaded = surgeon.load(tmp_path / "m.surgeon", model=fresh)
    torch.testing.assert_close(loaded(x), slim(x))


def test_a_target_with_layers_removes_layers_or_blocks_and_fewer_channels():
    """ResNet-18's first stage is a stack (two blocks of one shape): whole layers of it go,
    and the model keeps its class; the stages that open with a downsample are none."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    width = surgeon.slim(model, Target(macs=3.0), x)
    deep = surgeon.slim(model, Target(macs=3.0), x, structures=LAYERS)
    wp, dp = width.meta[PLAN_KEY], deep.meta[PLAN_KEY]
    assert dp["target"]["blocks"] == len(dp["blocks"])
    assert dp["target"]["blocks"] + dp["target"]["layers"] > 0
    if dp["target"]["layers"]:
        assert type(deep) is type(model)
        assert [r["path"] for r in dp["layers"] if r["removed"]] == ["layer1"]
    assert abs(dp["target"]["achieved"] / 3.0 - 1) <= 0.01
    removed = lambda p: sum(len(v) for v in p["removed"].values())  # noqa: E731
    assert removed(dp) < removed(wp)
    assert deep(x).shape == model(x).shape


@pytest.mark.parametrize("value", [("channels",), ("channels", "heads", "blocks"), "rows", 3])
def test_structures_must_name_what_can_go(value):
    with pytest.raises(SurgeonInputError) as err:
        SlimOptions(0.5, structures=value)
    assert err.value.option == "structures"


class _SharedSkip(nn.Module):
    """A branch whose first op rewrites the skip in place: cutting it would change the skip."""

    def __init__(self) -> None:
        super().__init__()
        self.act = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(4, 4, 1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        x = self.head.weight.new_zeros(()) + x  # a tensor of the graph, not the input itself
        return self.head(x + self.bn(self.conv(self.act(x))))


def test_a_branch_that_writes_its_skip_in_place_is_not_a_block():
    from surgeon.blocks import find_blocks

    model, x = _SharedSkip().eval(), torch.randn(1, 4, 3, 3)
    nn.init.zeros_(model.bn.weight)  # the branch is constant, but it rewrites the skip
    gm = capture(copy.deepcopy(model), x).gm
    assert not [b for b in find_blocks(gm) if "conv" in " ".join(b.nodes)]
    slim = surgeon.slim(model, 0.0, x, structures=LAYERS)
    torch.testing.assert_close(slim(x), model(x))
