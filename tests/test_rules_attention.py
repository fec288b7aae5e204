"""Rules of surgeon/rules/attention.py: ``F.scaled_dot_product_attention`` (heads prune whole,
a pruned head width keeps the original scale) and ``nn.MultiheadAttention`` traced through
(batch-first or not, with or without the attention weights, self- or cross-attention)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import surgeon
from surgeon.capture import trace
from surgeon.cost import count_macs
from tests.helpers import NetHarnesses, assert_exact_at_zero, assert_slims_at_half, seeded


class Attention(nn.Module):
    """The timm / Hugging Face way: one qkv Linear, heads by reshape, sdpa, a projection."""

    def __init__(self, dim: int = 32, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.inp = nn.Linear(12, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, 5)

    def forward(self, x):
        h = self.inp(x)
        B, N, C = h.shape
        qkv = self.qkv(h).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        a = F.scaled_dot_product_attention(q, k, v)
        return self.head(h + self.proj(a.transpose(1, 2).reshape(B, N, C)))


class OneHead(nn.Module):
    """A single head: its width is what prunes, so sdpa's default scale must be pinned."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(12, 16), nn.Linear(12, 16), nn.Linear(12, 16)
        self.out = nn.Linear(16, 5)

    def forward(self, x):
        q, k, v = (f(x).unsqueeze(1) for f in (self.q, self.k, self.v))
        return self.out(F.scaled_dot_product_attention(q, k, v).squeeze(1))


class MHA(nn.Module):
    def __init__(self, batch_first: bool = True, need_weights: bool = False, cross: bool = False):
        super().__init__()
        self.batch_first, self.need_weights, self.cross = batch_first, need_weights, cross
        self.inp = nn.Linear(12, 32)
        self.mem = nn.Linear(12, 32)
        self.att = nn.MultiheadAttention(32, 4, batch_first=batch_first)
        self.out = nn.Linear(32, 5)

    def forward(self, x):
        y = self.inp(x)
        kv = self.mem(x) if self.cross else y
        a, w = self.att(y, kv, kv, need_weights=self.need_weights)
        out = self.out(a + y)
        return out + w.sum() if self.need_weights else out


def _tokens(batch_first: bool = True):
    return lambda: torch.randn(2, 7, 12) if batch_first else torch.randn(7, 2, 12)


class TestNets(NetHarnesses):
    nets = {
        "sdpa": (Attention, _tokens()),
        "one_head": (OneHead, _tokens()),
        "mha": (MHA, _tokens()),
        "mha_seq_first_weights": (lambda: MHA(False, True), _tokens(False)),
        "mha_cross": (lambda: MHA(cross=True), _tokens()),
    }


def test_sdpa_prunes_whole_heads():
    net, x = TestNets.build("sdpa")
    slim = surgeon.slim(net, 0.5, x)
    assert slim.qkv.out_features == 48 and slim.proj.in_features == 16  # 2 of 4 heads kept
    with torch.no_grad():
        assert slim(x).shape == net(x).shape


def test_a_pruned_head_width_keeps_the_original_scale():
    net, x = TestNets.build("one_head")
    slim = surgeon.slim(net, 0.5, x)
    assert slim.q.out_features == 8
    (call,) = [n for n in slim.graph.nodes if n.target is F.scaled_dot_product_attention]
    assert call.kwargs["scale"] == pytest.approx(16**-0.5)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("need_weights", [True, False])
def test_multihead_attention_is_traced_through_and_its_heads_prune(batch_first, need_weights):
    torch.manual_seed(0)
    net, x = MHA(batch_first, need_weights).eval(), _tokens(batch_first)()
    gm = trace(copy.deepcopy(net), x)
    assert "att" not in {n.target for n in gm.graph.nodes if n.op == "call_module"}
    assert_exact_at_zero(net, x)
    slim = surgeon.slim(net, 0.5, x)
    assert slim.att.in_proj_weight.shape == (48, 16)  # 2 of 4 heads, half the embedding
    assert count_macs(net, x) / count_macs(slim, x) > 3.0


def test_multihead_attention_with_a_mask_is_called_as_it_is():
    class Masked(MHA):
        def forward(self, x):
            y = self.inp(x)
            mask = torch.ones(7, 7, dtype=torch.bool).triu(1)
            return self.out(self.att(y, y, y, attn_mask=mask, need_weights=False)[0] + y)

    torch.manual_seed(0)
    net, x = Masked().eval(), torch.randn(2, 7, 12)
    gm = trace(copy.deepcopy(net), x)
    assert "att" in {n.target for n in gm.graph.nodes if n.op == "call_module"}
    slim = surgeon.slim(net, 0.5, x)
    with torch.no_grad():
        torch.testing.assert_close(surgeon.slim(net, 0.0, x)(x), net(x))
        assert slim(x).shape == net(x).shape


class EncoderDecoder(nn.Module):
    """PyTorch's own transformer layers (torch.nn modules fx would keep whole)."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(8, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.dec = nn.TransformerDecoderLayer(32, 4, 64, batch_first=True)
        self.out = nn.Linear(32, 3)

    def forward(self, x):
        h = self.inp(x)
        return self.out(self.dec(h, self.enc(h)))


def test_transformer_encoder_and_decoder_layers_are_traced_into_and_prune(tmp_path):
    net, x = seeded(EncoderDecoder, lambda: torch.randn(2, 5, 8))
    assert_exact_at_zero(net, x)
    slim = assert_slims_at_half(net, x, tmp_path)
    assert count_macs(net, x) / count_macs(slim, x) > 3.5
    assert slim.enc.layers[0].self_attn.in_proj_weight.shape == (48, 16)
