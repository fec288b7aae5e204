"""Whole experts of mixture-of-experts layers (``structures`` with ``"experts"``): find the
layers, score their experts on data, take the least used out of the model itself.

A *mixture-of-experts layer* is a module with a router child (a 2-D ``weight`` of one row per
expert) and an experts child whose parameters all hold one entry per expert along their
first dim (matrices stacked: 3-D), called as ``experts(hidden, top_k_index, top_k_weights)`` (the form Hugging Face
models take since transformers 5: Mixtral, Qwen-MoE, OLMoE, DeepSeek and others).

An expert's score is REAP's (router-weighted expert activation): over the tokens the router
sends it on the calibration data, the mean of its routing weight times the norm of its
output. An expert the router never selects scores 0: where the routing weights are
renormalised over the chosen experts (``norm_topk_prob``, Mixtral) it goes exactly.

The experts go from the parameters themselves (the router's rows with them), so the model
keeps its class; the counts the modules hold (``num_experts``) and the config's
(``num_local_experts``, ``num_experts``) follow. No layer keeps fewer experts than it routes
each token to (``top_k``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.utils._pytree as pytree

from surgeon.modelconfig import follow_count, restore_configs, saved_configs
from surgeon.verify import eager_outputs, eager_runs

__all__ = ["MoE", "find_moes", "score_moes", "drop_experts", "cut_experts"]

log = logging.getLogger(__name__)

_TOP_K_NAMES = ("top_k", "num_experts_per_tok", "topk", "k")


@dataclass
class MoE:
    """One mixture-of-experts layer: its path, router and experts children, expert count,
    how many experts each token goes to, and (once scored) each expert's score."""

    path: str
    router: str
    experts: str
    size: int
    top_k: int
    sums: list[float] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)

    @property
    def scores(self) -> list[float]:
        return [s / c if c else 0.0 for s, c in zip(self.sums, self.counts, strict=True)]

    def chosen(self, ratio: float) -> tuple[list[int], list[int]]:
        """The experts ``ratio`` takes (the share of the layer's experts, rounded down), the
        least used first, never below ``top_k`` left; and the experts never selected beyond
        those (they go too where that leaves the output as it was)."""
        scores = self.scores
        order = sorted(range(self.size), key=lambda i: (scores[i], i))
        most = self.size - max(self.top_k, 1)
        take = order[: min(int(ratio * self.size + 1e-9), most)]
        never = [i for i in order if self.counts[i] == 0 and i not in take]
        return sorted(take), sorted(never[: max(0, most - len(take))])


def _expert_count(router: nn.Module) -> int | None:
    w = getattr(router, "weight", None)
    return int(w.shape[0]) if isinstance(w, torch.Tensor) and w.dim() == 2 else None


def _top_k(*modules: nn.Module) -> int:
    for m in modules:
        for name in _TOP_K_NAMES:
            v = getattr(m, name, None)
            if type(v) is int and v > 0:
                return v
    return 1


def find_moes(model: nn.Module) -> list[MoE]:
    """Modules with a router child (one weight row per expert) and an experts child whose
    parameters all lead with the expert count."""
    found = []
    for path, m in model.named_modules():
        children = dict(m.named_children())
        for rname, router in children.items():
            n = _expert_count(router)
            if n is None or n < 2:
                continue
            for ename, experts in children.items():
                params = list(experts.parameters(recurse=False))
                if ename == rname or not params or len(params) != len(list(experts.parameters())):
                    continue  # the experts' weights are its own, stacked: no Linear children
                if all(p.dim() >= 3 and p.shape[0] == n for p in params):
                    found.append(MoE(path, rname, ename, n, _top_k(router, m)))
    return found


def score_moes(model: nn.Module, moes: list[MoE], batches: Iterable[Any]) -> list[MoE]:
    """REAP scores on the batches: each experts module is watched as it is called; its
    ``(hidden, top_k_index, top_k_weights)`` give the tokens and weights of each expert, and
    the expert's output on its tokens is computed by routing them to it alone. Returns the
    layers that ran in that form."""
    handles = []
    ran: set[int] = set()

    def watcher(i: int, moe: MoE):
        def hook(module, args, kwargs):
            values = [*args, *kwargs.values()]
            if len(values) < 3 or not all(isinstance(v, torch.Tensor) for v in values[:3]):
                return
            hidden, index, weights = values[:3]
            if index.is_floating_point() or index.shape != weights.shape:
                return
            ran.add(i)
            for e in range(moe.size):
                tokens, pos = torch.where(index == e)
                if not len(tokens):
                    continue
                one = torch.full((len(tokens), 1), e, dtype=index.dtype, device=index.device)
                ones = torch.ones((len(tokens), 1), dtype=weights.dtype, device=weights.device)
                with _unwatched(module, hooks[i]):
                    out = module(hidden[tokens], one, ones)
                g = weights[tokens, pos].double()
                moe.sums[e] += float((g * out.double().norm(dim=-1)).sum())
                moe.counts[e] += len(tokens)

        return hook

    hooks: dict[int, Any] = {}
    for i, moe in enumerate(moes):
        moe.sums, moe.counts = [0.0] * moe.size, [0] * moe.size
        experts = model.get_submodule(f"{moe.path}.{moe.experts}" if moe.path else moe.experts)
        hooks[i] = experts.register_forward_pre_hook(watcher(i, moe), with_kwargs=True)
        handles.append(hooks[i])
    try:
        for _ in eager_runs(model, batches):
            pass
    finally:
        for h in handles:
            h.remove()
    return [m for i, m in enumerate(moes) if i in ran]


class _unwatched:
    """The experts module called from its own hook without the hook firing again."""

    def __init__(self, module: nn.Module, handle: Any) -> None:
        self.module, self.handle = module, handle

    def __enter__(self) -> None:
        self.saved = self.module._forward_pre_hooks.pop(self.handle.id, None)

    def __exit__(self, *exc: Any) -> None:
        if self.saved is not None:
            self.module._forward_pre_hooks[self.handle.id] = self.saved


def drop_experts(model: nn.Module, moe: MoE, drop: Iterable[int]) -> None:
    """Take the experts ``drop`` out of ``moe`` (in place): the experts' parameters and the
    router's rows (and buffers) keep the others, the modules' expert counts and the config
    follow."""
    drop = set(drop)
    kept = [i for i in range(moe.size) if i not in drop]
    block = model.get_submodule(moe.path) if moe.path else model
    router, experts = block.get_submodule(moe.router), block.get_submodule(moe.experts)
    index = torch.tensor(kept)
    for m in (router, experts):
        for name, p in list(m._parameters.items()):
            if p is not None and p.dim() >= 1 and p.shape[0] == moe.size:
                m._parameters[name] = nn.Parameter(
                    p.detach().index_select(0, index.to(p.device)), p.requires_grad
                )
        for name, b in list(m._buffers.items()):
            if b is not None and b.dim() >= 1 and b.shape[0] == moe.size:
                m._buffers[name] = b.index_select(0, index.to(b.device))
    for m in (block, router, experts):
        for name, v in list(vars(m).items()):
            if type(v) is int and v == moe.size and "expert" in name.lower():
                setattr(m, name, len(kept))
    follow_count(model, moe.size, kept, word="expert", by_length=False)


def cut_experts(
    model: nn.Module,
    batches: list[Any],
    ratio: float,
    chosen: Mapping[str, Iterable[int]] | None = None,
) -> list[dict[str, Any]]:
    """Take out of ``model`` (in place) the experts ``ratio`` chooses in each mixture-of-experts
    layer (or those ``chosen`` names by layer path, a saved plan's); returns a record per
    layer. Experts never selected on the data go beyond the ratio only where the model's
    output on ``batches[0]`` stays what it was (a router that renormalises its top-k
    weights); elsewhere (the removed experts' share of the softmax changes the others'
    weights) they stay."""
    moes = find_moes(model)
    if chosen is not None:
        moes = [m for m in moes if m.path in chosen]
    if not moes:
        return []
    records = []
    for moe in score_moes(model, moes, batches):
        if chosen is not None:
            drop = sorted(chosen[moe.path])
        else:
            drop, never = moe.chosen(ratio)
            if never:
                drop = _with_unused(model, moe, drop, never, batches[0])
        if drop:
            drop_experts(model, moe, drop)
        records.append(
            {
                "path": moe.path,
                "size": moe.size,
                "removed": drop,
                "scores": [round(v, 6) for v in moe.scores],
            }
        )
    return records


def _with_unused(
    model: nn.Module, moe: MoE, drop: list[int], never: list[int], inputs: Any
) -> list[int]:
    """``drop`` and the experts ``never`` selected, where removing those does not change what
    the layer returns on ``inputs`` (all of ``drop`` is then unused too); else ``drop``."""
    if any(moe.counts[i] for i in drop):
        return drop
    block = model.get_submodule(moe.path) if moe.path else model
    before = _block_output(model, block, inputs)
    saved = [
        (m, dict(m._parameters), dict(m._buffers), dict(vars(m)))
        for m in (block, block.get_submodule(moe.router), block.get_submodule(moe.experts))
    ]
    configs = saved_configs(model)
    drop_experts(model, moe, [*drop, *never])
    after = _block_output(model, block, inputs)
    scale = float(before.abs().max()) if before.numel() else 0.0
    if before.shape == after.shape and torch.allclose(after, before, rtol=1e-5, atol=1e-6 * scale):
        return sorted([*drop, *never])
    for m, params, buffers, state in saved:
        m.__dict__.update(state)
        m._parameters, m._buffers = params, buffers
    restore_configs(configs)
    return drop


def _block_output(model: nn.Module, block: nn.Module, inputs: Any) -> torch.Tensor:
    """What ``block`` returns (its first tensor) when ``model`` runs on ``inputs``."""
    got: list[torch.Tensor] = []

    def hook(module, args, out):
        leaves = [v for v in pytree.tree_leaves(out) if isinstance(v, torch.Tensor)]
        got.append(leaves[0].detach().clone() if leaves else torch.empty(0))

    handle = block.register_forward_hook(hook)
    try:
        eager_outputs(model, inputs)
    finally:
        handle.remove()
    return got[0] if got else torch.empty(0)
