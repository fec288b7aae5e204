"""Rules of surgeon/rules/shape.py: view / reshape / flatten, permute / transpose, expand, and
size reads (channels-last blocks, flatten heads, channel shuffle, attention heads)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

import surgeon
from tests.helpers import (
    NetHarnesses,
    Widen,
    assert_exact_at_zero,
    assert_slims_at_half,
    groups_of,
    matching_rows,
    seeded,
)


class ChannelsLast(nn.Module):
    """Conv, then a channels-last LayerNorm / MLP through permute, then back."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3, padding=1)
        self.ln = nn.LayerNorm(12)
        self.fc1 = nn.Linear(12, 24)
        self.fc2 = nn.Linear(24, 12)
        self.gamma = nn.Parameter(torch.rand(12) + 0.5)
        self.head = nn.Conv2d(12, 3, 1)

    def forward(self, x):
        y = self.conv(x)
        z = y.permute(0, 2, 3, 1)
        z = self.fc2(F.gelu(self.fc1(self.ln(z))))
        z = z * self.gamma
        return self.head(y + z.permute(0, 3, 1, 2))


class FlattenNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d((2, 2))
        self.flat = nn.Flatten()
        self.fc = nn.Linear(32, 16)
        self.drop = nn.Dropout(0.1)
        self.fc2 = nn.Linear(16, 12)
        self.fc3 = nn.Linear(12, 3)

    def forward(self, x):
        y = self.flat(self.pool(F.max_pool2d(torch.relu(self.conv(x)), 2)))
        y = self.drop(F.leaky_relu(self.fc(y), 0.1))
        y = self.fc2(y).reshape(-1, 3, 4).transpose(1, 2).reshape(y.shape[0], 12)
        return self.fc3(y.sigmoid())


class ReshapeAsNet(Widen):
    """``view`` into groups and ``reshape_as`` back (LeViT's residual shapes)."""

    def forward(self, x):
        h = torch.relu(self.a(x))
        g = (h.view(x.shape[0], x.shape[1], 3, 4) * 2.0).reshape_as(h)
        return self.o(g + h)


class TransposeAttrNet(nn.Module):
    """Weights used as ``x @ w.T`` (Falcon's linear layers) and activations through ``.mT``
    and ``.T``: the attributes are permutes."""

    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(12, 6) * 0.4)
        self.b1 = nn.Parameter(torch.randn(12) * 0.1)
        self.w2 = nn.Parameter(torch.randn(10, 12) * 0.3)
        self.o = nn.Linear(10, 3)

    def forward(self, x):
        h = torch.relu(x @ self.w1.T + self.b1)  # (2, 5, 12)
        h = (self.w2 @ h.mT).mT  # (2, 5, 10)
        return self.o(torch.tanh(h[0].T.T))


NETS = {
    "reshape_as": (ReshapeAsNet, lambda: torch.randn(2, 5, 6)),
    "channels_last": (ChannelsLast, lambda: torch.randn(2, 3, 6, 6)),
    "flatten_view": (FlattenNet, lambda: torch.randn(2, 3, 16, 16)),
}


class TestNets(NetHarnesses):
    nets = NETS


class ShuffleNet(nn.Module):
    """chunk + channel shuffle through view / transpose / view, as in ShuffleNetV2."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.branch = nn.Conv2d(8, 8, 1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        a, b = x.chunk(2, dim=1)
        x = torch.cat((a, torch.relu(self.branch(b))), dim=1)
        n, c, h, w = x.size()
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, -1, h, w)
        return self.head(x)


class Attention(nn.Module):
    def __init__(self, dim=24, heads=3):
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.patch = nn.Conv2d(3, dim, 4, 4)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, 5, dim))
        self.ln = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)
        self.head = nn.Linear(dim, 5)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        b, n, c = x.shape
        x = torch.cat([self.cls.expand(b, -1, -1), x], dim=1) + self.pos
        qkv = (
            self.qkv(self.ln(x))
            .reshape(b, n + 1, 3, self.num_heads, self.head_dim)
            .permute(2, 0, 3, 1, 4)
        )
        q, k, v = qkv.unbind(0)
        att = (q @ k.transpose(-2, -1) * self.head_dim**-0.5).softmax(dim=-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(b, n + 1, c))
        x = x + self.fc2(F.gelu(self.fc1(self.ln(x))))
        return self.head(x[:, 0])


def test_channel_shuffle_is_pruned_consistently(tmp_path):
    torch.manual_seed(0)
    net, x = ShuffleNet().eval(), torch.randn(2, 3, 8, 8)
    (g,) = groups_of(surgeon.analyze(net, x), "stem", name=None)
    assert g.prunable, g.reasons
    slim = assert_exact_at_zero(net, x)
    assert slim.stem.out_channels < 16
    half = assert_slims_at_half(net, x, tmp_path)
    assert half.stem.out_channels == 8 and half.head.in_channels == 8
    assert half(x).shape == (2, 4, 8, 8)


def test_attention_heads_are_pruned_across_q_k_v_and_proj(tmp_path):
    torch.manual_seed(0)
    net, x = Attention().eval(), torch.randn(2, 3, 8, 8)
    graph = surgeon.analyze(net, x)
    (g,) = groups_of(graph, "qkv", name=None)
    assert g.prunable, g.reasons
    assert g.n_classes == 3  # whole heads: q, k and v of a head go together
    (emb,) = groups_of(graph, "patch", name=None)
    assert emb.prunable, emb.reasons  # the embedding width, through cls cat, pos add, LN, residuals
    slim = assert_slims_at_half(net, x, tmp_path)
    assert slim.qkv.out_features == 3 * 16 and slim.proj.in_features == 16
    # its forward reshapes the merged heads to the width it reads off the embedding (c): the
    # embedding keeps 16 (2 heads x 8) where the ratio alone keeps 12, and the own class comes back
    assert type(slim) is Attention, slim.meta["surgeon.plan"]["form_reason"]
    assert (
        slim.patch.out_channels == 16
        and slim.cls.shape == (1, 1, 16)
        and slim.pos.shape == (1, 5, 16)
    )
    assert slim.fc1.out_features == 24
    out = slim(x)
    assert out.shape == (2, 5)
    out.sum().backward()


class PadRollNet(nn.Module):
    """Spatial pad (constant and reflect), a spatial roll and flip between convs: none of them
    may block the channels."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 12, 3)
        self.b = nn.Conv2d(12, 12, 3)
        self.c = nn.Conv2d(12, 4, 1)

    def forward(self, x):
        y = torch.relu(self.a(F.pad(x, (1, 1, 1, 1))))
        y = torch.roll(F.pad(y, (1, 1, 1, 1), mode="reflect"), shifts=(1, 1), dims=(2, 3))
        return self.c(torch.relu(self.b(y)).flip(-1))


def test_pad_roll_flip_keep_channels_free(tmp_path):
    torch.manual_seed(0)
    net, x = PadRollNet().eval(), torch.randn(2, 3, 10, 10)
    assert_exact_at_zero(net, x)
    slim = assert_slims_at_half(net, x, tmp_path)
    assert slim.a.out_channels == 6 == slim.b.in_channels and slim.b.out_channels == 6


def test_weight_transpose_attributes_prune_like_a_linear(tmp_path):
    # raw parameters take no part in the zeroing harness: the original with the removed
    # channels masked out must compute what the slim model computes
    model, x = seeded(TransposeAttrNet, lambda: torch.randn(2, 5, 6))
    graph = surgeon.analyze(model, x)
    assert groups_of(graph, "", 0, "w1")[0].prunable and groups_of(graph, "", 0, "w2")[0].prunable
    slim = assert_slims_at_half(model, x, tmp_path, compensate=False)
    assert slim.w1.shape == (6, 6) and slim.w2.shape == (5, 6)
    keep1 = matching_rows(model.b1, slim.b1)
    keep2 = matching_rows(model.w2[:, keep1[0]], slim.w2[:, 0])
    with torch.no_grad():
        masked = TransposeAttrNet()
        masked.load_state_dict(model.state_dict())
        gone1 = torch.ones(12, dtype=torch.bool).index_fill_(0, keep1, False)
        masked.w1[gone1] = 0
        masked.b1[gone1] = 0
        masked.w2[:, gone1] = 0
        gone2 = torch.ones(10, dtype=torch.bool).index_fill_(0, keep2, False)
        masked.w2[gone2] = 0
        masked.o.weight[:, gone2] = 0
        torch.testing.assert_close(slim(x), masked(x))
