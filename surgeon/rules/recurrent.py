"""Recurrent layers: ``nn.LSTM``, ``nn.GRU``, ``nn.RNN``.

The hidden size is a channel space. Hidden unit ``i`` owns row ``g * H + i`` of every gate block
``g`` of ``weight_ih_l*``, ``weight_hh_l*`` and the biases (4 gates for an LSTM, 3 for a GRU,
1 for an RNN), column ``i`` of ``weight_hh_l*``, and feature ``d * H + i`` of the output for
direction ``d``. Every layer and direction of one module shares ``hidden_size``, so the unit
is one class across all of them (the module stays an ``nn.LSTM``). With ``proj_size`` (LSTM),
the cell width ``H`` and the projected width ``P`` are two spaces: ``weight_hr_l*`` maps the
first to the second, and the output, ``weight_hh_l*``'s columns and the next layer's input
carry ``P``.

The rows of the gate blocks are a space of their own (``<node>.gates``, ``G * H`` wide, no
tensor of the graph holds it), coupled to the hidden space block by block, so that each
weight's dim 0 is cut once. The input features are a contraction sink (a feature whose
``weight_ih_l0`` columns are all zero contributes nothing); the hidden units are read by the
recurrence at every step, so none is ever dead; the outputs vary (nothing constant is
claimed). A packed sequence, or an LSTM's ``(h_n, c_n)`` read from its result, blocks the
module (its pieces are not tensors the graph follows).
"""

from __future__ import annotations

import numpy as np
import torch.nn as nn

from surgeon.rules.base import block_all, unknown_values, zero_cols
from surgeon.rules.registry import register
from surgeon.spaces import RuleContext

__all__ = ["recurrent_rule"]

_GATES = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}


def _gates(m: nn.Module) -> int:
    for cls, n in _GATES.items():
        if isinstance(m, cls):
            return n
    raise TypeError(type(m).__name__)


@register(nn.LSTM, nn.GRU, nn.RNN)
def recurrent_rule(ctx: RuleContext) -> None:
    m = ctx.module
    assert isinstance(m, nn.RNNBase)
    x = ctx.arg(0, "input")
    xs = ctx.shape(x)
    out = f"{ctx.out}#0"
    if xs is None or out not in ctx.shapes:
        return block_all(ctx, f"{ctx.describe_name()} on a packed sequence")
    gates = _gates(m)
    hidden, proj = m.hidden_size, getattr(m, "proj_size", 0)
    width = proj or hidden  # what the output, h_n and weight_hh's columns carry
    dirs = 2 if m.bidirectional else 1
    feat = len(xs) - 1
    owner = str(ctx.node.target)

    cell = (f"{ctx.out}.hidden", 0)
    rows = (f"{ctx.out}.gates", 0)
    ctx.shapes[cell[0]] = (hidden,)
    ctx.shapes[rows[0]] = (gates * hidden,)
    state = (f"{ctx.out}.proj", 0) if proj else cell
    if proj:
        ctx.shapes[state[0]] = (proj,)
    for s in {cell, rows, state}:
        ctx.produce(s)
    units = np.arange(hidden)
    for g in range(gates):
        ctx.couple(rows, cell, g * hidden + units, units)

    # time and batch dims pass through; the features become the directions' hidden units
    for d in range(feat):
        ctx.identity((x.name, d), (out, d))
    ctx.produce((out, feat))
    for d in range(dirs):
        ctx.couple((out, feat), state, d * width + np.arange(width), np.arange(width))

    xin = (x.name, feat)
    for layer in range(m.num_layers):
        for sfx in ("", "_reverse")[:dirs]:
            ctx.param(owner, f"weight_ih_l{layer}{sfx}", 0, rows)
            ctx.param(owner, f"weight_hh_l{layer}{sfx}", 0, rows)
            if m.bias:
                ctx.param(owner, f"bias_ih_l{layer}{sfx}", 0, rows)
                ctx.param(owner, f"bias_hh_l{layer}{sfx}", 0, rows)
            ctx.param(owner, f"weight_hh_l{layer}{sfx}", 1, state, role="consumer")
            if proj:
                ctx.param(owner, f"weight_hr_l{layer}{sfx}", 0, state)
                ctx.param(owner, f"weight_hr_l{layer}{sfx}", 1, cell, role="consumer")
            # layer 0 reads the input features; a later layer the previous one's output,
            # laid out as the output is (direction-major units)
            ctx.param(
                owner, f"weight_ih_l{layer}{sfx}", 1, xin if layer == 0 else (out, feat),
                role="consumer",
            )  # fmt: skip

    weights = [getattr(m, f"weight_ih_l0{sfx}") for sfx in ("", "_reverse")[:dirs]]

    def ignores(alive_rows: np.ndarray | None) -> np.ndarray:
        dead = np.ones(xs[feat], dtype=bool)
        for w in weights:
            dead &= zero_cols(w, None)
        return dead

    ctx.sink(xin, "contract", ignores=ignores, out_space=(out, feat))
    # the recurrence reads every unit of the state (and of an LSTM's cell) at the next step:
    # no unit is ever unused, so none goes as dead
    for s in {cell, state}:
        ctx.sink(s, "stat")

    # the initial states: h_0 carries the output's width, an LSTM's c_0 the cell's
    hx = ctx.arg(1, "hx")
    states = (
        [(hx, state)]
        if not isinstance(hx, (tuple, list))
        else list(zip(hx, (state, cell), strict=False))
    )
    batch = None if len(xs) == 2 else (0 if m.batch_first else 1)
    for node, space in states:
        shape = ctx.shape(node)
        if shape is None:
            continue
        ctx.identity((node.name, len(shape) - 1), space)
        ctx.block((node.name, 0), "layers x directions of a recurrent state")
        if len(shape) == 3 and batch is not None:
            ctx.identity((node.name, 1), (x.name, batch))
    # h_n of a GRU / RNN: a tensor piece of the result, laid out as h_0
    hn = f"{ctx.out}#1"
    if hn in ctx.shapes:
        shape = ctx.shapes[hn]
        ctx.identity((hn, len(shape) - 1), state)
        ctx.block((hn, 0), "layers x directions of a recurrent state")
        if len(shape) == 3 and batch is not None:
            ctx.identity((hn, 1), (x.name, batch))

    # every value varies: the outputs and the spaces inside (cell, gate rows, projection)
    outs = [(out, ctx.shapes[out])] + ([(hn, ctx.shapes[hn])] if hn in ctx.shapes else [])
    inner = [(s[0], ctx.shapes[s[0]]) for s in {cell, rows, state}]
    ctx.transfer(
        lambda c: {
            (name, d): unknown_values(s[d]) for name, s in outs + inner for d in range(len(s))
        }
    )

    def resize(size) -> None:  # noqa: ANN001 - surgeon.passes.state.Sizes
        m.input_size = size(xin)
        m.hidden_size = size(cell)
        if proj:
            m.proj_size = size(state)
        m._init_flat_weights()  # the weight list the forward reads

    ctx.on_resize(resize)
