"""surgeon.pipeline: the stages as values, and one pipeline for slim, load and the schedules."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

import surgeon
import surgeon.pipeline as pipeline
from surgeon.capture import capture
from surgeon.errors import SurgeonPassError
from surgeon.keys import PLAN_KEY
from surgeon.options import SlimOptions


def _grouped_chain(width: int, norm: bool) -> nn.Module:
    """conv 1x1 -> grouped 3x3 (4 groups of ``width``) [-> GroupNorm(4)] -> 1x1 head: with the
    GroupNorm, whole groups of the grouped conv prune nothing (they get stuck) and the
    pipeline builds the channel graph again with offsets for that conv."""
    c = 4 * width
    layers = [nn.Conv2d(3, c, 1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1, groups=4)]
    layers += [nn.GroupNorm(4, c)] if norm else []
    return nn.Sequential(*layers, nn.ReLU(), nn.Conv2d(c, 5, 1))


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _rewrite_plan(path, change) -> None:
    """Rewrite the plan inside a saved surgeon file (a zip with plan.json and weights.pt)."""
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    doc = json.loads(members["plan.json"])
    change(doc["plan"])
    members["plan.json"] = json.dumps(doc).encode()
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


@pytest.mark.parametrize("drop_whole_groups", [False, True])
def test_load_replays_the_stuck_whole_groups_as_slim_made_them(tmp_path, drop_whole_groups):
    # slim falls back to offsets for a conv whose whole groups get stuck; load runs the same
    # stage, so the widths agree — also for a plan that does not list the whole-group convs
    torch.manual_seed(0)
    net, x = _grouped_chain(6, norm=True).eval(), torch.randn(1, 3, 8, 8)
    slim = surgeon.slim(net, 0.5, x, grouped=(6,))
    assert slim[2].weight.shape == (12, 3, 3, 3)  # narrowed groups, not whole ones
    path = surgeon.save(slim, tmp_path / "g.surgeon")
    if drop_whole_groups:
        _rewrite_plan(path, lambda plan: plan.pop("whole_groups"))
    loaded = surgeon.load(path, _grouped_chain(6, norm=True).eval())
    assert _shapes(loaded) == _shapes(slim)
    torch.testing.assert_close(loaded(x), slim(x), rtol=1e-5, atol=1e-6)


def test_load_runs_the_pipelines_channel_graph(tmp_path, monkeypatch):
    torch.manual_seed(0)
    net, x = _grouped_chain(6, norm=False).eval(), torch.randn(1, 3, 8, 8)
    path = surgeon.save(surgeon.slim(net, 0.5, x, grouped=(6,)), tmp_path / "p.surgeon")
    seen = []
    real = pipeline.channel_graph

    def spy(gm, attention, grouped, whole=None):
        seen.append((grouped, None if whole is None else sorted(whole)))
        return real(gm, attention, grouped, whole)

    monkeypatch.setattr(pipeline, "channel_graph", spy)
    loaded = surgeon.load(path, _grouped_chain(6, norm=False).eval())
    assert seen == [((6,), ["_2"])]  # the recorded widths and whole-group conv, once
    assert loaded[2].groups == 2


def test_with_blocked_is_a_new_value():
    torch.manual_seed(0)
    net, x = _grouped_chain(4, norm=False).eval(), torch.randn(1, 3, 8, 8)
    graph = surgeon.analyze(net, x)
    gi = graph.prunable_groups()[0].index
    before = list(graph.groups[gi].reasons)
    blocked = pipeline.with_blocked(graph, {gi: "a test reason"})
    assert graph.groups[gi].reasons == before and graph.groups[gi].prunable
    assert blocked.groups[gi].reasons == [*before, "a test reason"]
    assert not blocked.groups[gi].prunable
    assert pipeline.with_blocked(graph, {}) is graph


def test_blocked_after_returns_a_new_mapping():
    torch.manual_seed(0)
    net, x = _grouped_chain(4, norm=False).eval(), torch.randn(1, 3, 8, 8)
    graph = surgeon.analyze(net, x)
    node = next(n.name for n in graph.gm.graph.nodes if n.op == "call_module" and n.target == "2")
    earlier: dict[int, str] = {}
    found = pipeline.blocked_after(graph, SurgeonPassError("failed", node=node), earlier)
    assert earlier == {} and found
    assert all(graph.groups[gi].prunable for gi in found)
    assert pipeline.blocked_after(graph, SurgeonPassError("no node"), earlier) is None


def test_slimmed_counts_are_the_captured_class_counts():
    torch.manual_seed(0)
    net, x = _grouped_chain(4, norm=False).eval(), torch.randn(1, 3, 8, 8)
    out = pipeline.slim_model(net, x, SlimOptions(0.5))
    graph = surgeon.analyze(net, x)
    assert out.counts == {g.index: g.n_classes for g in graph.groups}
    assert isinstance(out.model, nn.Sequential)
    removed = {int(k): len(v) for k, v in out.model.meta[PLAN_KEY]["removed"].items()}
    assert removed == {gi: int(np.sum(m)) for gi, m in out.state.removed.items() if m.any()}
    # a later step of a schedule refers to those counts; another group set is refused
    with pytest.raises(SurgeonPassError, match="changed between prune steps"):
        pipeline.slim_model(out.model, x, SlimOptions(0.5), original={0: 1})


def test_capture_returns_what_it_found_as_a_value():
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 1)

        def forward(self, x):
            if x.shape[-1] > 4:  # a branch on a size: captured specialised
                x = x * 2
            return self.conv(x)

    x = torch.randn(1, 3, 8, 8)
    captured = capture(Branchy().eval(), x)
    assert captured.how == "specialised" and captured.specialised["where"]
    assert captured.finite == [True] and captured.checked
    assert not any(k.startswith("surgeon.") for k in captured.gm.meta)
    plain = capture(nn.Conv2d(3, 4, 1).eval(), x)
    assert plain.how == "symbolic" and plain.specialised is None and plain.auto_leaves == []
    again = capture(plain.gm, x)
    assert again.how == "graph" and again.gm is plain.gm
    slim = surgeon.slim(Branchy().eval(), 0.5, x)
    assert slim.meta[PLAN_KEY]["captured"] == "specialised"


def test_group_channels_count_channels_not_classes():
    from surgeon.models import create

    model, x = create("vit_tiny")
    graph = surgeon.analyze(model, x)
    heads = [g for g in graph.prunable_groups() if g.n_classes == 3]  # ViT-Ti: 3 heads
    # the widest member is the packed qkv projection: 3 heads x (q, k, v) x 64
    assert heads and all(g.channels == 576 for g in heads)
    g = heads[0]
    assert g.channels_in([0]) == 192 and g.channels_in([0, 1, 2]) == 576
    assert "576 channels in 3 classes" in str(graph)
