"""Whole residual branches (``structures`` with ``"layers"``): find them, score them, remove them.

A *block* is one side of a residual sum, ``y = skip + branch(...)``, whose nodes feed nothing
but that sum: take the branch out and the sum becomes ``skip + c``, ``c`` the branch's
expected output (a constant, broadcast like a bias). Where the branch computes a constant
(a block whose last norm's scale is zero: its output is the norm's shift) that is exact, as
dead channels are folded today; otherwise the block is scored by how much taking it out
changes the sum on the example (or calibration) data.

1. :func:`find_blocks`: for every ``add`` of two tensors of one shape, each side whose
   ancestors not shared with the other side (the branch) are used by nothing outside the
   branch and the sum, and hold at least one parameter. A side nested in another block's
   branch is kept as a candidate of its own.
2. :func:`score_blocks`: the branch's output ``b`` and the sum ``y`` on the data; ``c`` is
   ``b``'s mean over every dim but its channel dim (the dim whose means vary most: a conv's
   channels, a transformer's width), and the score is ``|b - c|^2 / |y|^2`` (0: exact).
3. :func:`remove_blocks`: each chosen branch is cut from the graph, its sum reading the
   buffer ``surgeon_block_<sum node>`` instead; the modules nothing calls any more go.
"""

from __future__ import annotations

import logging
import math
import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

__all__ = ["Block", "find_blocks", "score_blocks", "remove_blocks", "BUFFER_PREFIX"]

log = logging.getLogger(__name__)

BUFFER_PREFIX = "surgeon_block_"
#: a block whose score is at most this computes a constant: it goes at any ratio
EXACT = 1e-12
_ADDS = {operator.add, torch.add}


@dataclass(frozen=True)
class Block:
    """One removable branch: the sum node's name, which of its two inputs is the branch
    (``side``), the branch's nodes, the qualified names of the parameters only it reads, and
    (once scored) its ``score`` and constant's channel ``dim``."""

    add: str
    side: int
    nodes: frozenset[str]
    params: frozenset[str]
    score: float = math.inf
    dim: int = 1

    def key(self) -> tuple[str, int]:
        return (self.add, self.side)

    def to_record(self) -> dict[str, Any]:
        return {"add": self.add, "side": self.side, "score": round(self.score, 6)}


def _shape(node: Any) -> tuple[int, ...] | None:
    shape = getattr(getattr(node, "meta", {}).get("tensor_meta"), "shape", None)
    return tuple(shape) if shape is not None else None


def _ancestors(node: fx.Node) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    todo = [node]
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        todo.extend(n.all_input_nodes)
    return seen


def _impure(node: fx.Node) -> bool:
    """Writes in place (``x.add_()``, ``operator.iadd``, ``setitem``): cutting it could change
    what another node reads."""
    target = node.target
    name = target if isinstance(target, str) else getattr(target, "__name__", "")
    return (
        node.op in ("call_method", "call_function")
        and (name.endswith("_") and not name.startswith("__") or name in ("setitem", "iadd"))
    ) or node.op == "placeholder"


def _writes_outside(node: fx.Node, branch: set[fx.Node], modules: Mapping[str, Any]) -> bool:
    """``node`` works in place (``inplace=True``, a module built so) on a tensor from outside
    the branch: cutting the branch would change what the skip reads."""
    inplace = node.kwargs.get("inplace") is True
    if node.op == "call_module":
        inplace = inplace or getattr(modules.get(str(node.target)), "inplace", False) is True
    elif node.op == "call_function" and len(node.args) > 1 and node.args[-1] is True:
        inplace = inplace or getattr(node.target, "__name__", "") in (
            "relu",
            "relu6",
            "hardtanh",
            "leaky_relu",
            "elu",
            "hardswish",
            "hardsigmoid",
            "silu",
            "mish",
            "dropout",
        )
    return inplace and any(i not in branch for i in node.all_input_nodes)


def _private(branch_out: fx.Node, add: fx.Node, order: Mapping[fx.Node, int]) -> set[fx.Node]:
    """``branch_out`` and every node above it that feeds nothing but these nodes and ``add``:
    what goes with the branch. Nodes others read too (the skip, a shared mask) stay."""
    branch = {branch_out}
    ancestors = _ancestors(branch_out)
    for node in sorted(ancestors - {branch_out}, key=order.__getitem__, reverse=True):
        if node.op == "placeholder":
            continue
        if all(u in branch for u in node.users):
            branch.add(node)
    return branch


def find_blocks(gm: fx.GraphModule) -> list[Block]:
    """Every removable branch of ``gm`` (see the module docstring), in graph order."""
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    calls: dict[str, list[fx.Node]] = {}
    for n in gm.graph.nodes:
        if n.op in ("get_attr", "call_module"):
            calls.setdefault(str(n.target), []).append(n)
    modules = dict(gm.named_modules())
    out: list[Block] = []
    for add in gm.graph.nodes:
        if add.op != "call_function" or add.target not in _ADDS or len(add.args) != 2:
            continue
        a, b = add.args
        if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)) or a is b:
            continue
        if _shape(a) is None or _shape(a) != _shape(b) or _shape(add) != _shape(a):
            continue
        for side, branch_out in enumerate((a, b)):
            if list(branch_out.users) != [add] or branch_out.op == "placeholder":
                continue
            branch = _private(branch_out, add, order)
            if any(_impure(n) or _writes_outside(n, branch, modules) for n in branch):
                continue
            params: set[str] = set()
            for target, sites in calls.items():
                if not all(n in branch for n in sites):
                    continue  # read outside the branch too: it stays
                if sites[0].op == "get_attr":
                    params.add(target)
                elif target in modules:
                    params.update(f"{target}.{p}" for p, _ in modules[target].named_parameters())
            if not params:
                continue
            out.append(Block(add.name, side, frozenset(n.name for n in branch), frozenset(params)))
    return out


def _channel_dim(value: torch.Tensor) -> int:
    """The dim (not the batch's) whose per-index means vary most: where a constant output
    keeps its values (a conv's channels, a transformer's width)."""
    if value.dim() <= 1:
        return 0
    best, spread = 1, -1.0
    for d in range(1, value.dim()):
        others = [i for i in range(value.dim()) if i != d]
        means = value.mean(dim=others)
        s = float(means.var(unbiased=False)) * value.shape[d] if means.numel() > 1 else 0.0
        if s > spread:
            best, spread = d, s
    return best


def _constant(value: torch.Tensor, dim: int) -> torch.Tensor:
    """``value``'s mean over every dim but ``dim``, kept as size-1 dims (it broadcasts)."""
    others = [i for i in range(value.dim()) if i != dim]
    return value.mean(dim=others, keepdim=True) if others else value.mean().reshape(1)


class _Recorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, wanted: set[str]) -> None:
        super().__init__(gm)
        self.wanted = wanted
        self.values: dict[str, list[torch.Tensor]] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if n.name in self.wanted and isinstance(out, torch.Tensor):
            self.values.setdefault(n.name, []).append(out.detach().float())
        return out


def _values(
    gm: fx.GraphModule, batches: Iterable[Any], wanted: set[str]
) -> dict[str, torch.Tensor]:
    from surgeon.capture import placeholder_args
    from surgeon.capture.shapes import eval_mode

    rec = _Recorder(gm, wanted)
    with torch.no_grad(), eval_mode(gm):
        for inputs in batches:
            rec.run(*placeholder_args(gm, inputs))
    return {k: torch.cat(v) if v[0].dim() else torch.stack(v) for k, v in rec.values.items()}


def score_blocks(gm: fx.GraphModule, blocks: list[Block], batches: Iterable[Any]) -> list[Block]:
    """``blocks`` with their scores: how much taking each out changes its sum on ``batches``
    (example inputs, each as ``slim`` takes them)."""
    import dataclasses

    nodes = {n.name: n for n in gm.graph.nodes}
    wanted = {b.add for b in blocks} | {
        nodes[b.add].args[b.side].name
        for b in blocks  # type: ignore[union-attr]
    }
    values = _values(gm, list(batches), wanted)
    out = []
    for b in blocks:
        branch = values[nodes[b.add].args[b.side].name]  # type: ignore[union-attr]
        total = values[b.add]
        dim = _channel_dim(branch)
        change = float(((branch - _constant(branch, dim)) ** 2).sum())
        score = change / max(float((total**2).sum()), 1e-30)
        out.append(dataclasses.replace(b, score=score, dim=dim))
    return out


def remove_blocks(
    gm: fx.GraphModule, blocks: Iterable[Block], batches: Iterable[Any]
) -> list[Block]:
    """Cut ``blocks`` out of ``gm`` in place: each sum reads its branch's constant (measured on
    ``batches``) from a new buffer. Blocks inside a block that goes, and a second side of one
    sum, are skipped; returns the blocks cut."""
    blocks = sorted(blocks, key=lambda b: -len(b.nodes))
    gone: set[str] = set()
    chosen: list[Block] = []
    for b in blocks:
        if b.add in gone or any(c.add == b.add for c in chosen):
            continue
        chosen.append(b)
        gone |= b.nodes
    if not chosen:
        return []
    nodes = {n.name: n for n in gm.graph.nodes}
    outs = {b.add: nodes[b.add].args[b.side] for b in chosen}
    values = _values(gm, list(batches), {o.name for o in outs.values()})  # type: ignore[union-attr]
    for b in chosen:
        add = nodes[b.add]
        branch_out = outs[b.add]
        value = values[branch_out.name]  # type: ignore[union-attr]
        const = _constant(value, b.dim if b.dim < value.dim() else _channel_dim(value))
        like = branch_out.meta.get("tensor_meta")  # type: ignore[union-attr]
        dtype = getattr(like, "dtype", const.dtype)
        name = BUFFER_PREFIX + b.add
        gm.register_buffer(name, const.to(dtype))
        with gm.graph.inserting_before(add):
            getter = gm.graph.get_attr(name)
        getter.meta["tensor_meta"] = _meta(gm, name)
        args = list(add.args)
        args[b.side] = getter
        add.args = tuple(args)
    _erase_unused(gm)
    gm.delete_all_unused_submodules()
    gm.graph.lint()
    gm.recompile()
    log.info("surgeon: removed %d block(s): %s", len(chosen), [b.add for b in chosen])
    return chosen


def _meta(gm: fx.GraphModule, name: str) -> Any:
    from torch.fx.passes.shape_prop import _extract_tensor_metadata

    return _extract_tensor_metadata(getattr(gm, name))


def _erase_unused(gm: fx.GraphModule) -> None:
    """Erase the nodes nothing reads (the cut branches), last first; placeholders and
    outputs stay."""
    changed = True
    while changed:
        changed = False
        for node in reversed(list(gm.graph.nodes)):
            if node.op in ("placeholder", "output") or node.users:
                continue
            if _impure(node):
                continue
            gm.graph.erase_node(node)
            changed = True


def block_costs(blocks: list[Block], base: Mapping[str, float]) -> dict[tuple[str, int], float]:
    """What each block costs in a budget's unit: the sum of its parameters' full costs."""
    return {b.key(): sum(base.get(p, 0.0) for p in b.params) for b in blocks}
