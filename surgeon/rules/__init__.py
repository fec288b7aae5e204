"""Op rules: how each op relates the channel spaces of its inputs, outputs and parameters.

One registry (:mod:`surgeon.rules.registry`), keyed by module type, function or method name,
and one module per op family:

============== ==================================================================
``params``     parameters and buffers read directly in ``forward``
``conv``       ``nn.Conv*`` (ungrouped, grouped, depthwise), ``nn.ConvTranspose*``
``linear``     ``nn.Linear``, ``nn.Embedding``, ``matmul``
``recurrent``  ``nn.LSTM``, ``nn.GRU``, ``nn.RNN``: the hidden size (gate blocks together)
``attention``  ``F.scaled_dot_product_attention``; ``nn.MultiheadAttention`` traced through
``norm``       batch, layer and group norms
``elementwise`` activations, dropout, PReLU, unary math, dtype / device moves
``broadcast``  add / sub / mul / div with broadcasting
``reduce``     pooling, resampling, mean / sum / amax, softmax
``shape``      view / reshape / flatten, permute, expand, size reads
``index``      cat, split / chunk, getitem, unbind
``library``    model libraries' wrapped functions (torchvision's stochastic depth)
============== ==================================================================

A rule gets a :class:`~surgeon.spaces.RuleContext` and records couplings (index maps
between spaces), blocks (dims that must keep their size, with the reason), parameter slices,
sinks (where values leave their channel class), a constant transfer (for exact dead-channel
removal) and resize hooks (module attributes and size constants in the graph). Anything a
rule does not describe is blocked by :mod:`surgeon.graph`: unknown is never elementwise.
"""

from __future__ import annotations

from surgeon.rules import (  # noqa: F401  (importing a family registers its rules)
    attention,
    broadcast,
    conv,
    elementwise,
    index,
    library,
    linear,
    norm,
    params,
    recurrent,
    reduce,
    shape,
)
from surgeon.rules.base import add_bias, block_all, clear_caches, copy_module, output_spaces
from surgeon.rules.params import attr_tensor, get_attr_rule
from surgeon.rules.registry import Rule, is_strict, lookup, modules_with, register, strict, traits

__all__ = [
    "Rule",
    "register",
    "lookup",
    "traits",
    "modules_with",
    "strict",
    "is_strict",
    "block_all",
    "output_spaces",
    "attr_tensor",
    "get_attr_rule",
    "clear_caches",
    "add_bias",
    "copy_module",
]
