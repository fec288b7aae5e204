"""Model size and cost, and unstructured magnitude pruning.

- :func:`count_params` / :func:`count_macs`: parameter elements and the MACs of one forward
  pass, counted by torch's own ``FlopCounterMode``.
- :func:`level_prune`: zero the smallest-magnitude Conv / ConvTranspose / Linear weights in
  place (FluxPrune's LevelPrune), to an exact sparsity, one threshold for the whole model or
  one per weight.
- :func:`metrics`: params, nonzero params, FLOPs, the FLOPs left when zero weights are skipped,
  and the compression ratio and theoretical speedup against the original network.

(The module is ``surgeon.cost`` so that ``surgeon.metrics`` names the function alone.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import numbers
from typing import Any

import torch
from torch import nn
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from surgeon import rules
from surgeon.capture import as_args
from surgeon.errors import SurgeonInputError

log = logging.getLogger(__name__)

__all__ = [
    "count_params",
    "count_macs",
    "as_args",
    "level_prune",
    "metrics",
    "Metrics",
    "PRUNABLE_TYPES",
]


def count_params(model: torch.nn.Module) -> int:
    """Number of parameter elements (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: torch.nn.Module, example_inputs: Any) -> int:
    """Multiply-accumulates of one inference forward pass on ``example_inputs``.

    Counted with ``torch.utils.flop_counter.FlopCounterMode`` (which reports 2 FLOPs per MAC
    for matmul / convolution / attention), with the model in eval mode and its fused fast
    paths off (``nn.MultiheadAttention``, ``nn.TransformerEncoder``: one fused op the counter
    has no formula for); every module's training flag is restored, so norms never move.
    Where the counter still sees less than the model's Conv / Linear modules compute, their
    work is counted instead and a warning says so (never zero work for a model that did some).
    """
    return _count_flops(model, example_inputs)[0] // 2


def _cpu_flash_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:  # noqa: ANN001
    """FLOPs of ``aten._scaled_dot_product_flash_attention_for_cpu`` (the CPU kernel behind
    ``F.scaled_dot_product_attention``), which torch's counter has no formula for."""
    return flop_counter.sdpa_flop_count(query, key, value)


def _recurrent_flops(input, hx, params, *args, out_shape=None, **kwargs) -> int:  # noqa: ANN001
    """FLOPs of ``aten.lstm`` / ``gru`` / ``rnn_tanh`` / ``rnn_relu`` (no formula in torch's
    counter): each weight matrix of each layer and direction is applied once per time step
    and sequence (a multiply and an add per element); the gates' elementwise math is not
    counted, as for activations elsewhere."""
    # the counter hands shapes, not tensors
    steps = math.prod(input[:-1]) if len(input) > 1 else 1
    return 2 * steps * sum(math.prod(w) for w in params if len(w) == 2)


def _extra_formulas() -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        out[op] = _cpu_flash_flops
    for name in ("lstm", "gru", "rnn_tanh", "rnn_relu"):
        packet = getattr(torch.ops.aten, name, None)
        if packet is not None:
            out[packet] = _recurrent_flops
    layer = getattr(torch.ops.aten, "mkldnn_rnn_layer", None)  # what the CPU's LSTM runs
    if layer is not None:
        out[layer] = _onednn_layer_flops
    return out


def _onednn_layer_flops(input, w_ih, w_hh, *args, out_shape=None, **kwargs) -> int:  # noqa: ANN001
    """FLOPs of one layer and direction of oneDNN's recurrent kernel (``nn.LSTM`` on the CPU):
    both weight matrices, once per time step and sequence."""
    steps = math.prod(input[:-1]) if len(input) > 1 else 1
    return 2 * steps * (math.prod(w_ih) + math.prod(w_hh))


@contextlib.contextmanager
def _inference(model: nn.Module):
    """Eval mode (restored afterwards, module by module) with torch's fused attention fast
    paths off, so every matmul is an op the counter knows."""
    modes = [(m, m.training) for m in model.modules()]
    mha = getattr(torch.backends, "mha", None)
    was = mha.get_fastpath_enabled() if mha is not None else None
    try:
        model.eval()
        if mha is not None:
            mha.set_fastpath_enabled(False)
        yield
    finally:
        if mha is not None:
            mha.set_fastpath_enabled(was)
        for m, training in modes:
            m.training = training


def _counted(model: nn.Module, args: tuple, kwargs: dict, calls: list) -> int:
    """FLOPs FlopCounterMode counts for one call, under no_grad when it can: its module
    tracker needs a grad function on some inputs (a parameter handed to a submodule, as
    CaiT's class token; some timm models on torch 2.14), then with grad enabled. ``calls``
    (what forward hooks record) is emptied before each attempt."""
    for grad in (torch.no_grad, torch.enable_grad):
        calls.clear()
        counter = FlopCounterMode(display=False, custom_mapping=_extra_formulas())
        try:
            with grad(), counter:
                model(*args, **kwargs)
        except (AssertionError, AttributeError, RuntimeError) as exc:
            tracker = isinstance(exc, (AssertionError, AttributeError)) or (
                "gradient function" in str(exc)
            )
            if grad is torch.enable_grad or not tracker:
                raise
            continue
        return counter.get_total_flops()
    raise AssertionError("unreachable")


# Modules whose ``weight`` level_prune zeroes and whose FLOPs ``metrics`` discounts: the
# rules that say so (trait "weighted").
PRUNABLE_TYPES: tuple[type[nn.Module], ...] = rules.modules_with("weighted")
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_SCOPES = ("global", "local")


def _check_model(model: Any, name: str = "model") -> nn.Module:
    if not isinstance(model, nn.Module):
        raise SurgeonInputError(
            f"{name} must be a torch.nn.Module, got {type(model).__name__}; pass the network itself"
        )
    return model


def _prunable_weights(model: nn.Module) -> list[nn.Parameter]:
    """The ``weight`` parameter of every Conv / ConvTranspose / Linear module, each once."""
    seen: set[int] = set()
    weights = []
    for module in model.modules():
        if not isinstance(module, PRUNABLE_TYPES):
            continue
        # A weight computed by a parametrization or torch.nn.utils.prune is not a Parameter:
        # zeroing it would not last, so it is left out.
        weight = getattr(module, "weight", None)
        if (
            not isinstance(weight, nn.Parameter)
            or nn.parameter.is_lazy(weight)
            or id(weight) in seen
        ):
            continue
        seen.add(id(weight))
        weights.append(weight)
    return weights


def _zero_smallest(weights: list[torch.Tensor], k: int) -> None:
    """Zero the ``k`` smallest-|w| elements of ``weights`` taken together, in place.

    Ties at the threshold go to the element that comes first (weights in order, each in
    row-major order), so exactly ``k`` elements end up among the zeroed ones. Elements that
    are already zero have the smallest magnitude, so they are the first counted.
    """
    if k <= 0:
        return
    dtype = functools.reduce(torch.promote_types, (w.dtype for w in weights), torch.float32)
    device = weights[0].device
    scores = torch.cat([w.abs().reshape(-1).to(device=device, dtype=dtype) for w in weights])
    threshold = scores.kthvalue(k).values
    ties_left = k - int((scores < threshold).sum())
    del scores
    for w in weights:
        magnitude = w.abs().to(dtype).reshape(-1)
        t = threshold.to(w.device)
        mask = magnitude < t
        if ties_left > 0:
            ties = torch.nonzero(magnitude == t).squeeze(1)[:ties_left]
            mask[ties] = True
            ties_left -= len(ties)
        w.masked_fill_(mask.view(w.shape), 0)


def level_prune(model: nn.Module, sparsity: float, *, scope: str = "global") -> nn.Module:
    """Unstructured magnitude pruning (LevelPrune): zero the smallest weights, in place.

    The prunable weights are the ``weight`` parameter of every Conv1d/2d/3d,
    ConvTranspose1d/2d/3d and Linear module (a parameter shared by several modules counts
    once); biases, norms and embeddings are left alone. Exactly ``round(sparsity * n)`` of
    the ``n`` elements in question end up zero (ties broken by position), unless more are
    zero already: those count as pruned and nothing more is removed.

    Args:
        model: the network; its weights are changed in place (under ``torch.no_grad()``).
        sparsity: fraction of the prunable weight elements to zero, ``0 <= sparsity < 1``.
        scope: ``"global"``: one magnitude threshold over all the prunable weights together;
            ``"local"``: every weight loses ``sparsity`` of its own elements.

    Returns:
        ``model`` itself. Follow with ``surgeon.slim(model, 0.0, x)`` to remove the channels
        whose filters became entirely zero.

    Raises:
        SurgeonInputError: a bad ``sparsity`` / ``scope`` / ``model``, or a model with no
            Conv / ConvTranspose / Linear weight.
    """
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
        raise SurgeonInputError(
            f"sparsity={sparsity!r} is not a number: it is the fraction of the Conv / Linear "
            "weight elements to zero, 0 <= sparsity < 1 (e.g. 0.5)"
        )
    if not 0 <= float(sparsity) < 1:
        raise SurgeonInputError(
            f"sparsity={sparsity!r} is out of range: it is the fraction of the Conv / Linear "
            "weight elements to zero, a number with 0 <= sparsity < 1 (e.g. 0.5)"
        )
    if scope not in _SCOPES:
        raise SurgeonInputError(
            f"scope={scope!r}: use 'global' (one threshold over all weights) or 'local' "
            "(the same sparsity in every weight)"
        )
    _check_model(model)
    weights = _prunable_weights(model)
    if not weights:
        raise SurgeonInputError(
            f"model ({type(model).__name__}) has no Conv / ConvTranspose / Linear weight to "
            "prune; level_prune only zeroes the weights of those modules"
        )
    sparsity = float(sparsity)
    with torch.no_grad():
        if scope == "global":
            n = sum(w.numel() for w in weights)
            _zero_smallest(weights, round(sparsity * n))
        else:
            for w in weights:
                _zero_smallest([w], round(sparsity * w.numel()))
    return model


@dataclasses.dataclass(frozen=True)
class Metrics:
    """Size and cost of a (possibly sparse) model, against the original network.

    Attributes:
        params: parameter elements (shared parameters counted once).
        nonzero_params: the nonzero ones among them.
        flops: FLOPs of one forward pass, as ``FlopCounterMode`` counts them (2 per MAC).
        nonzero_flops: the FLOPs left when the products with zero Conv / Linear weights are
            skipped.
        compression_ratio: params of the original network / ``nonzero_params``.
        theoretical_speedup: FLOPs of the original network / ``nonzero_flops``.
    """

    params: int
    nonzero_params: int
    flops: int
    nonzero_flops: int
    compression_ratio: float
    theoretical_speedup: float

    @property
    def macs(self) -> int:
        """Multiply-accumulates of one forward pass (``flops // 2``)."""
        return self.flops // 2

    @property
    def nonzero_macs(self) -> int:
        """Multiply-accumulates left when zero weights are skipped (``nonzero_flops // 2``)."""
        return self.nonzero_flops // 2

    def as_dict(self) -> dict[str, int | float]:
        """The fields as a plain dict (JSON-able; ``Metrics(**m.as_dict()) == m``)."""
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        rows = [
            ("params", f"{self.params:,}"),
            ("nonzero params", f"{self.nonzero_params:,}"),
            ("FLOPs", f"{self.flops:,}"),
            ("nonzero FLOPs", f"{self.nonzero_flops:,}"),
            ("compression ratio", f"{self.compression_ratio:,.2f}x"),
            ("theoretical speedup", f"{self.theoretical_speedup:,.2f}x"),
        ]
        label = max(len(name) for name, _ in rows)
        value = max(len(text) for _, text in rows)
        return "\n".join(f"{name:<{label}}  {text:>{value}}" for name, text in rows)


def _ratio(num: int, den: int) -> float:
    if den > 0:
        return num / den
    return 1.0 if num == 0 else math.inf


def _count_flops(model: nn.Module, example_inputs: Any) -> tuple[int, int]:
    """(FLOPs, FLOPs left when zero weights are skipped) of one inference forward pass.

    The model runs in eval mode (so norms use, and do not move, their running statistics)
    with fused attention fast paths off; every module's training flag is restored afterwards.
    """
    calls: list[tuple[nn.Module, int]] = []

    def record(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        # Positions each weight element is applied at: one per output value of its output
        # channel (Conv, Linear) or per input value of its input channel (ConvTranspose).
        if isinstance(module, _TRANSPOSED):
            values, channels = inputs[0], module.weight.shape[0]
        else:
            values, channels = output, module.weight.shape[0]
        if isinstance(values, torch.Tensor) and isinstance(module.weight, torch.Tensor):
            calls.append((module, values.numel() // max(channels, 1)))

    handles = [
        m.register_forward_hook(record) for m in model.modules() if isinstance(m, PRUNABLE_TYPES)
    ]
    args, kwargs = as_args(example_inputs)
    try:
        with _inference(model):
            flops = _counted(model, args, kwargs, calls)
    finally:
        for handle in handles:
            handle.remove()
    with torch.no_grad():
        modules = 2 * sum(module.weight.numel() * positions for module, positions in calls)
        skipped = sum(
            2 * (module.weight.numel() - int(torch.count_nonzero(module.weight))) * positions
            for module, positions in calls
        )
    if flops < modules:
        log.warning(
            "surgeon: FlopCounterMode counted %d FLOPs where the %s's Conv / Linear modules "
            "alone compute %d (an op it has no formula for); counting those modules' work",
            flops,
            type(model).__name__,
            modules,
        )
        flops = modules
    return flops, flops - skipped


def metrics(model: nn.Module, example_inputs: Any, reference: nn.Module | None = None) -> Metrics:
    """Measure ``model``: params, nonzero params, FLOPs, nonzero FLOPs, and the ratios.

    ``compression_ratio = params(reference) / nonzero_params(model)`` and
    ``theoretical_speedup = flops(reference) / nonzero_flops(model)``, where ``nonzero_flops``
    is the FLOPs of the forward pass less, for every call of a Conv / ConvTranspose / Linear
    module, 2 FLOPs per zero weight element per position it is applied at (a module called
    twice counts twice). A weight used outside its module's own forward (e.g. the output
    projection of ``nn.MultiheadAttention``) is counted dense.

    Args:
        model: the network to measure, e.g. after :func:`level_prune` or ``surgeon.slim``.
        example_inputs: a tensor, a tuple of tensors or a dict of keyword tensors.
        reference: the original (unpruned) network; ``None``: ``model`` is its own reference.

    Both networks run once, in eval mode under ``torch.no_grad()``; their parameters,
    buffers and training flags are left as they were.
    """
    _check_model(model)
    if reference is not None:
        _check_model(reference, "reference")
    flops, nonzero_flops = _count_flops(model, example_inputs)
    params = count_params(model)
    with torch.no_grad():
        nonzero_params = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    if reference is None:
        ref_params, ref_flops = params, flops
    else:
        ref_flops, _ = _count_flops(reference, example_inputs)
        ref_params = count_params(reference)
    return Metrics(
        params=params,
        nonzero_params=nonzero_params,
        flops=flops,
        nonzero_flops=nonzero_flops,
        compression_ratio=_ratio(ref_params, nonzero_params),
        theoretical_speedup=_ratio(ref_flops, nonzero_flops),
    )
