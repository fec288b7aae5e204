"""round_to="auto": the slim model made at the probe's multiple and each larger one, exported
and timed side by side, the fastest kept (surgeon/autotune.py)."""

from __future__ import annotations

import pytest

import surgeon.autotune as autotune
from surgeon.models import create


def _fake_latency(fastest: int, seen: list[list[str]]):
    """A runtime where the slim model rounded to ``fastest`` runs fastest (files are named
    r<multiple>.onnx); records the files each call timed."""
    from types import SimpleNamespace

    def bench(paths, example_inputs=None, **kwargs):
        seen.append([p.name for p in paths])
        ms = {int(p.stem[1:]): 1.0 if int(p.stem[1:]) == fastest else 2.0 for p in paths}
        return [{"cpu": SimpleNamespace(median_ms=ms[int(p.stem[1:])])} for p in paths]

    return bench


@pytest.mark.parametrize("fastest", [8, 16])
def test_slim_rounds_to_the_multiple_its_own_model_runs_fastest(fastest, monkeypatch):
    import surgeon.benchmark

    seen: list[list[str]] = []
    monkeypatch.setattr(autotune, "channel_multiple", lambda provider, threads: 8)
    monkeypatch.setattr(surgeon.benchmark, "bench_interleaved", _fake_latency(fastest, seen))
    model, x = create("mobilenet_v2", input_shape=(1, 3, 64, 64))
    slim = surgeon.slim(model, 0.3, x, round_to="auto")
    plan = slim.meta["surgeon.plan"]
    assert plan["round_to_auto"] is True and plan["round_to"] == fastest
    # the probe's 8 and every larger candidate, each a distinct model, timed side by side
    assert seen == [["r8.onnx", "r16.onnx", "r32.onnx"]]
    assert set(plan["round_to_timed"]) == {"8", "16", "32"}
    before = {n: m.out_channels for n, m in model.named_modules() if hasattr(m, "out_channels")}
    after = {n: m.out_channels for n, m in slim.named_modules() if hasattr(m, "out_channels")}
    changed = [n for n in before if after[n] != before[n]]
    assert changed and all(after[n] % fastest == 0 for n in changed)


def test_candidates_that_change_no_width_are_not_timed_again(monkeypatch):
    import surgeon.benchmark

    seen: list[list[str]] = []
    monkeypatch.setattr(autotune, "channel_multiple", lambda provider, threads: 16)
    monkeypatch.setattr(surgeon.benchmark, "bench_interleaved", _fake_latency(16, seen))
    model, x = create("resnet18", input_shape=(1, 3, 32, 32))  # 64..512 wide: halves stay x32
    slim = surgeon.slim(model, 0.5, x, round_to="auto")
    assert seen == [] and slim.meta["surgeon.plan"]["round_to"] == 16


def test_a_failed_timing_keeps_the_probes_multiple(monkeypatch, caplog):
    import surgeon.exporter

    def broken(*args, **kwargs):
        raise RuntimeError("no onnx today")

    monkeypatch.setattr(autotune, "channel_multiple", lambda provider, threads: 4)
    monkeypatch.setattr(surgeon.exporter, "export", broken)
    model, x = create("mobilenet_v2", input_shape=(1, 3, 64, 64))
    slim = surgeon.slim(model, 0.3, x, round_to="auto")
    assert slim.meta["surgeon.plan"]["round_to"] == 4
    assert "no onnx today" in caplog.text and "keeping the measured multiple 4" in caplog.text


def test_timings_onnxruntime_did_not_run_keep_the_probes_multiple(monkeypatch):
    from types import SimpleNamespace

    import surgeon.benchmark

    monkeypatch.setattr(autotune, "channel_multiple", lambda provider, threads: 8)
    monkeypatch.setattr(
        surgeon.benchmark,
        "bench_interleaved",
        lambda paths, *a, **k: [{"cpu": SimpleNamespace(median_ms=None)} for _ in paths],
    )
    model, x = create("mobilenet_v2", input_shape=(1, 3, 64, 64))
    plan = surgeon.slim(model, 0.3, x, round_to="auto").meta["surgeon.plan"]
    assert plan["round_to"] == 8 and plan["round_to_timed"] == {}


def test_only_the_chosen_candidates_warnings_are_logged(monkeypatch, caplog):
    # every candidate is slimmed; a warning each one logs reaches the user once
    import surgeon.benchmark

    seen: list[list[str]] = []
    monkeypatch.setattr(autotune, "channel_multiple", lambda provider, threads: 8)
    monkeypatch.setattr(surgeon.benchmark, "bench_interleaved", _fake_latency(16, seen))
    model, x = create("mobilenet_v2", input_shape=(1, 3, 64, 64))
    with caplog.at_level("WARNING", logger="surgeon"):
        surgeon.slim(model, 0.3, x, round_to="auto", ignore=[model.features])
    little = [r for r in caplog.records if "little was pruned" in r.getMessage()]
    assert len(little) == 1, [r.getMessage() for r in little]
