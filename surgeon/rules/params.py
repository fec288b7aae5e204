"""Parameters and buffers read directly in ``forward`` (layer scales, cls tokens, position embeddings)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from surgeon.rules.base import (
    NAN,
    attr_tensor,
    unknown_values,
)
from surgeon.spaces import RuleContext


def get_attr_rule(ctx: RuleContext) -> None:
    """A parameter / buffer read in forward: every dim is a space of its own (a source)."""
    shape = ctx.out_shape
    if shape is None:
        return
    owner, _, name = str(ctx.node.target).rpartition(".")
    is_param = isinstance(attr_tensor(ctx.gm, str(ctx.node.target)), nn.Parameter)
    for d in range(len(shape)):
        ctx.produce((ctx.out, d))
        ctx.param(owner, name, d, (ctx.out, d), role="param" if is_param else "buffer")
    out, gm, target = ctx.out, ctx.gm, str(ctx.node.target)

    def transfer(c):
        return {(out, d): v for d, v in enumerate(constant_slices(attr_tensor(gm, target)))}

    ctx.transfer(transfer)


def constant_slices(t: torch.Tensor) -> list[np.ndarray]:
    """Per dim of ``t``: each slice's value where the whole slice holds one value, else NaN.

    A slice can be constant only where its first and last elements are equal, so only those
    candidates are read in full (a 2304 x 768 attention weight has none: two reads a dim).
    """
    res = []
    with torch.no_grad():
        t = t.detach()
        for d in range(t.dim()):
            n = t.shape[d]
            view = t.movedim(d, 0)
            if t.numel() == 0:
                res.append(unknown_values(n))
                continue
            corner = (slice(None),) + (0,) * (t.dim() - 1)
            last = (slice(None),) + (-1,) * (t.dim() - 1)
            cand = torch.nonzero(view[corner] == view[last]).reshape(-1)
            vals = unknown_values(n)
            if len(cand):
                flat = view.index_select(0, cand).reshape(len(cand), -1).double()
                lo, hi = flat.min(1).values, flat.max(1).values
                vals[cand.cpu().numpy()] = np.where((lo == hi).cpu().numpy(), lo.cpu().numpy(), NAN)
            res.append(vals)
    return res
