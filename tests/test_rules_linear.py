"""Rules of surgeon/rules/linear.py: nn.Linear, nn.Embedding and matmul (token models), and a
constant channel folded into a Linear that has no bias yet."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

import surgeon
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


class TestNets(NetHarnesses):
    nets = {
        "tokens": (TokenNet, lambda: torch.randint(0, 20, (2, 7))),
        "einsum_attention": (EinsumNet, lambda: torch.randn(2, 5, 8)),
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
