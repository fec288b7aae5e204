"""CompensatePass: fold the expected contribution of removed channels into their consumers."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from surgeon.graph import ChannelGraph
from surgeon.importance import Edge, edge_of
from surgeon.passes.base import PassResult, SurgeryPass
from surgeon.rules import add_bias, clear_caches, copy_module, traits
from surgeon.rules.base import replace_tensor
from surgeon.spaces import Sink

__all__ = ["CompensatePass", "expected_mean", "recalibrate_norms"]

# E[f(y)] for y ~ N(mu, sigma^2) as sum_i w_i f(mu + sigma z_i) on a fine grid over +-8 sigma:
# unlike Gauss-Hermite, a grid stays accurate for activations with a kink (ReLU: ~1e-7).
_Z = torch.linspace(-8.0, 8.0, 4001, dtype=torch.float64)
_W = torch.exp(-0.5 * _Z * _Z)
_W /= _W.sum()
_W = _W.reshape(-1, 1)


def _module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    if node.op != "call_module":
        return None
    return gm.get_submodule(str(node.target))


def _only_first_arg_is_node(node: fx.Node) -> bool:
    if not node.args or not isinstance(node.args[0], fx.Node):
        return False
    others: list[fx.Node] = []
    fx.node.map_arg((node.args[1:], node.kwargs), others.append)
    return not others


def _activation(gm: fx.GraphModule, node: fx.Node) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The elementwise function ``node`` applies to its first argument, if it is one (it may
    work in place on the tensor it is given)."""
    m = _module(gm, node)
    if "elementwise" not in traits(node, m):
        return None
    if m is not None:
        return lambda t: copy_module(m)(t)
    if not _only_first_arg_is_node(node):
        return None
    args = node.args[1:]
    kwargs = {k: v for k, v in node.kwargs.items() if k != "inplace"}
    if node.op == "call_function":
        return lambda t: node.target(t, *args, **kwargs)  # type: ignore[operator]
    return lambda t: getattr(t, str(node.target))(*args, **kwargs)


def _keeps_mean(gm: fx.GraphModule, node: fx.Node) -> bool:
    m = _module(gm, node)
    if "mean_keeping" not in traits(node, m):
        return False
    return m is not None or (node.op == "call_function" and _only_first_arg_is_node(node))


def _flatten_block(gm: fx.GraphModule, node: fx.Node) -> int | None:
    """For ``flatten(x, 1)`` of an [N, C, *S] tensor: prod(S), the run of each channel."""
    m = _module(gm, node)
    if "flatten" not in traits(node, m):
        return None
    if isinstance(m, nn.Flatten):
        start, end = m.start_dim, m.end_dim
    else:
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
    src = node.args[0] if node.args else None
    meta = src.meta.get("tensor_meta") if isinstance(src, fx.Node) else None
    shape = getattr(meta, "shape", None)
    if shape is None or start != 1 or end not in (-1, len(shape) - 1) or len(shape) < 3:
        return None
    return math.prod(shape[2:])


def expected_mean(
    gm: fx.GraphModule, node: fx.Node, dim: int, only: np.ndarray | None = None
) -> np.ndarray | None:
    """Expected value of each index of ``node``'s output along ``dim``, when it is computable
    from a batch norm's affine parameters (its output is ~ N(beta, gamma^2) per channel when
    its input matches its running statistics)
    through at most one elementwise activation, mean-keeping ops (average pooling, dropout)
    and a final ``flatten(x, 1)``. ``None`` otherwise. ``only``: the indices wanted (the
    others are NaN; the activation's quadrature is then done for those alone)."""
    repeat = 1
    if dim == 1 and (block := _flatten_block(gm, node)) is not None:
        repeat, node = block, node.args[0]
    act = None
    for _ in range(16):
        if not isinstance(node, fx.Node):
            return None
        m = _module(gm, node)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if dim != 1:
                return None
            n = m.num_features
            gamma = m.weight.detach().double() if m.weight is not None else torch.ones(n)
            beta = m.bias.detach().double() if m.bias is not None else torch.zeros(n)
            mean = beta.cpu()
            if act is not None:
                rows = torch.arange(n)
                if only is not None:  # the channels of the wanted indices (after flatten)
                    rows = torch.as_tensor(np.unique(np.asarray(only) // repeat), dtype=torch.long)
                # float32 unless the model is float64: faster, and its relative error stays
                # far below what the Gaussian model of the channel assumes
                float64 = any(
                    t is not None and t.dtype == torch.float64 for t in (m.weight, m.running_mean)
                )
                dtype = torch.float64 if float64 else torch.float32
                # 64 channels at a time: a 1280-channel norm would take 40 MB at once
                mu, sigma, z, w = beta.cpu(), gamma.abs().cpu(), _Z.to(dtype), _W.to(dtype)
                mean = torch.full((n,), math.nan, dtype=torch.float64)
                for part in rows.split(64):
                    y = torch.addcmul(mu[part, None].to(dtype), sigma[part, None].to(dtype), z)
                    mean[part] = (act(y) @ w).double().reshape(-1)
            return np.repeat(mean.numpy(), repeat)
        if _keeps_mean(gm, node):
            node = node.args[0]
            continue
        f = _activation(gm, node) if act is None else None
        if f is None:
            return None
        act, node = f, node.args[0]
    return None


_BLOCK = 1 << 18  # weight elements per block of rows in a contraction


def _contract_weight(
    gm: fx.GraphModule, sink: Sink, source: fx.Node, cols: np.ndarray
) -> tuple[nn.Module, Callable[[np.ndarray], torch.Tensor]] | None:
    """The consumer of ``sink`` and ``v -> W[:, cols] @ v`` (float64), when the consumer is a
    Linear or an ungrouped Conv reading the sink's space. For a conv each kernel tap counts by
    the fraction of output positions where it reads inside the input (padding reads zeros),
    so that ``W @ mean`` is the consumer's expected input over all positions. The product
    runs a block of rows at a time: no copy of the weight's size (a 4096 x 25088 Linear)."""
    if sink.kind != "contract" or sink.owner is None:
        return None
    m = gm.get_submodule(sink.owner)
    if not isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
        return None
    w = m.weight.detach()
    if len(cols) and int(cols.max()) >= w.shape[1]:
        return None  # the sink's space is not this weight's input dim
    frac = None
    if isinstance(m, nn.modules.conv._ConvNd):
        if m.transposed or m.groups != 1:
            return None
        meta = source.meta.get("tensor_meta")
        shape = getattr(meta, "shape", None)
        k = w.dim() - 2
        if shape is None or len(shape) != k + 2 or m.padding_mode != "zeros":
            return None
        frac = _tap_fractions(
            tuple(shape[2:]), tuple(m.kernel_size), m.stride, m.padding, m.dilation
        ).to(w.device)
    index = torch.as_tensor(cols, dtype=torch.long, device=w.device)

    def times(v: np.ndarray) -> torch.Tensor:
        vec = torch.as_tensor(v, dtype=torch.float64, device=w.device)
        step = max(1, _BLOCK // max(1, len(cols) * math.prod(w.shape[2:])))
        out = []
        for i in range(0, w.shape[0], step):
            block = w[i : i + step].index_select(1, index).double()
            if frac is not None:
                block = block.flatten(2) @ frac
            out.append(block @ vec)
        return torch.cat(out) if out else vec.new_zeros(0)

    return m, times


@functools.lru_cache(maxsize=256)
def _tap_fractions(
    size: tuple[int, ...], kernel: tuple[int, ...], stride: Any, padding: Any, dilation: Any
) -> torch.Tensor:
    """Per kernel tap, the fraction of output positions where it reads inside the input."""
    taps = math.prod(kernel)
    one_hot = torch.eye(taps, dtype=torch.float64).reshape(taps, 1, *kernel)
    conv = (F.conv1d, F.conv2d, F.conv3d)[len(kernel) - 1]
    inside = conv(
        torch.ones(1, 1, *size, dtype=torch.float64),
        one_hot,
        stride=stride,
        padding=padding,
        dilation=dilation,
    )
    return inside.flatten(2).mean(-1).reshape(taps)


class CompensatePass(SurgeryPass):
    """Folds each removed channel's expected value into its consumers, so the zero-shot slim
    model keeps the mean of every consumer's output.

    For every consumer (a Linear or an ungrouped Conv, called once) of a class the criterion
    removed, ``delta = W[:, removed] @ mean[removed]`` is added:
    1. to a batch norm that is the consumer's only user, as ``running_mean -= delta`` (the
       same eval output as a bias, no new parameter; in train mode batch statistics absorb it);
    2. else to the consumer's bias, created when it has none unless ``new_bias`` is False
       (the user's own model is to come back with its own state-dict names): such a consumer
       is then not compensated.
    A conv's kernel taps count by the fraction of output positions where they read inside the
    input (zero padding contributes nothing), so the fold keeps the mean over all positions.
    With measured second moments (``data``), the removed inputs are first regressed on the
    kept ones of the same consumer, ``x_R ~ A x_K + c``, and ``W_R A`` is added to the kept
    weights (each position's removed values are predicted from its kept ones, which also
    keeps the variance they share); only ``W_R c`` is left for step 1 / 2.
    The mean of a removed channel comes from ``state.stats`` (measured on data) when given, else from
    the batch norm that produced it through its activation (``expected_mean``); a channel with
    neither is not compensated. It keeps expected values, not the function: the consumer
    still loses the variance the removed channels carried. Classes already compensated
    (``state.compensated``) are not compensated again, so a second run changes nothing.
    """

    def __init__(self, new_bias: bool = True) -> None:
        self.new_bias = new_bias

    def call(self, gm: fx.GraphModule) -> PassResult:
        state = self.state(gm)
        todo = {gi: m & ~state.compensated[gi] for gi, m in state.removed.items()}
        if state.applied or not any(m.any() for m in todo.values()):
            return PassResult(gm, False, {"compensated": 0})
        means = state.stats.means if state.stats is not None else {}
        moments = state.stats.moments if state.stats is not None else {}
        nodes = {n.name: n for n in gm.graph.nodes}
        owners: dict[int, set[int]] = {}  # tensor id -> the modules that hold it
        for mod in gm.modules():
            for t in mod.parameters(recurse=False):
                owners.setdefault(id(t), set()).add(id(mod))
        self._owners, self._means = owners, {}
        done = 0
        for g in state.graph.prunable_groups():
            if not todo[g.index].any():
                continue
            for sink in g.sinks:
                gone = todo[g.index][g.class_of[sink.space]]
                removed = state.removed[g.index][g.class_of[sink.space]]
                done += self._sink(gm, state.graph, nodes, sink, gone, removed, means, moments)
        if done:
            clear_caches()  # consumer weights may have changed
        compensated = {gi: state.compensated[gi] | m for gi, m in todo.items()}
        self.store(gm, state.replace(compensated=compensated))
        return PassResult(gm, done > 0, {"compensated": done})

    def _sink(
        self,
        gm: fx.GraphModule,
        graph: ChannelGraph,
        nodes: dict[str, fx.Node],
        sink: Sink,
        gone: np.ndarray,
        removed: np.ndarray,
        means: Mapping[Edge, np.ndarray],
        moments: Mapping[Edge, np.ndarray],
    ) -> int:
        """Compensate the ``gone`` indices of one sink's space (``removed``: every index that
        goes, the ones compensated earlier included); returns how many were folded."""
        idx = np.nonzero(gone)[0]
        source = nodes.get(sink.space[0])
        if source is None:  # a tuple's piece, or a space inside a rule: no activation to read
            return 0
        found = _contract_weight(gm, sink, source, idx) if len(idx) else None
        if found is None or graph.calls[sink.owner] > 1:
            return 0
        m, times = found
        if any(t is not None and len(self._owners.get(id(t), ())) > 1 for t in (m.weight, m.bias)):
            return 0  # a tied weight or bias: changing it would change its other owner
        if (
            m.bias is None
            and not self.new_bias
            and _norm_after(gm, graph, nodes[sink.node], m) is None
        ):
            return 0  # it would need a bias it does not have
        mean = means.get(edge_of(sink))
        if mean is None:
            key = (sink.space, idx.tobytes())  # a residual sum feeds many consumers
            if key not in self._means:
                self._means[key] = expected_mean(gm, nodes[sink.space[0]], sink.space[1], idx)
            mean = self._means[key]
        if mean is None or len(mean) != m.weight.shape[1] or not np.isfinite(mean[idx]).all():
            return 0
        offset = mean[idx]
        moment = moments.get(edge_of(sink))
        if moment is not None and moment.shape == (len(mean), len(mean)):
            offset = self._reconstruct(m, gone, removed, mean, moment)
        with torch.no_grad():
            _apply(gm, graph, nodes[sink.node], m, times(offset).to(m.weight.dtype))
        return len(idx)

    @staticmethod
    def _reconstruct(
        m: nn.Module, gone: np.ndarray, removed: np.ndarray, mean: np.ndarray, moment: np.ndarray
    ) -> np.ndarray:
        """Regress the ``gone`` inputs on the kept ones (not ``removed``), ``x_R ~ A x_K + c``
        (ridge, from the measured first and second moments), and fold ``W_R A`` into the kept
        weights; returns ``c``, the offset left for the bias. With ``A = 0`` this is plain mean
        compensation."""
        keep, drop = np.nonzero(~removed)[0], np.nonzero(gone)[0]
        cov = moment - np.outer(mean, mean)
        kk, rk = cov[np.ix_(keep, keep)], cov[np.ix_(drop, keep)]
        ridge = 1e-3 * max(float(np.trace(kk)) / max(len(keep), 1), 1e-12)
        a = np.linalg.solve(kk + ridge * np.eye(len(keep)), rk.T).T  # [R, K]
        if not np.isfinite(a).all():
            return mean[drop]
        with torch.no_grad():
            w = m.weight
            ta = torch.as_tensor(a, dtype=torch.float64, device=w.device)
            w_r = w[:, torch.as_tensor(drop)].double()
            add = torch.einsum("or...,rk->ok...", w_r, ta)
            new = w.detach().clone()  # a new tensor: the old one may be the user's own
            new[:, torch.as_tensor(keep)] += add.to(w.dtype)
            replace_tensor(m, "weight", new)
        return mean[drop] - a @ mean[keep]


def _apply(
    gm: fx.GraphModule, graph: ChannelGraph, consumer: fx.Node, m: nn.Module, delta: torch.Tensor
) -> None:
    """Add ``delta`` to what ``consumer`` (module ``m``) outputs: into a batch norm that is
    its only user, as ``running_mean -= delta``, else into its bias."""
    bn = _norm_after(gm, graph, consumer, m)
    if bn is not None:
        replace_tensor(bn, "running_mean", bn.running_mean - delta.to(bn.running_mean))
        return
    add_bias(m, delta)


def _norm_after(
    gm: fx.GraphModule, graph: ChannelGraph, consumer: fx.Node, m: nn.Module
) -> nn.Module | None:
    """The batch norm (called once, with running statistics) that is the only user of
    ``consumer`` (module ``m``) and normalises its channel dim; else None."""
    users = list(consumer.users)
    bn = _module(gm, users[0]) if len(users) == 1 else None
    out = consumer.meta.get("tensor_meta")
    channel_dim_1 = isinstance(m, nn.modules.conv._ConvNd) or len(getattr(out, "shape", ())) == 2
    if (
        isinstance(bn, nn.modules.batchnorm._BatchNorm)
        and bn.running_mean is not None
        and channel_dim_1
        and graph.calls[str(users[0].target)] == 1
        and users[0].args[0] is consumer
    ):
        return bn
    return None


def recalibrate_norms(model: nn.Module, batches: Iterable[Any]) -> int:
    """Re-estimate the running statistics of every batch norm of ``model`` on ``batches`` of
    ``(input, target)``: a cumulative average over one pass (momentum ``None``), without
    gradients. Every other module stays in its mode; the norms get theirs back. Returns the
    number of norms re-estimated."""
    from surgeon.capture import as_args

    norms = [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    if not norms:
        return 0
    saved = [(m, m.training, m.momentum) for m in norms]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        with torch.no_grad():
            for inputs, _ in batches:
                inputs = torch.utils._pytree.tree_map(
                    lambda v: v.to(device) if isinstance(v, torch.Tensor) else v, inputs
                )
                args, kwargs = as_args(inputs)
                model(*args, **kwargs)
    finally:
        for m, training, momentum in saved:
            m.train(training)
            m.momentum = momentum
    return len(norms)
