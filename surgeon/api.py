"""The public entry points, ``slim`` and ``analyze``: the signatures, the settings gathered
into one :class:`~surgeon.options.SlimOptions`, and one call into :mod:`surgeon.pipeline`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn as nn

from surgeon.errors import SurgeonInputError
from surgeon.graph import ChannelGraph
from surgeon.options import Leaf, SlimOptions, Target
from surgeon.pipeline import analyze_model, slim_model

__all__ = ["slim", "analyze", "options_from"]


def analyze(
    model: nn.Module,
    example_inputs: Any,
    *,
    leaf_modules: Iterable[Leaf | str] = (),
    attention: str = "heads",
    grouped: str | tuple[int, ...] = "offsets",
    target: Target | None = None,
) -> ChannelGraph:
    """Capture ``model`` and return its channel graph: every group, its members, its channel
    count and, when blocked, why (``print(surgeon.analyze(model, x))``). The model is not
    modified. The settings are :class:`~surgeon.options.SlimOptions`'. With a ``target``,
    each group also says how many classes the target's first round removes (estimated: a
    measured target times the original and its layers, not a slim model)."""
    options = SlimOptions(
        0.0, leaf_modules=leaf_modules, attention=attention, grouped=grouped, target=target
    )
    return analyze_model(model, example_inputs, options)


def slim(
    model: nn.Module,
    ratio: float | Target | SlimOptions,
    example_inputs: Any,
    *,
    importance: str = "l2",
    scope: str = "local",
    round_to: int | str | None = None,
    ignore: Iterable[nn.Module | str] = (),
    inplace: bool = False,
    leaf_modules: Iterable[Leaf | str] = (),
    max_group_ratio: float = 0.9,
    data: Iterable[Any] | None = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    compensate: bool = True,
    returns: str = "auto",
    attention: str = "heads",
    grouped: str | tuple[int, ...] | None = None,
    structures: Iterable[str] = ("channels", "heads"),
) -> nn.Module:
    """Remove ``ratio`` of the channels of every prunable group of ``model``, physically; or,
    with a :class:`~surgeon.options.Target` as ``ratio`` (``Target(speedup=2.0)``,
    ``Target(macs=3.0)``, ...), as much as the target asks, allocated across the groups by
    importance per unit of cost and measured (the plan's ``target`` records the rounds).

    ``example_inputs`` is a tensor, a tuple of tensors or a dict of keyword tensors. Every
    other argument is a setting of :class:`~surgeon.options.SlimOptions`, documented there;
    or pass a ``SlimOptions`` as ``ratio`` and no setting beside it. ``model`` is left
    untouched unless ``inplace=True``.

    Returns the slim model, with the same inputs and output shapes, that trains like any
    module: the model's own class where its ``forward`` verifiably computes what the slim
    graph computes, else the ``torch.fx.GraphModule`` (``returns``). Either form carries its
    plan in ``meta["surgeon.plan"]`` (:data:`surgeon.keys.PLAN_KEY`).
    """
    settings = dict(locals())
    for name in ("model", "ratio", "example_inputs"):
        del settings[name]
    if not isinstance(settings["structures"], str):
        settings["structures"] = tuple(settings["structures"])
    return slim_model(model, example_inputs, options_from(ratio, settings)).model


def options_from(ratio: float | SlimOptions, settings: dict[str, Any]) -> SlimOptions:
    """``ratio`` and keyword settings as one :class:`SlimOptions`; a ``SlimOptions`` passed as
    the ratio is used as it is, and then no setting may be given beside it."""
    if not isinstance(ratio, SlimOptions):
        names = {f.name for f in dataclasses.fields(SlimOptions)}
        unknown = sorted(set(settings) - names)
        if unknown:
            raise SurgeonInputError(
                f"unknown setting(s) {unknown}: the settings are {sorted(names - {'ratio'})}"
            )
        return SlimOptions(ratio, **settings)
    defaults = {f.name: f.default for f in dataclasses.fields(SlimOptions)}
    given = [k for k, v in settings.items() if not _is_default(v, defaults[k])]
    if given:
        raise SurgeonInputError(
            f"ratio is a SlimOptions, and {given} were given beside it: put every setting in "
            "the SlimOptions (options.replace(...)) or pass a number as the ratio"
        )
    return ratio


def _is_default(value: Any, default: Any) -> bool:
    if isinstance(value, (tuple, list)) and isinstance(default, tuple):
        return tuple(value) == default
    return value is default or (isinstance(value, (bool, int, float, str)) and value == default)
