"""The channel graph: spaces, groups, channel classes and blocked reasons.

Built from a traced, shape-annotated GraphModule by running every node's rule
(:mod:`surgeon.rules`). Spaces are networkx nodes and couplings its edges; connected
components are *groups*. Inside a group, channel indices that are kept or removed together
form *channel classes*, computed by a vectorised union over (space, index).
"""

from __future__ import annotations

import dataclasses
import logging
import operator
from collections import Counter, defaultdict
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import torch
import torch.fx as fx

from surgeon import rules
from surgeon.errors import SurgeonPassError, SurgeonRuleError
from surgeon.spaces import NodeRecord, ParamSlice, RuleContext, Sink, Space, meta_shapes

__all__ = ["Group", "ChannelGraph", "build_channel_graph"]

log = logging.getLogger(__name__)


@dataclass
class Group:
    """A connected set of spaces: what changes size together."""

    index: int
    spaces: list[Space]
    reasons: list[str]
    params: list[ParamSlice]
    sinks: list[Sink]
    tags: set[str]
    n_classes: int = 0
    class_of: dict[Space, np.ndarray] = field(default_factory=dict)
    widest: Space | None = None
    width: int = 0

    @property
    def blocked(self) -> bool:
        return bool(self.reasons)

    @property
    def prunable(self) -> bool:
        return not self.reasons and self.n_classes > 1 and bool(self.params)

    @property
    def channels(self) -> int:
        """How many channels the group has: the size of its widest space. A class can hold
        several (a head holds head_dim channels, a whole conv group its width): this is not
        ``n_classes``."""
        return self.width

    def channels_in(self, classes: Collection[int]) -> int:
        """How many of the group's channels (in its widest space) the classes ``classes``
        hold."""
        if self.widest is None or self.widest not in self.class_of:
            return 0
        return int(np.isin(self.class_of[self.widest], list(classes)).sum())


class ChannelGraph:
    """Spaces of a traced model, their couplings, groups and channel classes.

    ``records[node name]`` holds what each node's rule said; ``groups`` the connected
    components; ``group_of[space]`` the group index of a space. Building it never mutates
    the model. ``planned`` (group index -> classes a target would remove; see
    :func:`surgeon.analyze`) is None unless asked for.
    """

    planned: dict[int, int] | None = None

    def __init__(
        self, gm: fx.GraphModule, shapes: dict[str, tuple[int, ...]], records: dict[str, NodeRecord]
    ):
        self.gm = gm
        self.shapes = shapes
        self.records = records
        # how often each module is called: a module called twice must not fold constants
        self.calls: Counter[str] = Counter(
            str(n.target) for n in gm.graph.nodes if n.op == "call_module"
        )
        self.mutated = _mutated_and_shared(gm)
        self.sizes: dict[Space, int] = {
            (n, d): s for n, shp in shapes.items() for d, s in enumerate(shp)
        }
        self.graph = nx.Graph()
        self.graph.add_nodes_from(self.sizes)
        blocked: dict[Space, list[str]] = defaultdict(list)
        for rec in records.values():
            for a, b, _, _ in rec.couplings:
                if a != b:
                    self.graph.add_edge(a, b)
            for s, why in rec.blocks:
                if why not in blocked[s]:
                    blocked[s].append(why)
        self.blocked = dict(blocked)
        self.ties = [t for rec in records.values() for t in rec.ties]
        # grouped convs (node names) that lose whole groups -> their output spaces
        self.whole_groups = {n: rec.whole_groups for n, rec in records.items() if rec.whole_groups}
        self.group_of: dict[Space, int] = {}
        self.groups: list[Group] = []
        params: dict[Space, list[ParamSlice]] = defaultdict(list)
        sinks: dict[Space, list[Sink]] = defaultdict(list)
        tags: dict[Space, set[str]] = defaultdict(set)
        roles = {space: role for rec in records.values() for space, role in rec.roles}
        for rec in records.values():
            for p in rec.params:
                if p.role in ("param", "buffer") and p.space in roles:
                    p = dataclasses.replace(p, role=roles[p.space])
                params[p.space].append(p)
            for s in rec.sinks:
                sinks[s.space].append(s)
            for s, t in rec.tags:
                tags[s].add(t)
        comps = sorted(
            (sorted(c) for c in nx.connected_components(self.graph)),
            key=lambda c: self._order(c[0]),
        )
        for i, comp in enumerate(comps):
            reasons: list[str] = []
            for s in comp:
                self.group_of[s] = i
                for why in self.blocked.get(s, ()):
                    msg = f"{why} [{s[0]} dim {s[1]}]"
                    if why not in (r.split(" [")[0] for r in reasons):
                        reasons.append(msg)
            # the model's own inputs and outputs first: they explain most blocked groups
            reasons.sort(key=lambda r: not r.startswith(("model input", "model output")))
            self.groups.append(
                Group(
                    i,
                    comp,
                    reasons,
                    [p for s in comp for p in params.get(s, ())],
                    [k for s in comp for k in sinks.get(s, ())],
                    set().union(*(tags.get(s, set()) for s in comp)),
                    widest=(widest := max(comp, key=self.sizes.__getitem__)),
                    width=self.sizes[widest],
                )
            )
        self._classes()

    def _order(self, space: Space) -> tuple[int, int]:
        base = space[0].split("#")[0]
        return (self._node_index.get(base, 0), space[1])

    @property
    def _node_index(self) -> dict[str, int]:
        if not hasattr(self, "_ni"):
            self._ni = {n.name: i for i, n in enumerate(self.gm.graph.nodes)}
        return self._ni

    def _classes(self) -> None:
        """Union (space, index) pairs within each unblocked group into channel classes."""
        by_group: dict[int, list] = defaultdict(list)
        for rec in self.records.values():
            for a, b, ia, ib in rec.couplings:
                by_group[self.group_of[a]].append((a, b, ia, ib))
        for g in self.groups:
            if g.blocked or not g.params:
                g.n_classes = self.sizes[g.spaces[0]] if g.spaces else 0
                continue
            offset, n = {}, 0
            for s in g.spaces:
                offset[s] = n
                n += self.sizes[s]
            src, dst = [], []
            for a, b, ia, ib in by_group[g.index]:
                ia = np.arange(self.sizes[a]) if ia is None else np.asarray(ia)
                ib = np.arange(self.sizes[b]) if ib is None else np.asarray(ib)
                if len(ia) != len(ib):
                    raise SurgeonRuleError(
                        f"coupling {a} ~ {b} has index maps of different lengths (a rule is wrong)"
                    )
                src.append(offset[a] + ia)
                dst.append(offset[b] + ib)
            labels = _components(
                n,
                np.concatenate(src) if src else np.zeros(0, int),
                np.concatenate(dst) if dst else np.zeros(0, int),
            )
            uniq, inv = np.unique(labels, return_inverse=True)
            g.n_classes = len(uniq)
            g.class_of = {s: inv[offset[s] : offset[s] + self.sizes[s]] for s in g.spaces}

    # -- queries -------------------------------------------------------------------------
    def prunable_groups(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]

    def constants(
        self, forced_zero: dict[Space, np.ndarray] | None = None
    ) -> dict[Space, np.ndarray]:
        """Per space, the constant value of each channel (NaN where it varies).

        Runs every node's constant transfer in graph order; ``forced_zero`` masks channels
        (of removed classes) that count as zero.
        """
        consts: dict[Space, np.ndarray] = {}
        forced_zero = forced_zero or {}

        def get(s: Space) -> np.ndarray:
            v = consts.get(s)
            if v is None:
                v = np.full(self.sizes[s], np.nan)
            return v

        for node in self.gm.graph.nodes:
            rec = self.records.get(node.name)
            if rec is None or rec.const_fn is None:
                continue
            try:
                out = rec.const_fn(get)
            except Exception as exc:  # a transfer that cannot evaluate: nothing is constant
                log.debug("constant transfer of %s failed: %s", node.name, exc)
                continue
            if node.name in self.mutated:  # changed in place while another use still reads it
                out = {s: np.full(len(np.asarray(v)), np.nan) for s, v in out.items()}
            for s, v in out.items():
                v = np.asarray(v, dtype=np.float64)
                z = forced_zero.get(s)
                if z is not None:
                    v = np.where(z, 0.0, v)
                consts[s] = v
        return consts

    # -- printing --------------------------------------------------------------------------
    def summary(self, all_groups: bool = False) -> str:
        lines = []
        shown = [g for g in self.groups if all_groups or g.params]
        prunable = sum(g.prunable for g in self.groups)
        lines.append(
            f"ChannelGraph of {type(self.gm).__name__}: {len(self.sizes)} spaces, {len(self.groups)} groups, "
            f"{prunable} prunable, {sum(1 for g in shown if not g.prunable)} with parameters but not prunable"
        )
        for g in shown:
            status = "prunable" if g.prunable else "blocked" if g.blocked else "fixed"
            tags = f" ({', '.join(sorted(g.tags))})" if g.tags else ""
            plan = ""
            if self.planned is not None and g.index in self.planned:
                plan = f"; the target removes {self.planned[g.index]} of {g.n_classes} classes"
            lines.append(
                f"group {g.index} [{status}]{tags}: {g.channels} channels in {g.n_classes} "
                f"classes, {len(g.spaces)} spaces{plan}"
            )
            members = []
            for p in g.params:
                if p.role in ("stat", "buffer") or p.name == "bias":
                    continue
                members.append(f"{p.owner or '<root>'}.{p.name}[dim {p.dim}] {p.role}")
            lines.append("    members: " + ", ".join(dict.fromkeys(members)))
            for why in g.reasons[:4]:
                lines.append(f"    blocked: {why}")
            if len(g.reasons) > 4:
                lines.append(f"    blocked: ... and {len(g.reasons) - 4} more reasons")
            if not g.blocked and not g.prunable:
                lines.append(
                    "    fixed: a single channel class"
                    if g.n_classes <= 1
                    else "    fixed: no parameters"
                )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        return f"<ChannelGraph {len(self.groups)} groups, {len(self.prunable_groups())} prunable>"


_INPLACE_FUNCTIONS = {
    operator.iadd,
    operator.isub,
    operator.imul,
    operator.itruediv,
    operator.ifloordiv,
}


def _mutated_and_shared(gm: fx.GraphModule) -> set[str]:
    """Nodes that an op changes in place while another op also reads them: their values are
    not what the graph order suggests, so no constant is trusted for them (or their aliases)."""
    out: set[str] = set()
    for n in gm.graph.nodes:
        if not n.args or not isinstance(n.args[0], fx.Node):
            continue
        src = n.args[0]
        inplace = bool(n.kwargs.get("inplace"))
        if n.op == "call_method":
            inplace |= n.target.endswith("_") and not n.target.endswith("__")
        elif n.op == "call_function":
            inplace |= n.target in _INPLACE_FUNCTIONS or getattr(n.target, "__name__", "").endswith(
                "_"
            )
        elif n.op == "call_module":
            inplace |= bool(getattr(gm.get_submodule(n.target), "inplace", False))
        if inplace and len(src.users) > 1:
            out.add(src.name)
            out.add(n.name)
    return out


def _components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected-component labels of n items joined by edges (a[k], b[k]) (min-label hooking
    with pointer jumping; labels are the smallest item of each component)."""
    labels = np.arange(n)
    if len(a) == 0:
        return labels
    while True:
        la, lb = labels[a], labels[b]
        m = np.minimum(la, lb)
        new = labels.copy()
        np.minimum.at(new, la, m)
        np.minimum.at(new, lb, m)
        while True:
            jumped = new[new]
            if np.array_equal(jumped, new):
                break
            new = jumped
        if np.array_equal(new, labels):
            return labels
        labels = new


ATTENTION = ("heads", "head_dim")


def build_channel_graph(
    gm: fx.GraphModule,
    rule_lookup: Callable[[RuleContext], rules.Rule] = rules.lookup,
    *,
    attention: str = "heads",
    grouped: str | Collection[int] = "offsets",
    whole: Collection[str] | None = None,
) -> ChannelGraph:
    """Run every node's rule over a shape-annotated GraphModule and build its ChannelGraph.

    ``attention``: where a dim is split into factors (a qkv width into 3 x heads x head_dim),
    ``"heads"`` makes the outermost free factor the one that prunes (whole heads), and
    ``"head_dim"`` the innermost (every head loses the same offsets in its width).
    ``grouped``: a grouped conv's classes are its in-group offsets (``"offsets"``), its
    whole groups (``"groups"``), or whole groups where its in-group width is in a collection
    of widths (what ``grouped="auto"`` measured); with widths, ``whole`` (node names) can
    name the convs that lose whole groups instead (a decision made before, kept)."""
    rules.clear_caches()
    shapes: dict[str, tuple[int, ...]] = {}
    for node in gm.graph.nodes:
        if node.op != "output":
            for name, shape in meta_shapes(node):
                shapes[name] = shape
    if not shapes:
        raise SurgeonPassError(
            "no tensor metadata on the graph: run surgeon.capture.propagate_shapes first"
        )
    records: dict[str, NodeRecord] = {}
    for node in gm.graph.nodes:
        ctx = RuleContext(gm, node, shapes, grouped, whole)
        if node.op == "placeholder":
            for name, shape in meta_shapes(node):
                for d in range(len(shape)):
                    ctx.block((name, d), "model input")
        elif node.op == "output":
            for n in ctx.tensor_inputs():
                for d in range(len(shapes[n.name])):
                    ctx.block((n.name, d), "model output")
            for n in _tuple_pieces(node, shapes):
                for d in range(len(shapes[n])):
                    ctx.block((n, d), "model output")
        elif node.op == "get_attr":
            rules.get_attr_rule(ctx)
        else:
            rule = rule_lookup(ctx)
            try:
                rule(ctx)
            except Exception as exc:
                why = f"the rule for {ctx.describe_name()} failed: {type(exc).__name__}: {exc}"
                if rules.is_strict():
                    raise SurgeonRuleError(f"{why} (strict mode: a rule must never raise)") from exc
                log.warning("%s; its dims are blocked", why)
                ctx.record = NodeRecord()
                rules.block_all(ctx, why)
            # inputs and outputs a rule did not describe are blocked: never a silent guess
            touched = ctx.record.described
            inputs = [(n.name, shapes[n.name]) for n in ctx.tensor_inputs()]
            if node.target is not operator.getitem:  # getitem describes the piece it reads
                inputs += [(p, shapes[p]) for p in _tuple_pieces(node, shapes)]
            for name, shape in inputs:
                for d in range(len(shape)):
                    if (name, d) not in touched:
                        ctx.block(
                            (name, d), f"{ctx.describe_name()} does not describe its input dim {d}"
                        )
            for name, shape in rules.output_spaces(ctx):
                for d in range(len(shape)):
                    if (name, d) not in touched:
                        ctx.block(
                            (name, d), f"{ctx.describe_name()} does not describe its output dim {d}"
                        )
        records[node.name] = ctx.record
    records["<size reads>"] = _size_reads(gm, shapes)
    records["<shared parameters>"] = _shared_tensor_couplings(gm, records, shapes)
    records["<factor sites>"] = _resolve_factor_sites(gm, records, shapes, attention)
    return ChannelGraph(gm, shapes, records)


class _SpaceUnion:
    """Union-find over spaces that remembers whether a component is blocked."""

    def __init__(self) -> None:
        self.parent: dict[Space, Space] = {}
        self.blocked: set[Space] = set()

    def find(self, s: Space) -> Space:
        root = s
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while s != root:
            self.parent[s], s = root, self.parent.get(s, s)
        return root

    def union(self, a: Space, b: Space) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra
            if rb in self.blocked:
                self.blocked.add(ra)

    def block(self, s: Space) -> None:
        self.blocked.add(self.find(s))

    def is_blocked(self, s: Space) -> bool:
        return self.find(s) in self.blocked


def _resolve_factor_sites(
    gm: fx.GraphModule,
    records: dict[str, NodeRecord],
    shapes,
    attention: str = "heads",  # noqa: ANN001
) -> NodeRecord:
    """Choose each reshape factor site's carrier, last site first.

    The carrier is the outermost factor (the innermost with ``attention="head_dim"``) whose
    group is not already blocked (by spatial dims, indexing, model outputs, or a later site's
    fixed factors); the whole dim is coupled to it through its digit and the other factors are
    fixed. With no free factor, all are fixed.
    """
    rec = NodeRecord()
    uf = _SpaceUnion()
    sites = []
    for r in records.values():
        for a, b, _, _ in r.couplings:
            uf.union(a, b)
        for s, _ in r.blocks:
            uf.block(s)
        sites.extend(r.factors)
    for site in reversed(sites):
        free = [k for k, p in enumerate(site.parts) if not uf.is_blocked(p)]
        if uf.is_blocked(site.whole) or not free:
            site.carrier = None
            for s in (site.whole, *site.parts):
                rec.blocks.append(
                    (s, f"{site.where}: no factor of the reshaped dim is free to change")
                )
                uf.block(s)
            continue
        k = free[0] if attention == "heads" else free[-1]
        site.carrier = k
        n = len(site.digit(k))
        if site.kind == "split":
            rec.couplings.append((site.whole, site.parts[k], np.arange(n), site.digit(k)))
        else:
            rec.couplings.append((site.parts[k], site.whole, site.digit(k), np.arange(n)))
        uf.union(site.whole, site.parts[k])
        for j, p in enumerate(site.parts):
            if j != k:
                rec.blocks.append(
                    (p, f"factor {j} of a dim {site.kind} by {site.where} keeps its size")
                )
                uf.block(p)
        rec.tags.append(
            (site.whole, "flatten" if site.kind == "merge" and k == 0 else f"reshape-{site.kind}")
        )
    return rec


_RESHAPE_METHODS = {"view", "reshape", "expand", "unflatten"}
_RESHAPE_FUNCTIONS = {torch.reshape, torch.unflatten}


def _size_reads(gm: fx.GraphModule, shapes) -> NodeRecord:  # noqa: ANN001
    """Block the dims whose size the model reads and uses in a computation.

    ``x.size(1)`` / ``x.shape`` flow through Python arithmetic; where they end up as size
    arguments of a reshape the rule rewrites them, but used anywhere else (``y.sum(1) /
    y.size(1)``, a new tensor's shape) a pruned dim would silently change the result.
    """
    rec = NodeRecord()
    deps: dict[str, object] = {}  # node -> frozenset of spaces, or a list of them (a shape)
    read: dict[str, Space] = {}  # node -> the one space whose size it is, unchanged

    def flat(v: object) -> frozenset:
        if isinstance(v, list):
            return frozenset().union(*v) if v else frozenset()
        return v  # type: ignore[return-value]

    for n in gm.graph.nodes:
        src = n.args[0] if n.args and isinstance(n.args[0], fx.Node) else None
        if src is not None and src.name in shapes:
            nd = len(shapes[src.name])
            whole = [frozenset({(src.name, d)}) for d in range(nd)]
            if n.op == "call_method" and n.target == "size":
                dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
                deps[n.name] = whole if dim is None else whole[dim % nd]
                if isinstance(dim, int):
                    read[n.name] = (src.name, dim % nd)
                continue
            if n.op == "call_function" and n.target is getattr and n.args[1] == "shape":
                deps[n.name] = whole
                continue
        args: list[fx.Node] = []
        fx.node.map_arg((n.args, n.kwargs), args.append)
        used = [a for a in args if a.name in deps]
        if not used:
            continue
        if n.name not in shapes and n.op != "output" and not _is_tuple(n, shapes):
            if (
                n.target is operator.getitem
                and isinstance(deps.get(src.name), list)
                and isinstance(n.args[1], (int, slice))
            ):
                deps[n.name] = deps[src.name][n.args[1]]  # x.shape[-1], x.shape[-2:]
                if isinstance(n.args[1], int):
                    (read[n.name],) = deps[n.name]
            else:
                deps[n.name] = frozenset().union(*(flat(deps[u.name]) for u in used))
            continue
        if (n.op == "call_method" and n.target in _RESHAPE_METHODS) or (
            n.op == "call_function" and n.target in _RESHAPE_FUNCTIONS
        ):
            rec.ties += _size_ties(n, read, shapes)
            continue  # size arguments of a changed dim are rewritten by the reshape's rule
        if _scales(n):
            continue  # a tensor times a number made from sizes: resize pins the original
        for u in used:
            for space in flat(deps[u.name]):
                rec.blocks.append((space, f"its size is read and used by node '{n.name}'"))
    return rec


def _size_ties(n: fx.Node, read: dict[str, Space], shapes) -> list[tuple[Space, Space]]:  # noqa: ANN001
    """``x.reshape(B, N, C)`` with ``C = y.shape[-1]``: dim 2 of the result is as wide as
    ``y``'s dim -1 in the model's own code, whatever the graph's rewritten copy says."""
    if n.op == "call_method" and n.target in ("view", "reshape"):
        sizes = n.args[1:]
    elif n.target is torch.reshape and len(n.args) > 1:
        sizes = n.args[1:2]
    else:
        return []
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = sizes[0]
    out = shapes.get(n.name)
    if out is None or len(sizes) != len(out):
        return []
    return [
        (read[a.name], (n.name, d))
        for d, a in enumerate(sizes)
        if isinstance(a, fx.Node) and a.name in read and read[a.name] != (n.name, d)
    ]


_SCALINGS = {operator.mul, operator.truediv, torch.mul, torch.div, operator.add, operator.sub}
_SCALING_METHODS = {"mul", "div", "add", "sub", "__mul__", "__truediv__", "__add__", "__sub__"}


def _scales(n: fx.Node) -> bool:
    """``q * (C // heads) ** -0.5``: a tensor scaled or shifted by a number computed from
    sizes. ResizePass pins every such read to its original value, so the number is the
    original one and the op computes what it computed (a removed channel changes nothing)."""
    if n.op == "call_function":
        return n.target in _SCALINGS
    return n.op == "call_method" and n.target in _SCALING_METHODS


def _is_tuple(n: fx.Node, shapes) -> bool:  # noqa: ANN001
    return f"{n.name}#0" in shapes


def _shared_tensor_couplings(
    gm: fx.GraphModule, records: dict[str, NodeRecord], shapes
) -> NodeRecord:  # noqa: ANN001
    """A module called twice, or a tensor shared by two modules (tied weights): every space that
    slices the same dim of the same tensor is coupled through the tensor index."""
    rec = NodeRecord()
    seen: dict[tuple[int, int], tuple[Space, np.ndarray]] = {}
    _block_dims_used_whole(gm, records, rec)
    for r in list(records.values()):
        for sl in r.params:
            t = rules.attr_tensor(gm, f"{sl.owner}.{sl.name}" if sl.owner else sl.name)
            if t is None:
                continue
            size = shapes[sl.space[0]][sl.space[1]]
            if size == 0:  # an empty tensor (nothing detected, say) holds no channels
                continue
            tidx = sl.tensor_index(size)
            key = (id(t), sl.dim)
            if key not in seen:
                rep = np.full(int(tidx.max()) + 1, -1)
                rep[tidx[::-1]] = np.arange(size)[::-1]  # first space index per tensor index
                seen[key] = (sl.space, rep)
                continue
            first, rep = seen[key]
            if first == sl.space:
                continue
            if len(rep) <= int(tidx.max()) or (rep[tidx] < 0).any():
                rec.blocks.append(
                    (sl.space, f"{sl.owner}.{sl.name} is shared with a different size")
                )
                rec.blocks.append((first, f"{sl.owner}.{sl.name} is shared with a different size"))
                continue
            rec.couplings.append((first, sl.space, rep[tidx], np.arange(size)))
    return rec


def _block_dims_used_whole(gm: fx.GraphModule, records, rec: NodeRecord) -> None:  # noqa: ANN001
    """A tensor a called module owns (a conv's weight) and that ``forward`` also reads directly
    (``self.projection.weight.dtype``): the dims the module's rule does not slice (kernel
    dims) are used whole by the module, so the direct read must not cut them."""
    sliced: dict[int, set[int]] = defaultdict(set)
    direct: list[ParamSlice] = []
    for r in records.values():
        for sl in r.params:
            t = rules.attr_tensor(gm, f"{sl.owner}.{sl.name}" if sl.owner else sl.name)
            if t is None:
                continue
            if sl.role in ("param", "buffer"):
                direct.append(sl)
            else:
                sliced[id(t)].add(sl.dim)
    for sl in direct:
        t = rules.attr_tensor(gm, f"{sl.owner}.{sl.name}" if sl.owner else sl.name)
        if id(t) in sliced and sl.dim not in sliced[id(t)]:
            why = f"dim {sl.dim} of {sl.owner}.{sl.name}, which its module uses whole"
            rec.blocks.append((sl.space, why))


def _tuple_pieces(node: fx.Node, shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """Pieces (``name#i``) of the tuple-valued nodes among ``node``'s inputs."""
    nodes: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), nodes.append)
    out = []
    for n in nodes:
        i = 0
        while f"{n.name}#{i}" in shapes:
            out.append(f"{n.name}#{i}")
            i += 1
    return out
