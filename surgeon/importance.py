"""Importance criteria: a score per channel class, aggregated over every member of the class.

Magnitude criteria (``l1``, ``l2``, ``bn_scale``, ``random``) read the weights only. The
calibrated ones run the model on ``data`` through ``collect_stats``, which also measures the
mean value of every edge where a channel class leaves its class (the inputs of its consumers)
for compensation: ``activation`` and ``fluctuation`` forward only, ``taylor`` and ``grad``
with gradients of a loss (``loss_fn``, or a causal language model's own next-token loss).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.utils._pytree as pytree

from surgeon.capture import as_args
from surgeon.errors import SurgeonInputError
from surgeon.graph import ChannelGraph, Group
from surgeon.rules import attr_tensor
from surgeon.spaces import Sink

__all__ = [
    "CRITERIA",
    "DATA_CRITERIA",
    "GRADIENT_CRITERIA",
    "DataStats",
    "Edge",
    "causal_lm_loss",
    "check_criterion",
    "class_scores",
    "collect_stats",
    "edge_of",
    "is_causal_lm",
    "iter_batches",
    "with_own_loss",
]

CRITERIA = ("l1", "l2", "taylor", "grad", "activation", "fluctuation", "bn_scale", "random")
#: criteria measured on data: all need ``data``; the gradient ones ``loss_fn`` too (a causal
#: language model brings its own, :func:`causal_lm_loss`)
DATA_CRITERIA = ("taylor", "grad", "activation", "fluctuation")
GRADIENT_CRITERIA = ("taylor", "grad")

Edge = tuple[str, int, str]  # (source node, dim, consumer node): one sink's input
MAX_MOMENT_WIDTH = 4096  # second moments are width x width: wider inputs get means only


def edge_of(sink: Sink) -> Edge:
    return (sink.space[0], sink.space[1], sink.node)


def _check_known(importance: Any) -> None:
    if importance not in CRITERIA:
        raise SurgeonInputError(
            f"importance={importance!r} is not a known criterion; use one of {CRITERIA}",
            option="importance",
        )


def check_criterion(importance: Any, data: Any, loss_fn: Any, *, own_loss: bool = True) -> None:
    """A known criterion, and ``data`` / ``loss_fn`` when it needs them (``own_loss``: the
    model may bring its own loss, so a missing ``loss_fn`` is checked once the model is
    known)."""
    _check_known(importance)
    if importance in DATA_CRITERIA and importance not in GRADIENT_CRITERIA and data is None:
        raise SurgeonInputError(
            f"importance={importance!r} weighs each channel's weights by its activations on "
            "data and needs data=: pass an iterable of (input, target) batches (a few "
            "calibration batches; the target is not read), or use a weight criterion ('l2')",
            option="importance",
        )
    if importance in GRADIENT_CRITERIA and (data is None or (loss_fn is None and not own_loss)):
        missing = " and ".join(n for n, v in (("data=", data), ("loss_fn=", loss_fn)) if v is None)
        raise SurgeonInputError(
            f"importance={importance!r} is computed from gradients on data and needs {missing}: "
            "pass data= (an iterable of (input, target) batches, e.g. a DataLoader or a list of "
            "a few batches) and loss_fn= (e.g. torch.nn.functional.cross_entropy; a Hugging "
            "Face ...ForCausalLM needs none: its next-token loss is used), or use a weight "
            "criterion ('l2', 'l1', 'bn_scale')",
            option="importance",
        )
    if loss_fn is not None and not callable(loss_fn):
        raise SurgeonInputError(
            f"loss_fn={loss_fn!r} is not callable: pass a function loss_fn(output, target) "
            "returning a scalar tensor",
            option="loss_fn",
        )


def is_causal_lm(model: nn.Module) -> bool:
    """A generating language model (Hugging Face's ``...ForCausalLM``: ``generate``, an output
    embedding, no encoder-decoder config): its logits predict the next token."""
    config = getattr(model, "config", None)
    heads = getattr(model, "get_output_embeddings", None)
    return (
        callable(getattr(model, "generate", None))
        and callable(heads)
        and heads() is not None
        and not getattr(config, "is_encoder_decoder", False)
    )


def causal_lm_loss(output: Any, target: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy: the logits at each position against the ``target`` token ids
    one position later (``target``: the batch's labels, or its ``input_ids``)."""
    logits = output["logits"] if isinstance(output, Mapping) else output
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    logits = getattr(logits, "logits", logits)
    return nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), target[:, 1:].flatten().to(logits.device)
    )


def with_own_loss(
    model: nn.Module, data: list[Any], loss_fn: Any, criterion: str
) -> tuple[list[Any], Any]:
    """``data`` and ``loss_fn`` for a gradient criterion: a causal language model without a
    ``loss_fn`` gets :func:`causal_lm_loss`, and its batches without a target take their
    ``input_ids``; any other model without one is refused."""
    if loss_fn is not None:
        return data, loss_fn
    if not is_causal_lm(model):
        raise SurgeonInputError(
            f"importance={criterion!r} needs loss_fn= (e.g. torch.nn.functional.cross_entropy): "
            f"the {type(model).__name__} is no causal language model, whose next-token loss "
            "would serve; or use importance='activation' (data only)",
            option="loss_fn",
        )
    batches = []
    for inputs, target in iter_batches(data):
        if target is None:
            ids = inputs.get("input_ids") if isinstance(inputs, Mapping) else inputs
            target = ids
        batches.append((inputs, target))
    return batches, causal_lm_loss


@dataclass
class DataStats:
    """What ``collect_stats`` measured over the batches of ``data``.

    ``taylor[edge]``: per index of the edge's space, the mean over examples of
    ``|sum over positions of activation * gradient|`` (first-order Taylor, Molchanov et al.);
    ``means[edge]``: the mean value per index (over examples and positions); ``moments[edge]``:
    the second moments ``E[x x^T]`` between indices (edges up to ``MAX_MOMENT_WIDTH`` wide);
    ``grads[name]``: dL/dw of each parameter, summed over batches; ``squares[edge]``: the
    mean square value per index (over examples and positions), for ``activation`` and
    ``fluctuation``.
    """

    taylor: dict[Edge, np.ndarray] = field(default_factory=dict)
    means: dict[Edge, np.ndarray] = field(default_factory=dict)
    moments: dict[Edge, np.ndarray] = field(default_factory=dict)
    grads: dict[str, torch.Tensor] = field(default_factory=dict)
    squares: dict[Edge, np.ndarray] = field(default_factory=dict)


def class_scores(
    gm: fx.GraphModule, group: Group, criterion: str, stats: DataStats | None = None
) -> np.ndarray:
    """Score of each channel class of ``group`` under ``criterion`` (higher = keep).

    ``l1`` / ``l2``: the L1 norm / L2 norm of every weight slice that belongs to the class
    (producers' filters, consumers' input slices, norm scales). ``grad``: the sum of
    ``|w * dL/dw|`` over the same slices. ``taylor``: at every consumer input of the group, the
    Taylor score of each index normalised by that input's L2 norm, summed over the class.
    ``bn_scale``: the sum of ``|gamma|`` of the norms in the class (a group without a norm falls
    back to ``l2``). ``random``: a uniform draw, seeded by the group index.
    A tensor index that several space indices map to (a grouped conv's in-group offset) counts
    once.
    """
    _check_known(criterion)
    if criterion in DATA_CRITERIA and stats is None:
        needs = "data= and loss_fn=" if criterion in GRADIENT_CRITERIA else "data="
        raise SurgeonInputError(f"importance={criterion!r} needs {needs}")
    if criterion == "random":
        return np.random.default_rng([0, group.index]).random(group.n_classes)
    if criterion == "taylor":
        return _taylor_scores(group, stats)
    if criterion in ("activation", "fluctuation"):
        scores = _consumer_scores(gm, group, stats, criterion)
        if scores.any():
            return scores
        criterion = "l2"  # no consumer measured (a group read only by the output)
    if criterion == "bn_scale":
        scores = _slice_scores(gm, group, lambda sl, t: t.abs(), roles=("norm",), names=("weight",))
        if scores.any():
            return scores
        criterion = "l2"
    if criterion == "grad":
        grads = stats.grads  # type: ignore[union-attr]

        def fn(sl, t):
            g = grads.get(_qualname(sl.owner, sl.name))
            return torch.zeros_like(t) if g is None else (t * g).abs()

        return _slice_scores(gm, group, fn)
    if criterion == "l1":
        return _slice_scores(gm, group, 1)
    return np.sqrt(_slice_scores(gm, group, 2))


def _qualname(owner: str, name: str) -> str:
    return f"{owner}.{name}" if owner else name


def _slice_scores(
    gm: fx.GraphModule,
    group: Group,
    fn: Callable[[Any, torch.Tensor], torch.Tensor] | int,
    *,
    roles: tuple[str, ...] = ("producer", "consumer", "norm", "param"),
    names: tuple[str, ...] | None = None,
) -> np.ndarray:
    """Sum over the class's weight slices (biases excluded) of ``fn(slice, tensor)``; an int
    ``fn`` p is ``|tensor| ** p`` (summed in one fused norm, no temporary the weight's size)."""
    scores = np.zeros(group.n_classes)
    for sl in group.params:
        if sl.role not in roles or sl.name == "bias" or (names and sl.name not in names):
            continue
        t = attr_tensor(gm, _qualname(sl.owner, sl.name))
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            continue
        with torch.no_grad():
            others = [d for d in range(t.dim()) if d != sl.dim]
            if isinstance(fn, int):
                mag = power_sums(t.detach(), sl.dim, fn).cpu().numpy()
            else:
                w = fn(sl, t.detach())
                mag = (w.sum(dim=others) if others else w).double().cpu().numpy()
        cls = group.class_of[sl.space]
        tidx = sl.tensor_index(len(cls))
        uniq, first = np.unique(tidx, return_index=True)
        np.add.at(scores, cls[first], mag[uniq])
    return scores


_CHUNK = 1 << 18  # elements a chunk of a strided reduction reads (stays in cache)


def power_sums(t: torch.Tensor, dim: int, p: int) -> torch.Tensor:
    """``sum |t|^p`` over every dim but ``dim``, in float64.

    Over the leading dim (a producer's filters) one fused norm; over an inner dim (a
    consumer's input slices) the dims after it are reduced first, and the dims before it a
    chunk of rows at a time: a strided reduction over a large weight in one call reads it
    with poor locality (the column norms of VGG's 4096 x 25088 Linear, for one).
    """
    if t.dtype not in (torch.float32, torch.float64):
        t = t.float()  # float16 squares below 2.4e-4 to 0 and above 256 to inf
    if t.dim() == 0:
        return t.abs().double().pow(p).reshape(1)
    if dim == 0:
        if t.dim() == 1:
            return t.abs().double().pow(p)
        return torch.linalg.vector_norm(t, p, dim=tuple(range(1, t.dim()))).double().pow(p)
    inner = math.prod(t.shape[dim + 1 :])  # not -1: a zero-size dim makes -1 ambiguous
    rows = t.reshape(math.prod(t.shape[:dim]), t.shape[dim], inner)
    step = max(1, _CHUNK // max(1, rows.shape[1] * rows.shape[2]))
    acc = torch.zeros(rows.shape[1], dtype=torch.float64, device=t.device)
    for i in range(0, rows.shape[0], step):
        part = rows[i : i + step]
        part = part.square() if p == 2 else part.abs().pow(p)
        acc += part.sum((0, 2), dtype=torch.float64)
    return acc


def _taylor_scores(group: Group, stats: DataStats | None) -> np.ndarray:
    scores = np.zeros(group.n_classes)
    seen: set[Edge] = set()
    for sink in group.sinks:
        edge = edge_of(sink)
        t = None if stats is None else stats.taylor.get(edge)
        if t is None or edge in seen:
            continue
        seen.add(edge)
        norm = np.linalg.norm(t)
        if norm > 0:
            np.add.at(scores, group.class_of[sink.space], t / norm)
    return scores


def _consumer_scores(
    gm: fx.GraphModule, group: Group, stats: DataStats | None, criterion: str
) -> np.ndarray:
    """At every consumer that reads the class, summed over the class:

    ``activation`` (Wanda-SP, Sun et al. 2023, structured): the L1 norm of the weights
    reading the channel times the channel's root mean square activation on the data;
    ``fluctuation`` (FLAP, An et al. 2024): the squared L2 norm of those weights times the
    variance of the channel's activation: what the consumer's output loses when the channel
    is replaced by its mean, which compensation folds into the consumer's bias."""
    scores = np.zeros(group.n_classes)
    if stats is None:
        return scores
    power = 1 if criterion == "activation" else 2
    for sink in group.sinks:
        edge = edge_of(sink)
        sq = stats.squares.get(edge)
        if sq is None or sink.owner is None:
            continue
        if criterion == "activation":
            size = np.sqrt(sq)
        else:
            mean = stats.means.get(edge, np.zeros_like(sq))
            size = np.maximum(sq - mean * mean, 0.0)
        for sl in group.params:
            if sl.role != "consumer" or sl.owner != sink.owner or sl.space != sink.space:
                continue
            if sl.name == "bias":
                continue
            t = attr_tensor(gm, _qualname(sl.owner, sl.name))
            if not isinstance(t, torch.Tensor) or not t.is_floating_point():
                continue
            with torch.no_grad():
                mag = power_sums(t.detach(), sl.dim, power).cpu().numpy()
            cls = group.class_of[sl.space]
            tidx = sl.tensor_index(len(cls))
            np.add.at(scores, cls, mag[tidx] * size[: len(cls)])
    return scores


# -- measuring on data -----------------------------------------------------------------------
class _Probe(nn.Module):
    """Sits on one edge (a node's value going into one consumer): ``x * gate`` per probed dim,
    with a gate of ones over (example, channel) whose gradient is, per example and channel,
    the sum of ``activation * gradient`` over the other positions; also sums channel means."""

    def __init__(self, taylor: bool, means: bool, squares: bool = False) -> None:
        super().__init__()
        self.want_taylor, self.want_means, self.want_squares = taylor, means, squares
        self.squares: dict[int, torch.Tensor] = {}
        self.dims: list[int] = []
        self.gates: dict[int, torch.Tensor] = {}
        self.taylor: dict[int, torch.Tensor] = {}
        self.sum: dict[int, torch.Tensor] = {}
        self.outer: dict[int, torch.Tensor] = {}
        self.count: dict[int, int] = {}

    def forward(self, x: Any) -> Any:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            return x
        for dim in self.dims:
            if x.dim() <= dim:
                continue
            if self.want_squares:
                rows = x.detach().movedim(dim, -1).reshape(-1, x.shape[dim]).double()
                q = (rows * rows).sum(0)
                self.squares[dim] = q + self.squares[dim] if dim in self.squares else q
                if not self.want_means:
                    self.count[dim] = self.count.get(dim, 0) + rows.shape[0]
            if self.want_means:
                rows = x.detach().movedim(dim, -1).reshape(-1, x.shape[dim]).double()
                s = rows.sum(0)
                self.sum[dim] = s + self.sum[dim] if dim in self.sum else s
                self.count[dim] = self.count.get(dim, 0) + rows.shape[0]
                if x.shape[dim] <= MAX_MOMENT_WIDTH:
                    o = rows.T @ rows
                    self.outer[dim] = o + self.outer[dim] if dim in self.outer else o
            if self.want_taylor and x.requires_grad:
                shape = [1] * x.dim()
                shape[dim] = x.shape[dim]
                if dim != 0:
                    shape[0] = x.shape[0]
                gate = torch.ones(shape, dtype=x.dtype, device=x.device, requires_grad=True)
                self.gates[dim] = gate
                x = x * gate
        return x

    def after_backward(self) -> None:
        for dim, gate in self.gates.items():
            if gate.grad is None:
                continue
            g = gate.grad.detach().double().abs()
            per = g.reshape(g.shape[0], -1).sum(0) if dim != 0 else g.reshape(-1)
            self.taylor[dim] = per + self.taylor[dim] if dim in self.taylor else per
        self.gates = {}


def collect_stats(
    gm: fx.GraphModule,
    graph: ChannelGraph,
    data: Iterable[Any],
    loss_fn: Callable[..., torch.Tensor] | None,
    *,
    taylor: bool = False,
    grads: bool = False,
    means: bool = False,
    squares: bool = False,
) -> DataStats:
    """Run ``gm`` (a copy of it, in eval mode) over ``data`` and measure, at every consumer
    input of every prunable group, the Taylor scores and / or the mean values, and / or the
    parameter gradients. ``data`` yields ``(input, target)`` batches; ``loss_fn(output,
    target)`` gives the scalar loss (only needed for ``taylor`` / ``grads``)."""
    work = copy.deepcopy(gm).eval()
    for p in work.parameters():
        p.grad = None
        p.requires_grad_(grads or taylor)
    probes = _insert_probes(work, graph, taylor, means, squares)
    examples = _run_batches(work, data, loss_fn, probes, backward=taylor or grads)
    stats = DataStats()
    for (src_name, consumer_name), probe in probes.items():
        for dim, t in probe.taylor.items():
            stats.taylor[(src_name, dim, consumer_name)] = (t / examples).cpu().numpy()
        for dim, s in probe.sum.items():
            if probe.count.get(dim):
                stats.means[(src_name, dim, consumer_name)] = (s / probe.count[dim]).cpu().numpy()
        for dim, o in probe.outer.items():
            stats.moments[(src_name, dim, consumer_name)] = (o / probe.count[dim]).cpu().numpy()
        for dim, q in probe.squares.items():
            stats.squares[(src_name, dim, consumer_name)] = (q / probe.count[dim]).cpu().numpy()
    if grads:
        for name, p in work.named_parameters():
            if p.grad is not None:
                stats.grads[name] = p.grad.detach().clone()
    return stats


def _insert_probes(
    work: fx.GraphModule, graph: ChannelGraph, taylor: bool, means: bool, squares: bool = False
) -> dict[tuple[str, str], _Probe]:
    """A probe module on every (source, consumer) edge of every prunable group's sinks."""
    probes: dict[tuple[str, str], _Probe] = {}
    nodes = {n.name: n for n in work.graph.nodes}
    for g in graph.prunable_groups():
        for sink in g.sinks:
            src_name, dim, consumer_name = edge_of(sink)
            if src_name not in nodes or consumer_name not in nodes:
                continue
            probe = probes.get((src_name, consumer_name))
            if probe is None:
                probe = _Probe(taylor, means, squares)
                name = f"_surgeon_probe_{len(probes)}"
                work.add_submodule(name, probe)
                src, consumer = nodes[src_name], nodes[consumer_name]
                with work.graph.inserting_before(consumer):
                    gated = work.graph.call_module(name, (src,))
                consumer.replace_input_with(src, gated)
                probes[(src_name, consumer_name)] = probe
            if dim not in probe.dims:
                probe.dims.append(dim)
    work.recompile()
    return probes


def _run_batches(
    work: fx.GraphModule,
    data: Iterable[Any],
    loss_fn: Callable[..., torch.Tensor] | None,
    probes: dict[tuple[str, str], _Probe],
    *,
    backward: bool,
) -> int:
    """One pass over ``data`` (with backward when gradients are needed); the example count."""
    device = next((p.device for p in work.parameters()), torch.device("cpu"))
    examples = 0
    for i, (inputs, target) in enumerate(iter_batches(data)):
        inputs = torch.utils._pytree.tree_map(
            lambda v: v.to(device) if isinstance(v, torch.Tensor) else v, inputs
        )
        if isinstance(target, torch.Tensor):
            target = target.to(device)
        args, kwargs = as_args(inputs)
        with torch.set_grad_enabled(backward):
            try:
                out = work(*args, **kwargs)
            except (RuntimeError, IndexError, ValueError) as exc:
                raise SurgeonInputError(
                    f"data= batch {i} ({_shapes_of(inputs)}) fails in the captured graph "
                    f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); a graph whose "
                    "model branches on sizes is specialised to the example inputs' shapes "
                    "(the capture's warning says so): give calibration batches of the "
                    "example's shapes, or an example input of the batches' shapes",
                    option="data",
                ) from exc
            if backward:
                _scalar_loss(loss_fn(out, target), i).backward()  # type: ignore[misc]
                for probe in probes.values():
                    probe.after_backward()
        first = args[0] if args else next(iter(kwargs.values()), None)
        examples += int(first.shape[0]) if isinstance(first, torch.Tensor) and first.dim() else 1
    if examples == 0:
        raise SurgeonInputError(
            "data= yielded no batches: pass an iterable of (input, target) batches with at "
            "least one batch"
        )
    return examples


def _shapes_of(inputs: Any) -> str:
    leaves = pytree.tree_leaves(inputs)
    return ", ".join(str(tuple(v.shape)) for v in leaves if isinstance(v, torch.Tensor))


def _scalar_loss(loss: Any, batch: int) -> torch.Tensor:
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise SurgeonInputError(
            f"loss_fn returned {type(loss).__name__}"
            f"{'' if not isinstance(loss, torch.Tensor) else tuple(loss.shape)} for "
            f"batch {batch}: it must return a scalar tensor, e.g. "
            "torch.nn.functional.cross_entropy(output, target)"
        )
    return loss


def iter_batches(data: Iterable[Any]) -> Iterable[tuple[Any, Any]]:
    if isinstance(data, (torch.Tensor, str, bytes)) or not isinstance(data, Iterable):
        raise SurgeonInputError(
            f"data= must be an iterable of (input, target) batches (a DataLoader or a list of "
            f"tuples), got {type(data).__name__}"
        )
    for i, batch in enumerate(data):
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            what = type(batch).__name__
            if isinstance(batch, (tuple, list)):
                what += f" of length {len(batch)}"
            raise SurgeonInputError(
                f"data= batch {i} is a {what}: each batch must be an (input, target) pair, e.g. "
                "a DataLoader over a TensorDataset(x, y)"
            )
        yield batch[0], batch[1]
