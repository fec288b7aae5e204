"""round_to="auto": the channel multiple onnxruntime computes fastest, measured and cached
(surgeon/hardware.py)."""

from __future__ import annotations

import json
import math

import pytest

import surgeon
import surgeon.hardware as hardware
from surgeon.errors import SurgeonInputError


def _blocked_cost(block: int):
    """A runtime that computes channels in blocks of ``block``: a width costs like the next
    multiple (depthwise pays double for a ragged tail)."""

    def cost(model, channels, provider, threads, runs, side=hardware.SIDE):
        padded = math.ceil(channels / block) * block
        return padded * (2.0 if padded != channels else 1.0)

    return cost


@pytest.mark.parametrize("block", [1, 4, 8, 16])
def test_probe_finds_the_block_a_runtime_computes_in(block, monkeypatch):
    monkeypatch.setattr(hardware, "_time", _blocked_cost(block))
    found = hardware.probe("cpu", threads=1)
    assert found.multiple == block, found.relative
    assert found.relative[1] == 1.0
    assert set(found.ms) == {"pointwise", "depthwise"}
    assert sorted(found.ms["depthwise"]) == list(hardware.WIDTHS)


def test_probe_finds_the_group_widths_that_halve_faster_whole(monkeypatch):
    # a runtime whose grouped conv costs its MACs, but 4x where a group is 8 wide: a 16-wide
    # group halved to 8 is slower than half the 16-wide groups; a 32-wide one is not
    import onnx

    def cost(model, channels, provider, threads, runs, side=hardware.SIDE):
        node = onnx.load_from_string(model).graph.node[0]
        groups = next(a.i for a in node.attribute if a.name == "group")
        width = channels // groups
        return channels * width * (4.0 if width == 8 else 1.0)

    monkeypatch.setattr(hardware, "_time", cost)
    found = hardware.probe("cpu", threads=1)
    assert found.grouped_widths == (16,), found.grouped_relative
    assert found.grouped_relative[32] == pytest.approx(2.0)
    assert set(found.grouped_relative) == set(hardware.GROUP_WIDTHS)


def test_probe_measures_this_machine():
    found = hardware.probe("cpu", threads=1, runs=3)
    assert found.multiple in hardware.CANDIDATES
    assert all(t > 0 for per_op in found.ms.values() for t in per_op.values())
    assert found.device.startswith("cpu: ")


def test_the_answer_is_cached_per_device_and_thread_count(tmp_path, monkeypatch):
    monkeypatch.setenv("SURGEON_CACHE_DIR", str(tmp_path))
    calls = []

    def probe(provider, threads):
        calls.append(threads)
        relative = {w: 0.7 if w == 16 else 1.2 for w in hardware.GROUP_WIDTHS}
        return hardware.Probe("cpu: test", 8, {1: 1.0, 8: 0.8}, {}, (16,), relative)

    monkeypatch.setattr(hardware, "probe", probe)
    assert hardware.channel_multiple("cpu", threads=1) == 8
    assert hardware.channel_multiple("cpu", threads=1) == 8
    assert calls == [1]  # measured once
    assert hardware.channel_multiple("cpu", threads=2) == 8
    assert calls == [1, 2]  # another thread count is another measurement
    cached = json.loads((tmp_path / "channel_multiple.json").read_text())
    assert len(cached) == 2 and all(v["multiple"] == 8 for v in cached.values())
    assert hardware.grouped_widths("cpu", threads=1) == (16,)
    assert calls == [1, 2]  # the same measurement answers both


def test_a_provider_onnxruntime_lacks_is_refused():
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime has CUDA here")
    with pytest.raises(SurgeonInputError, match="no CUDAExecutionProvider.*round_to=<int>"):
        hardware.probe("cuda")


def test_round_to_accepts_auto_and_refuses_other_words():
    with pytest.raises(SurgeonInputError, match="'auto'"):
        surgeon.SlimOptions(0.5, round_to="fast")
    assert surgeon.SlimOptions(0.5, round_to="auto").round_to == "auto"


def test_a_model_name_with_other_vector_units_is_another_device(tmp_path, monkeypatch):
    # one "AMD EPYC" VM has AVX-512, another only AVX2: their blocks differ, so the cache must
    # not hand one's answer to the other
    def cpuinfo(flags):
        text = f"processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 {flags}\n\n"
        text += "processor\t: 1\nmodel name\t: AMD EPYC\nflags\t\t: fpu\n"
        (tmp_path / "cpuinfo").write_text(text)

    real = hardware.Path

    def fake_path(p, *rest):
        return real(tmp_path / "cpuinfo") if str(p) == "/proc/cpuinfo" else real(p, *rest)

    monkeypatch.setattr(hardware, "Path", fake_path)
    cpuinfo("avx avx2 avx512f")
    wide = hardware.device_name("cpu")
    cpuinfo("avx avx2")
    narrow = hardware.device_name("cpu")
    assert wide.startswith("cpu: AMD EPYC (AVX-512); onnxruntime ")
    assert narrow.startswith("cpu: AMD EPYC (AVX2); onnxruntime ")


def test_an_older_cache_entry_without_group_widths_is_measured_again(tmp_path, monkeypatch):
    monkeypatch.setenv("SURGEON_CACHE_DIR", str(tmp_path))
    key = f"{hardware.device_name('cpu')}; threads 1"
    older = {"multiple": 4, "grouped_widths": [64], "grouped_relative": {"64": 0.9}}
    for entry in ({"multiple": 4}, older):  # no widths; widths this surgeon no longer times
        (tmp_path / "channel_multiple.json").write_text(json.dumps({key: entry}))
        monkeypatch.setattr(
            hardware, "probe", lambda p, t: hardware.Probe("cpu: test", 16, {}, {}, (16,), {})
        )
        assert hardware.channel_multiple("cpu", threads=1) == 16
