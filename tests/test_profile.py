"""onnxruntime's node profile: node times, MACs from shapes, rows matched between two files."""

from __future__ import annotations

import torch
import torch.nn as nn

import surgeon
from surgeon.profile import NodeTime, layer_name, layer_rows, node_profile


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 1), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 8 * 8, 10),
    ).eval()  # fmt: skip


def test_the_profile_times_every_node_and_counts_conv_macs(tmp_path):
    model, x = _net(), torch.randn(1, 3, 8, 8)
    path = surgeon.export(model, x, tmp_path / "m.onnx")
    seen = []
    found = node_profile(
        path, x, threads=1, runs=5, warmup=2, on_run=lambda i, n: seen.append((i, n))
    )
    assert seen[-1] == (7, 7)
    conv1, conv2 = (t for t in found.values() if t.op == "Conv")
    # as onnxruntime runs them: output channels padded to its block (8 -> 8 or 16)
    assert conv1.macs % (8 * 8 * 27) == 0 and 8 <= conv1.macs // (8 * 8 * 27) <= 16
    assert conv2.macs == 8 * 8 * 16 * 8
    gemm = [t for t in found.values() if t.op in ("Gemm", "MatMul", "FusedGemm")]
    assert [t.macs for t in gemm] == [16 * 8 * 8 * 10]
    assert all(t.ms > 0 for t in found.values())


def test_rows_match_nodes_by_name_and_say_what_paid(tmp_path):
    a = {"n1": NodeTime("n1", "Conv", 2.0, 400), "n2": NodeTime("n2", "Relu", 1.0, 0)}
    b = {"n1": NodeTime("n1", "Conv", 1.0, 100), "n3": NodeTime("n3", "Add", 0.5, 0)}
    rows = layer_rows(a, b)
    assert [r["node"] for r in rows] == ["n1", "n2", "n3"]
    assert (rows[0]["theoretical"], rows[0]["measured"], rows[0]["efficiency"]) == (4.0, 2.0, 0.5)
    assert rows[1]["ms"] == [1.0, None] and rows[1]["measured"] is None
    assert rows[2]["ms"] == [None, 0.5]


def test_layer_names_read_as_module_paths():
    node = "/model/layer1/layer1.0/relu/Relu_output_0_nchwc"
    assert layer_name(node, "Conv") == "layer1.0.relu (Conv)"
    assert layer_name("/model/fc/Gemm", "Gemm") == "fc (Gemm)"
    assert layer_name("Conv_3", "Conv") == "Conv_3 (Conv)"


def test_a_slim_model_profiles_node_for_node(tmp_path):
    model, x = _net(), torch.randn(1, 3, 8, 8)
    slim = surgeon.slim(model, 0.5, x)
    paths = [surgeon.export(m, x, tmp_path / f"{i}.onnx") for i, m in enumerate((model, slim))]
    rows = layer_rows(*(node_profile(p, x, threads=1, runs=3) for p in paths))
    convs = [r for r in rows if r["op"] == "Conv"]
    assert all(r["ms"][1] is not None for r in convs)  # the same node names
    # as run: 8 -> 4 channels stay one block (padded alike), 16 -> 8 halves the second conv
    assert all(r["macs"][1] <= r["macs"][0] for r in convs)
    assert convs[1]["theoretical"] >= 2.0
