"""Say when little was pruned, and why: a cheap MAC estimate before and after, against what
the ratio would give on free groups, and the most common blocked reasons."""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from surgeon.graph import ChannelGraph

log = logging.getLogger(__name__)

__all__ = ["logged_diagnosis", "dense_macs", "dense_calls", "blocked_reasons", "diagnose"]


_CONV_FNS = {F.conv1d, F.conv2d, F.conv3d}


def dense_calls(gm: fx.GraphModule) -> Iterator[tuple[str | None, int]]:
    """Each Conv / Linear call (module or functional) of ``gm`` with shape metadata: the
    qualified name of the weight it reads (None: a weight computed in the graph) and its MACs
    (output size x the weight's fan-in)."""
    for node in gm.graph.nodes:
        out = getattr(node.meta.get("tensor_meta"), "shape", None)
        if out is None:
            continue
        weight, name = None, None
        if node.op == "call_module":
            m = gm.get_submodule(str(node.target))
            if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) and not getattr(
                m, "transposed", False
            ):
                weight, name = tuple(m.weight.shape), f"{node.target}.weight"
        elif node.op == "call_function" and (node.target in _CONV_FNS or node.target is F.linear):
            w = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
            weight = getattr(getattr(w, "meta", {}).get("tensor_meta"), "shape", None)
            name = str(w.target) if getattr(w, "op", None) == "get_attr" else None
        if weight is not None:
            yield name, math.prod(out) * math.prod(weight[1:])


def dense_macs(gm: fx.GraphModule) -> int:
    """MACs of the Conv / Linear calls (module or functional) from the shape metadata: the
    part of the cost pruning changes, counted without running the model."""
    return sum(macs for _, macs in dense_calls(gm))


def blocked_reasons(
    graph: ChannelGraph, top: int = 5, *, boundary: bool = True
) -> list[dict[str, Any]]:
    """The commonest reasons groups holding parameters are blocked: the op, how many groups,
    and the first node. Model inputs and outputs (every network's first and last layers) are
    left out unless nothing else blocks anything (a keyword input that carries channels) and
    ``boundary`` allows them then."""
    found = _reasons(graph, top, boundary=False)
    return found or (_reasons(graph, top, boundary=True) if boundary else [])


def _reasons(graph: ChannelGraph, top: int, boundary: bool) -> list[dict[str, Any]]:
    counts: Counter[str] = Counter()
    first: dict[str, str] = {}
    for g in graph.groups:
        if not g.params:
            continue
        # at the boundary every input and output by name: which one carries channels
        key = (lambda r: r) if boundary else _op_of
        for why in {key(r) for r in g.reasons}:
            if not boundary and why.startswith(("model input", "model output")):
                continue
            counts[why] += 1
            first.setdefault(why, next(r for r in g.reasons if key(r) == why))
    return [{"reason": w, "groups": n, "first": first[w]} for w, n in counts.most_common(top)]


def _op_of(reason: str) -> str:
    """A reason without the node it was seen at: 'no rule for cumsum()'."""
    text = reason.split(" [")[0]
    return re.sub(r" at node '[^']*'| '[^']*'", "", text)


def diagnose(graph: ChannelGraph, before: int, after: int, ratio: float) -> dict[str, Any] | None:
    """None when the slim model lost what the ratio promises (at least half of the MAC drop
    ``1 / (1 - ratio)^2`` of groups that are free on both sides of every layer); otherwise the
    figures and the top blocked reasons."""
    if ratio <= 0 or before <= 0 or after <= 0:
        return None
    expected = 1.0 / (1.0 - ratio) ** 2
    drop = before / after
    if drop >= expected / 2:
        return None
    return {
        "mac_drop": round(drop, 3),
        "expected": round(expected, 3),
        "prunable_groups": len(graph.prunable_groups()),
        "groups": sum(1 for g in graph.groups if g.params),
        "top_blocked": blocked_reasons(graph),
    }


def logged_diagnosis(gm: fx.GraphModule, graph: ChannelGraph, before: int, ratio: float) -> Any:
    """:func:`diagnose`, logged as a warning when little was pruned."""
    found = diagnose(graph, before, dense_macs(gm), ratio)
    if found is None:
        return None
    why = "; ".join(
        f"{r['reason']} ({r['groups']} group{'s' if r['groups'] != 1 else ''}"
        + (f", first: {r['first']})" if r["first"] != r["reason"] else ")")
        for r in found["top_blocked"]
    )
    log.warning(
        "surgeon: little was pruned: MACs dropped %.2fx where ratio %g gives %.1fx on free "
        "groups (%d of %d groups prunable). Top blocked reasons: %s",
        found["mac_drop"],
        ratio,
        found["expected"],
        found["prunable_groups"],
        found["groups"],
        why or "none (the prunable groups are small)",
    )
    return found
