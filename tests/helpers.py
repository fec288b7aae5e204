"""Shared test helpers: the exactness harness (hand-zeroed channels -> ``slim(0)`` -> the same
outputs), the ratio-0.5 harness (slim, train, export with onnxruntime parity), hand-zeroing
channels and counting parameters from module widths."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

import surgeon
from surgeon.cost import count_params
from surgeon.graph import ChannelGraph


def assert_exact_at_zero(model: nn.Module, x: Any, *, tol: float = 1e-5) -> nn.Module:
    """The exactness harness: zero about a third of every prunable group's channels by hand
    (:func:`zero_thirds`), then ``slim(model, 0.0, x)`` must compute the same outputs (to
    ``tol`` of their scale) with fewer parameters. ``model`` is not changed; returns the slim
    model."""
    graph = surgeon.analyze(model, x)
    assert graph.prunable_groups(), "nothing to prune: the harness would prove nothing"
    zeroed = copy.deepcopy(model)
    zero_thirds(zeroed, graph)
    args = x if isinstance(x, tuple) else (x,)
    with torch.no_grad():
        want = zeroed(*args)
    slim = surgeon.slim(zeroed, 0.0, x)
    with torch.no_grad():
        assert_same(slim(*args), want, tol)
    assert count_params(slim) < count_params(model)
    return slim


def assert_slims_at_half(model: nn.Module, x: Any, tmp_path: Path) -> nn.Module:
    """The ratio-0.5 harness: the slim model keeps the output shape, trains (backward reaches
    every parameter), has fewer parameters, and exports to ONNX with onnxruntime parity
    (``surgeon.export`` checks it and raises otherwise). Returns the slim model."""
    args = x if isinstance(x, tuple) else (x,)
    slim = surgeon.slim(model, 0.5, x)
    with torch.no_grad():
        ref = model(*args)
    out = slim(*args)
    assert out.shape == ref.shape
    out.float().pow(2).mean().backward()
    assert all(p.grad is not None for p in slim.parameters() if p.requires_grad)
    assert count_params(slim) < count_params(model)
    surgeon.export(slim.eval(), x, tmp_path / "slim.onnx")
    return slim


def assert_same(got: torch.Tensor, want: torch.Tensor, tol: float = 1e-5) -> None:
    """``got`` equals ``want`` to ``tol`` of the output's scale (its largest magnitude), so that
    a network whose outputs are tiny (1e-9) is held to as much as one whose outputs are O(1)."""
    scale = float(want.detach().abs().max())
    assert scale > 0, "the reference output is all zero: the comparison would prove nothing"
    torch.testing.assert_close(got, want, atol=tol * scale, rtol=tol)


def randomize_norms(model: nn.Module, seed: int = 0) -> None:
    """Give every norm non-trivial statistics and affine, so BN is not the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            if (
                isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm))
                and m.weight is not None
            ):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


def zero_thirds(model: nn.Module, graph: ChannelGraph) -> dict[str, int]:
    """Zero about a third of the output channels of every producer of every prunable group.

    For each group, the classes with index % 3 == 1 are chosen; every producer slice of those
    classes (Conv / Linear filter rows and bias) and every norm's affine (weight and bias) is
    zeroed in ``model``. Returns, per producer module, how many output channels were zeroed.
    """
    zeroed: dict[str, int] = {}
    with torch.no_grad():
        for group in graph.prunable_groups():
            chosen = np.arange(group.n_classes) % 3 == 1
            for sl in group.params:
                if sl.role not in ("producer", "norm"):
                    continue
                cls = group.class_of[sl.space]
                idx = np.unique(sl.tensor_index(len(cls))[chosen[cls]])
                t = getattr(model.get_submodule(sl.owner), sl.name)
                if t is None:
                    continue
                t.index_fill_(sl.dim, torch.as_tensor(idx), 0.0)
                if sl.role == "producer" and sl.name == "weight":
                    zeroed[sl.owner] = len(idx)
    return zeroed


def params_from_widths(model: nn.Module) -> int:
    """Parameter count computed from module attributes alone (not from tensor shapes)."""
    total = 0
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            k = int(np.prod(m.kernel_size))
            total += m.out_channels * (m.in_channels // m.groups) * k + (
                m.out_channels if m.bias is not None else 0
            )
        elif isinstance(m, nn.Linear):
            total += m.out_features * m.in_features + (m.out_features if m.bias is not None else 0)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            total += 2 * m.num_features if m.affine else 0
        elif isinstance(m, nn.LayerNorm):
            total += 2 * int(np.prod(m.normalized_shape)) if m.elementwise_affine else 0
        elif isinstance(m, nn.GroupNorm):
            total += 2 * m.num_channels if m.affine else 0
        elif isinstance(m, nn.Embedding):
            total += m.num_embeddings * m.embedding_dim
    return total


def out_channels(module: nn.Module) -> int:
    for attr in ("out_channels", "out_features", "num_features"):
        if hasattr(module, attr):
            return getattr(module, attr)
    raise AssertionError(f"{type(module).__name__} has no output width")
