"""Parameters and buffers read directly in ``forward`` (layer scales, cls tokens, position embeddings)."""

from __future__ import annotations

import numpy as np
import torch.nn as nn

from surgeon.rules.base import (
    NAN,
    _nan,
    attr_tensor,
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
        t = attr_tensor(gm, target).detach().double()
        res = {}
        for d in range(t.dim()):
            flat = t.movedim(d, 0).reshape(t.shape[d], -1)
            if flat.shape[1] == 0:
                res[(out, d)] = _nan(t.shape[d])
                continue
            lo, hi = flat.min(1).values, flat.max(1).values
            res[(out, d)] = np.where((lo == hi).numpy(), lo.numpy(), NAN)
        return res

    ctx.transfer(transfer)
