"""Rules of surgeon/rules/linear.py: nn.Linear, nn.Embedding and matmul (token models), and a
constant channel folded into a Linear that has no bias yet."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import surgeon
from surgeon.rules import base
from surgeon.rules.base import clear_caches, zero_cols, zero_rows
from tests.helpers import NetHarnesses, assert_exact, constant_channels


class TokenNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 16)
        self.fc = nn.Linear(16, 32)
        self.ln = nn.LayerNorm(32)
        self.out = nn.Linear(32, 5)

    def forward(self, ids):
        h = self.ln(F.relu(self.fc(self.emb(ids))))
        att = torch.softmax(h @ h.transpose(1, 2), dim=-1)
        return self.out(att @ h).mean(1)


class EinsumNet(nn.Module):
    """Attention written with ``einsum``: heads (``h``) pass, the head dim (``d``) is
    contracted in the scores and kept in the values, positions are contracted."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(8, 3 * 16)
        self.proj = nn.Linear(16, 8)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, 4, 4).unbind(2)
        att = torch.einsum("bqhd,bkhd->bhqk", q, k).softmax(-1)
        y = torch.einsum("bhqk,bkhd->bqhd", att, v)
        return self.proj(y.reshape(b, n, 16))


class MatmulLinear(nn.Linear):
    """Falcon's linear layer: ``x @ weight.T`` written out (traced through, not a leaf)."""

    def forward(self, x):
        return x @ self.weight.T


class MatmulWeights(nn.Module):
    """``x @ w.T``, ``x @ w.t()`` and ``x @ w`` with an ``(in, out)`` weight: Linear layers
    without bias, written as matmuls with a parameter."""

    def __init__(self):
        super().__init__()
        self.fc1 = MatmulLinear(6, 12, bias=False)
        self.w2 = nn.Parameter(torch.randn(12, 10) * 0.3)  # (in, out)
        self.w3 = nn.Parameter(torch.randn(8, 10) * 0.3)
        self.o = nn.Linear(8, 3)

    def forward(self, x):
        h = F.gelu(self.fc1(x))
        h = torch.relu(torch.matmul(h, self.w2))
        return self.o(F.silu(h @ self.w3.t()))


class TestNets(NetHarnesses):
    nets = {
        "tokens": (TokenNet, lambda: torch.randint(0, 20, (2, 7))),
        "einsum_attention": (EinsumNet, lambda: torch.randn(2, 5, 8)),
        "matmul_weights": (MatmulWeights, lambda: torch.randn(2, 5, 6)),
    }


def test_einsum_heads_prune_whole():
    slim = TestNets.slim("einsum_attention")
    assert slim.qkv.out_features == 24 and slim.proj.in_features == 8


class FoldIntoNoBias(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(8, 8, bias=False)
        self.c = nn.Linear(8, 2)

    def forward(self, x):
        return self.c(F.relu(self.b(F.relu(self.a(x)))))


def test_bias_created_by_a_fold_is_resized_with_its_module():
    """(A review regression: it once slimmed wrongly.)"""
    torch.manual_seed(0)
    net = FoldIntoNoBias()
    constant_channels(net.a, 2, 0.7)
    with torch.no_grad():
        net.b.weight[:, 2] *= 100
    x = torch.randn(3, 4)
    slim = surgeon.slim(net, 0.5, x)
    assert slim.b.bias is not None and slim.b.bias.shape == (slim.b.out_features,)
    assert slim(x).shape == (3, 2)
    assert_exact(net, x)


@settings(max_examples=80)
@given(
    rows=st.integers(1, 6),
    cols=st.integers(1, 5),
    groups=st.sampled_from([1, 2]),
    kernel=st.sampled_from([(), (2,), (1, 2)]),
    zero_fraction=st.sampled_from([0.0, 0.3, 0.8, 1.0]),
    transposed=st.booleans(),
    dense_from=st.sampled_from([0.0, 2.0]),
    data=st.data(),
)
def test_zero_rows_and_cols_match_the_summed_kernel_magnitudes(
    rows, cols, groups, kernel, zero_fraction, transposed, dense_from, data
):
    """zero_rows / zero_cols answer from the zero pattern (kept as a matrix or as coordinates)
    what sum(|w|) over the kernel says."""
    old, base._DENSE_FROM = base._DENSE_FROM, dense_from
    try:
        _check_zero_pattern(rows, cols, groups, kernel, zero_fraction, transposed, data)
    finally:
        base._DENSE_FROM = old


def _check_zero_pattern(rows, cols, groups, kernel, zero_fraction, transposed, data):
    rows *= groups
    g = torch.Generator().manual_seed(rows * 31 + cols)
    shape = (cols, rows, *kernel) if transposed else (rows, cols, *kernel)
    w = torch.randn(shape, generator=g) * (torch.rand(shape, generator=g) >= zero_fraction)
    k = w.abs().flatten(2).sum(-1) if w.dim() > 2 else w.abs()
    k = (k.T if transposed else k).numpy()  # [rows, cols]
    bools = st.lists(st.booleans(), min_size=rows * cols, max_size=rows * cols)
    dead_cells = np.array(data.draw(bools)).reshape(rows, cols)
    dead_cols = dead_cells[0]
    alive = np.array(data.draw(st.lists(st.booleans(), min_size=rows, max_size=rows)))
    clear_caches()
    assert (zero_rows(w, transposed=transposed) == (k == 0).all(1)).all()
    for dead in (dead_cols, dead_cells):
        want = ((k == 0) | dead).all(1)
        assert (zero_rows(w, dead, transposed=transposed) == want).all()
    if transposed and groups > 1:  # a grouped weight is never stored transposed
        return
    for live in (None, alive):
        m = np.ones(rows, dtype=bool) if live is None else live
        per_group = ((k == 0) | ~m[:, None]).reshape(groups, rows // groups, cols).all(1)
        got = zero_cols(w, live, groups=groups, transposed=transposed)
        assert (got == per_group.reshape(-1)).all()
