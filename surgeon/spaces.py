"""Channel spaces and the records that op rules emit about them.

A *space* is one dimension of one traced value: ``(node name, dim)``. Tuple-valued nodes
(``split``, ``chunk``) give one name per element: ``"split#0"``, ``"split#1"``. Rules relate
spaces through a :class:`RuleContext`; the channel graph (:mod:`surgeon.graph`) is built from
what they record. Nothing here mutates the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx as fx

__all__ = [
    "Space",
    "ParamSlice",
    "Sink",
    "FactorSite",
    "NodeRecord",
    "RuleContext",
    "ConstFn",
    "ResizeFn",
    "meta_shapes",
]

Space = tuple[str, int]
# consts: space -> float array (NaN = not a constant), returns output space -> array
ConstFn = Callable[[Callable[[Space], np.ndarray]], dict[Space, np.ndarray]]
# new_size: space -> kept size; applied after parameters were sliced
ResizeFn = Callable[[Callable[[Space], int]], None]


@dataclass
class ParamSlice:
    """Dimension ``dim`` of tensor ``owner.name`` follows space ``space``.

    ``index[i]`` is the tensor index that space index ``i`` maps to (``None``: identity).
    ``role`` is ``producer`` (creates the channel), ``consumer`` (reads it), ``norm`` (a
    per-channel scale / shift / statistic) or ``param`` (a tensor used directly in forward).
    """

    owner: str
    name: str
    dim: int
    space: Space
    index: np.ndarray | None
    role: str

    def tensor_index(self, size: int) -> np.ndarray:
        return np.arange(size) if self.index is None else self.index


@dataclass
class Sink:
    """Where the values of ``space`` leave its channel class.

    ``kind``: ``contract`` (a weighted sum into another space: Conv / Linear inputs), or
    ``sum`` (exact when the removed values are zero), or ``stat`` (a statistic over the dim —
    mean, norm, softmax — which any removal changes). ``ignores(alive)`` gives, per space
    index, whether the consumer's weights ignore it (counting only the consumer's output rows
    that are still alive, ``out_space``); ``fold``,
    when exact, adds ``const * weight`` of the given indices into the consumer's bias.
    """

    space: Space
    kind: str
    node: str
    ignores: Callable[[np.ndarray | None], np.ndarray] | None = None
    fold: Callable[[np.ndarray, np.ndarray], None] | None = None
    out_space: Space | None = None
    owner: str | None = None


@dataclass
class FactorSite:
    """A dim split into factors by a reshape (or factors merged into one dim).

    ``whole`` is the unsplit space, ``parts`` the factor spaces (row-major, outer first).
    The channel graph sets ``carrier``: the factor whose digit follows the whole dim's
    channels; the other factors keep their size. ``None`` means every part is fixed.
    """

    whole: Space
    parts: list[Space]
    sizes: list[int]
    kind: str
    where: str
    carrier: int | None = None

    def digit(self, i: int) -> np.ndarray:
        """For each index of the whole dim, its digit in factor ``i``."""
        stride = math.prod(self.sizes[i + 1 :])
        return (np.arange(math.prod(self.sizes)) // stride) % self.sizes[i]

    def constants(self, c: Callable[[Space], np.ndarray]) -> dict[Space, np.ndarray]:
        if self.carrier is None:
            return {}
        part = self.parts[self.carrier]
        if self.kind == "merge":
            return {self.whole: c(part)[self.digit(self.carrier)]}
        v = np.moveaxis(c(self.whole).reshape(self.sizes), self.carrier, 0).reshape(
            self.sizes[self.carrier], -1
        )
        return {part: np.where((v == v[:, :1]).all(1), v[:, 0], np.nan)}


@dataclass
class NodeRecord:
    """What one node's rule said: its spaces' couplings, blocks, members, sinks and hooks."""

    couplings: list[tuple[Space, Space, np.ndarray | None, np.ndarray | None]] = field(
        default_factory=list
    )
    blocks: list[tuple[Space, str]] = field(default_factory=list)
    params: list[ParamSlice] = field(default_factory=list)
    sinks: list[Sink] = field(default_factory=list)
    const_fn: ConstFn | None = None
    resize_fns: list[ResizeFn] = field(default_factory=list)
    described: set[Space] = field(default_factory=set)
    tags: list[tuple[Space, str]] = field(default_factory=list)
    factors: list[FactorSite] = field(default_factory=list)
    roles: list[tuple[Space, str]] = field(default_factory=list)
    # (a, b): the model's own code sizes b from a read of a's size (``x.reshape(B, N, C)`` with
    # ``C = y.shape[-1]``): its own forward runs after the surgery only where both keep as many
    ties: list[tuple[Space, Space]] = field(default_factory=list)
    # a grouped conv that loses whole groups: its output space
    whole_groups: Space | None = None


def meta_shapes(node: fx.Node) -> list[tuple[str, tuple[int, ...]]]:
    """(space name, shape) for each tensor a node produces."""
    meta = node.meta.get("tensor_meta")
    if meta is None:
        return []
    if hasattr(meta, "shape"):
        return [(node.name, tuple(meta.shape))]
    out = []
    if isinstance(meta, (tuple, list)):
        for i, m in enumerate(meta):
            if hasattr(m, "shape"):
                out.append((f"{node.name}#{i}", tuple(m.shape)))
    return out


class RuleContext:
    """The view an op rule gets of one node, and the calls it records its facts with."""

    def __init__(
        self,
        gm: fx.GraphModule,
        node: fx.Node,
        shapes: dict[str, tuple[int, ...]],
        grouped: str | Collection[int] = "offsets",
        whole: Collection[str] | None = None,
    ) -> None:
        self.gm = gm
        self.grouped = grouped
        self.whole = whole
        self.node = node
        self.shapes = shapes
        self.record = NodeRecord()
        self.module: torch.nn.Module | None = (
            gm.get_submodule(node.target) if node.op == "call_module" else None
        )

    # -- reading ----------------------------------------------------------------------
    def whole_groups(self, width: int) -> bool:
        """Whether this node, a grouped conv of in-group ``width``, loses whole groups
        (``grouped``: ``"groups"``, or a collection of the widths that do; where ``whole``
        names the nodes that do, those alone) instead of in-group offsets."""
        g = self.grouped
        if isinstance(g, str):  # "groups", else "offsets"
            return g == "groups"
        return self.node.name in self.whole if self.whole is not None else width in g

    def arg(self, i: int, name: str, default: Any = None) -> Any:
        if len(self.node.args) > i:
            return self.node.args[i]
        return self.node.kwargs.get(name, default)

    def shape(self, value: Any) -> tuple[int, ...] | None:
        """Shape of a tensor-valued node (or the current node), else None."""
        if isinstance(value, fx.Node):
            return self.shapes.get(value.name)
        if isinstance(value, str):
            return self.shapes.get(value)
        return None

    @property
    def out(self) -> str:
        return self.node.name

    @property
    def out_shape(self) -> tuple[int, ...] | None:
        return self.shapes.get(self.node.name)

    def tensor_inputs(self) -> list[fx.Node]:
        nodes: list[fx.Node] = []
        fx.node.map_arg((self.node.args, self.node.kwargs), nodes.append)
        return [n for n in nodes if n.name in self.shapes]

    def describe_name(self) -> str:
        n = self.node
        if n.op == "call_module":  # a module may name itself (an ONNX op kept as it is)
            label = getattr(self.module, "surgeon_label", None) or type(self.module).__name__
            return f"{label} '{n.target}'"
        if n.op == "call_method":
            return f"method .{n.target}() at node '{n.name}'"
        target = getattr(n.target, "__name__", str(n.target))
        return f"{target}() at node '{n.name}'"

    # -- recording --------------------------------------------------------------------
    def couple(
        self, a: Space, b: Space, ia: np.ndarray | None = None, ib: np.ndarray | None = None
    ) -> None:
        """Channel ``ia[k]`` of ``a`` and ``ib[k]`` of ``b`` are kept or removed together."""
        self.record.couplings.append((a, b, ia, ib))
        self.record.described.update((a, b))

    def identity(self, a: Space, b: Space) -> None:
        self.couple(a, b)

    def block(self, space: Space, reason: str) -> None:
        self.record.blocks.append((space, reason))
        self.record.described.add(space)

    def produce(self, space: Space) -> None:
        """``space`` is new here (a parameter's dim, a Conv / Linear output)."""
        self.record.described.add(space)

    def reads_metadata(self, space: Space) -> None:
        """The node reads ``space`` without depending on its values (metadata only)."""
        self.record.described.add(space)

    def param(
        self,
        owner: str,
        name: str,
        dim: int,
        space: Space,
        index: np.ndarray | None = None,
        role: str = "producer",
    ) -> None:
        self.record.params.append(ParamSlice(owner, name, dim, space, index, role))

    def role(self, space: Space, role: str) -> None:
        """The parameter read at ``space`` (a ``get_attr`` dim) plays ``role`` here: a
        functional form says what its tensors are (``F.conv2d``'s weight is a producer along
        dim 0, ``F.batch_norm``'s weight a norm), as a module rule does with :meth:`param`."""
        self.record.roles.append((space, role))

    def sink(self, space: Space, kind: str, ignores=None, fold=None, out_space=None) -> None:  # noqa: ANN001
        owner = str(self.node.target) if self.node.op == "call_module" else None
        self.record.sinks.append(Sink(space, kind, self.node.name, ignores, fold, out_space, owner))
        self.record.described.add(space)

    def factor(self, site: FactorSite) -> None:
        """A split / merge whose carrier factor the channel graph chooses."""
        self.record.factors.append(site)
        self.record.described.update([site.whole, *site.parts])

    def tag(self, space: Space, tag: str) -> None:
        """A label for the group that holds ``space`` (residual, depthwise, flatten, ...)."""
        self.record.tags.append((space, tag))

    def transfer(self, fn: ConstFn) -> None:
        self.record.const_fn = fn

    def on_resize(self, fn: ResizeFn) -> None:
        self.record.resize_fns.append(fn)
