"""Attention: ``F.scaled_dot_product_attention`` and what ``nn.MultiheadAttention`` computes.

``sdpa(q, k, v)`` with q ``(..., L, E)``, k ``(..., S, E)``, v ``(..., S, Ev)`` gives
``(..., L, Ev)``: the leading (batch, head) dims are one space across q, k, v and the output;
q's and k's ``E`` are contracted together (a statistic sink, like ``q @ k.T``); k's and v's
``S`` are the same keys; v's ``Ev`` is the output's. A pruned ``E`` would change the default
scale ``1/sqrt(E)``, so the resize hook writes the original scale into the call. A value
channel that is constant over the keys comes out as the same constant (softmax rows sum to 1).

``nn.MultiheadAttention`` is traced through (:func:`multihead_attention`, used by the tracer
for a module fx would otherwise keep opaque) as the in-projection, heads, sdpa and the
out-projection it computes, with its own parameters: its heads then prune like any other
attention's, and its embedding dim like any other linear's.
"""

from __future__ import annotations

import math
from typing import Any

import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from surgeon.rules.base import block_all
from surgeon.rules.registry import register
from surgeon.spaces import RuleContext

__all__ = ["sdpa_rule", "multihead_attention", "EXPANSIONS"]


@register(F.scaled_dot_product_attention)
def sdpa_rule(ctx: RuleContext) -> None:
    q, k, v = ctx.arg(0, "query"), ctx.arg(1, "key"), ctx.arg(2, "value")
    mask = ctx.arg(3, "attn_mask", None)
    shapes = [ctx.shape(t) for t in (q, k, v)]
    ys = ctx.out_shape
    if ys is None or any(s is None or len(s) < 2 or len(s) != len(ys) for s in shapes):
        return block_all(ctx, f"{ctx.describe_name()} on operands of different ranks")
    if ctx.arg(7, "enable_gqa", False):
        return block_all(ctx, f"{ctx.describe_name()} with grouped query heads")
    qs, ks, vs = shapes
    n, out = len(ys), ctx.out
    last, seq = n - 1, n - 2
    for t, ts in ((q, qs), (k, ks), (v, vs)):
        for d in range(n - 2):
            if ts[d] == ys[d]:
                ctx.identity((t.name, d), (out, d))
            else:
                ctx.block((t.name, d), f"dim broadcast by {ctx.describe_name()}")
    ctx.couple((q.name, last), (k.name, last))  # contracted: q . k
    ctx.sink((q.name, last), "stat")
    ctx.sink((k.name, last), "stat")
    ctx.identity((q.name, seq), (out, seq))
    ctx.couple((k.name, seq), (v.name, seq))  # the same keys
    ctx.sink((v.name, seq), "stat")
    ctx.identity((v.name, last), (out, last))
    if isinstance(mask, fx.Node):
        _mask_dims(ctx, mask, q, k, n)
    elif mask is not None:
        return block_all(ctx, f"{ctx.describe_name()} with a mask it cannot read")
    # softmax rows sum to 1: a value channel constant over the keys is that constant
    ctx.transfer(lambda c: {(out, last): c((v.name, last))})
    if ctx.arg(6, "scale", None) is None:
        ctx.on_resize(_pin_scale(ctx.node, (q.name, last), qs[last]))


def _mask_dims(ctx: RuleContext, mask: fx.Node, q: fx.Node, k: fx.Node, n: int) -> None:
    """The mask broadcasts against ``(..., L, S)``: a dim of size 1 is free, the others are
    the same space as q's (leading, L) or k's (S)."""
    ms = ctx.shape(mask) or ()
    for d, size in enumerate(ms):
        j = n - len(ms) + d  # the aligned dim of the scores
        if size == 1 or j < 0:
            ctx.block((mask.name, d), f"size-1 dim of the mask of {ctx.describe_name()}")
        elif j == n - 1:
            ctx.couple((mask.name, d), (k.name, n - 2))
        else:
            ctx.couple((mask.name, d), (q.name, j))


def _pin_scale(node: fx.Node, space: Any, size: int):
    def resize(sizes):
        if sizes(space) != size:
            node.kwargs = {**node.kwargs, "scale": 1.0 / math.sqrt(size)}

    return resize


# -- nn.MultiheadAttention, traced through ----------------------------------------------
def multihead_attention(
    m: nn.MultiheadAttention,
    query: Any,
    key: Any,
    value: Any,
    key_padding_mask: Any = None,
    need_weights: bool = True,
    attn_mask: Any = None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
) -> Any:
    """What ``m(query, key, value, ...)`` computes on batched inputs, written with ops that
    have rules; ``NotImplemented`` where it does not say the same thing (masks, bias_k / v,
    zero attention, separate q / k / v projections), so the module is called as it is."""
    if (
        key_padding_mask is not None
        or attn_mask is not None
        or is_causal
        or m.bias_k is not None
        or m.add_zero_attn
        or not m._qkv_same_embed_dim
        or m.in_proj_weight is None
    ):
        return NotImplemented
    heads, d = m.num_heads, m.head_dim
    same = query is key and key is value
    if not m.batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    w, b = m.in_proj_weight, m.in_proj_bias
    if same:  # one projection to q, k and v: (B, L, 3 * heads * d)
        qkv = F.linear(query, w, b).unflatten(-1, (3, heads, d)).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
    else:
        wq, wk, wv = w.chunk(3)  # unpacked: a traced value cannot be iterated
        bq, bk, bv = b.chunk(3) if b is not None else (None, None, None)
        q, k, v = (
            F.linear(t, wi, bi).unflatten(-1, (heads, d)).transpose(1, 2)
            for t, wi, bi in ((query, wq, bq), (key, wk, bk), (value, wv, bv))
        )
    p = m.dropout if m.training else 0.0
    if need_weights:  # the weights are returned too: the scores are written out
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(d))
        weights = F.dropout(scores.softmax(-1), p, m.training)
        out = weights @ v
        returned = weights.mean(1) if average_attn_weights else weights
    else:
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        returned = None
    # its own forward takes head_dim = embed_dim // num_heads: the merged heads are as wide
    # as the embedding (read, so the width tie keeps the two in step and it runs after)
    merged = out.transpose(1, 2)
    out = m.out_proj(merged.reshape(merged.size(0), merged.size(1), query.size(-1)))
    if not m.batch_first:
        out = out.transpose(0, 1)
    return out, returned


# module type -> the function the tracer calls in its place (with the module first)
EXPANSIONS: dict[type[nn.Module], Any] = {nn.MultiheadAttention: multihead_attention}


def expansion_for(m: nn.Module) -> Any:
    """The traced-through form of ``m``'s call, when its forward is the library's own."""
    fn = EXPANSIONS.get(type(m))
    if fn is None:
        for cls, f in EXPANSIONS.items():
            if isinstance(m, cls) and type(m).forward is cls.forward:
                return f
    return fn
