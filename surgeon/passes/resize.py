"""ResizePass: physically slice what the plan removes, then re-check every shape."""

from __future__ import annotations

import operator
from collections import defaultdict
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from surgeon.capture import propagate_shapes
from surgeon.errors import SurgeonPassError, SurgeonTraceError
from surgeon.passes.base import PassResult, SurgeryPass
from surgeon.passes.state import Sizes, SurgeryState
from surgeon.spaces import meta_shapes

__all__ = ["ResizePass"]


class ResizePass(SurgeryPass):
    """Slices parameters and buffers, updates module attributes and size constants.

    Cases:
    1. every parameter slice of a group with removed classes keeps the tensor indices of its
       kept channels (a grouped conv's in-group offset is kept if its class is);
    2. module attributes (``in_channels``, ``out_channels``, ``groups``, ``num_features``,
       ``normalized_shape``, ``in_features``, ``out_features``) and size constants in the graph
       (``view`` / ``reshape`` / ``split`` arguments) take the new sizes through the rules'
       resize hooks;
    3. then ``graph.lint()``, ``recompile()``, and shape propagation on the example inputs.
    ``ensures``: every space has exactly its kept size, else the pass fails naming the node.
    The state records what each sliced tensor kept (``kept``, for rewinding) and the slim
    model's output on the example inputs (``output``), and becomes ``applied``.
    """

    def call(self, gm: fx.GraphModule) -> PassResult:
        state = self.state(gm)
        if state.applied:
            return PassResult(gm, False, {"params_removed": 0})
        if state.n_removed() == 0:
            self.store(gm, state.replace(applied=True))
            return PassResult(gm, False, {"params_removed": 0})
        before = sum(p.numel() for p in gm.parameters())
        cuts = _cuts(state)
        made: dict[int, tuple[Any, dict[int, np.ndarray]]] = {}  # a tied tensor is cut once
        kept = {}
        for (owner, name), dims in cuts.items():
            _slice_tensor(gm.get_submodule(owner), name, dims, made)
            kept[f"{owner}.{name}" if owner else name] = dims
        sizes = Sizes(state)
        for rec in state.graph.records.values():
            for fn in rec.resize_fns:
                fn(sizes)
        _pin_size_reads(gm, state)
        gm.graph.lint()
        gm.recompile()
        try:
            output = propagate_shapes(gm, state.inputs)
        except SurgeonTraceError as exc:
            raise SurgeonPassError(
                f"the resized model no longer runs: {exc.__cause__ or exc}; a rule sized something "
                "wrongly — put the module involved in ignore=(...) and report the model",
                node=exc.node,
            ) from exc
        self.store(gm, state.replace(applied=True, kept=kept, output=output))
        after = sum(p.numel() for p in gm.parameters())
        return PassResult(gm, True, {"params_removed": before - after, "tensors_sliced": len(cuts)})

    def ensures(self, gm: fx.GraphModule) -> None:
        state = self.state(gm)
        for node in gm.graph.nodes:
            if node.op == "output":
                continue
            for name, shape in meta_shapes(node):
                old = state.graph.shapes.get(name)
                if old is None:
                    continue
                want = tuple(state.new_size((name, d)) for d in range(len(old)))
                if tuple(shape) != want:
                    raise SurgeonPassError(
                        f"after resizing, node '{name}' has shape {tuple(shape)} where {want} was expected "
                        f"(was {old}); its rule or a consumer's rule is wrong — put the module in "
                        "ignore=(...) to leave its channels alone",
                        node=name,
                    )


def _pin_size_reads(gm: fx.GraphModule, state: SurgeryState) -> None:
    """A size read of a dim that changed (``B, N, C = x.shape`` and then ``C // heads``)
    becomes the original size. What is left reading it is a size argument of a dim that keeps
    its size: the rules rewrote the arguments of changed dims, and any other use of the read
    blocked the group. A changed dim is a channel dim, the same for every input, so the
    constant is exact."""
    for node in list(gm.graph.nodes):
        space = _size_read(node)
        if space is None or space not in state.graph.sizes:
            continue
        old = state.graph.sizes[space]
        if state.new_size(space) == old:
            continue
        for user in list(node.users):
            user.args = fx.node.map_arg(user.args, lambda a, n=node, v=old: v if a is n else a)
            user.kwargs = fx.node.map_arg(user.kwargs, lambda a, n=node, v=old: v if a is n else a)
        gm.graph.erase_node(node)


def _size_read(node: fx.Node) -> tuple[str, int] | None:
    """``(tensor, dim)`` when ``node`` is ``x.size(d)``, ``x.shape[d]`` or ``x.size()[d]``."""
    if node.op == "call_method" and node.target == "size" and len(node.args) == 2:
        x, d = node.args
    elif node.op == "call_function" and node.target is operator.getitem:
        src, d = node.args
        if not isinstance(src, fx.Node):
            return None
        shape_of = (src.op == "call_method" and src.target == "size" and len(src.args) == 1) or (
            src.op == "call_function" and src.target is getattr and src.args[1] == "shape"
        )
        if not shape_of:
            return None
        x = src.args[0]
    else:
        return None
    meta = x.meta.get("tensor_meta") if isinstance(x, fx.Node) else None
    if not isinstance(d, int) or meta is None or not hasattr(meta, "shape"):
        return None
    return x.name, d % len(meta.shape)


def _cuts(state: SurgeryState) -> dict[tuple[str, str], dict[int, np.ndarray]]:
    """(owner, tensor name) -> {dim: the indices it keeps}, for every tensor that loses some."""
    cuts: dict[tuple[str, str], dict[int, np.ndarray]] = defaultdict(dict)
    for gi, mask in state.removed.items():
        if not mask.any():
            continue
        group = state.graph.groups[gi]
        for sl in group.params:
            gone = mask[group.class_of[sl.space]]
            if sl.index is None:  # the space's indices are the tensor's
                if not gone.any():
                    continue
                kept = np.flatnonzero(~gone)
            else:
                kept, dropped = np.unique(sl.index[~gone]), np.unique(sl.index[gone])
                if np.intersect1d(kept, dropped).size:
                    raise SurgeonPassError(
                        f"{sl.owner}.{sl.name} dim {sl.dim}: channels that share a tensor index "
                        "are split between kept and removed classes (a rule couples them wrongly)"
                    )
                if not dropped.size:
                    continue
            key = (sl.owner, sl.name)
            prev = cuts[key].get(sl.dim)
            if prev is not None and not np.array_equal(prev, kept):
                raise SurgeonPassError(
                    f"{sl.owner}.{sl.name} dim {sl.dim} is sliced two different ways by two spaces"
                )
            cuts[key][sl.dim] = kept
    return cuts


def _slice_tensor(
    module: nn.Module,
    name: str,
    dims: dict[int, np.ndarray],
    made: dict[int, tuple[Any, dict[int, np.ndarray]]],
) -> None:
    """Replace ``module.name`` by its slice; a tensor several modules share (tied weights) is
    sliced once and the same new tensor given to each, so the tie survives."""
    old = getattr(module, name)
    if old is None:  # an optional bias that does not exist
        return
    if id(old) in made:
        new, first = made[id(old)]
        if first.keys() != dims.keys() or any(not np.array_equal(first[d], dims[d]) for d in dims):
            raise SurgeonPassError(
                f"{name} of a tied tensor is cut two different ways by its owners (a rule "
                "couples them wrongly)"
            )
        if name in module._buffers:
            module._buffers[name] = new
        else:
            setattr(module, name, new)
        return
    with torch.no_grad():
        new = old.detach()
        for dim, kept in sorted(dims.items()):
            new = new.index_select(dim, torch.as_tensor(kept, dtype=torch.long, device=new.device))
        if not dims:  # else index_select already made a new tensor
            new = new.clone()
    if isinstance(old, nn.Parameter):
        new = nn.Parameter(new, requires_grad=old.requires_grad)
        setattr(module, name, new)
    elif name in module._buffers:
        module._buffers[name] = new
    else:
        setattr(module, name, new)
    made[id(old)] = (new, dims)
