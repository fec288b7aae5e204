"""The rule registry: one decorator, one lookup, and what each op *means* (its traits).

A rule is keyed by what the fx node calls: a module type (``call_module``), a function
(``call_function``) or a method name (``call_method``). :func:`register` tells them apart by
the key itself. Traits say what an op means to the passes that reason about values, so that
every list of that kind is written once, beside its rule:

- ``"elementwise"``: a unary function applied to each element (compensation pushes a
  distribution through it);
- ``"mean_keeping"``: keeps each channel's expected value (dropout, average pooling);
- ``"flatten"``: ``flatten`` / ``nn.Flatten`` (compensation repeats a channel's mean over
  the positions it spreads to);
- ``"weighted"``: a module whose ``weight`` is a dense Conv / Linear kernel (unstructured
  level pruning zeroes it; the metrics discount its zeros).

Strict mode (:func:`strict`, or ``SURGEON_STRICT_RULES=1`` in the environment; on for the
test suite) turns a rule that raises into an error instead of blocking its dims, so a broken
rule fails its test rather than showing up only as lost compression.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from surgeon.spaces import RuleContext

__all__ = [
    "Rule",
    "register",
    "lookup",
    "has_function_rule",
    "has_module_rule",
    "traits",
    "modules_with",
    "strict",
    "is_strict",
]

Rule = Callable[[RuleContext], None]

_MODULES: dict[type, Rule] = {}
_FUNCTIONS: dict[Any, Rule] = {}
_METHODS: dict[str, Rule] = {}
_TRAITS: dict[Any, frozenset[str]] = {}
_STRICT = {"on": os.environ.get("SURGEON_STRICT_RULES") == "1"}


def register(*keys: Any, traits: Iterable[str] = ()) -> Callable[[Rule], Rule]:
    """Register the decorated rule for every key: a module type, a function, or a method
    name (a ``str``); ``traits`` say what the op means (see the module docstring)."""
    meaning = frozenset(traits)

    def deco(rule: Rule) -> Rule:
        for key in keys:
            if isinstance(key, type) and issubclass(key, nn.Module):
                _MODULES[key] = rule
            elif isinstance(key, str):
                _METHODS[key] = rule
            elif callable(key):
                _FUNCTIONS[key] = rule
            else:
                raise TypeError(f"cannot register a rule for {key!r}")
            if meaning:
                _TRAITS[key] = _TRAITS.get(key, frozenset()) | meaning
        return rule

    return deco


def lookup(ctx: RuleContext) -> Rule:
    """The rule for ``ctx.node``; :func:`~surgeon.rules.base.block_all` when there is none."""
    from surgeon.rules.base import block_all

    module = ctx.module if ctx.node.op == "call_module" else None
    why = opaque_weights(module) if module is not None else None
    if why is not None:
        return functools.partial(block_all, reason=f"{ctx.describe_name()}: {why}")
    key = _key(ctx.node, module)
    if key is None:
        return block_all
    if ctx.node.op == "call_module":
        return _MODULES[key]
    table = _FUNCTIONS if ctx.node.op == "call_function" else _METHODS
    return table.get(key, block_all)


def opaque_weights(m: nn.Module) -> str | None:
    """Why no rule may cut ``m``'s tensors (its weight is computed from others, or fx cannot
    see inside it), or None."""
    from torch.nn.utils import parametrize

    if isinstance(m, torch.jit.ScriptModule):
        return "a TorchScript module, opaque to torch.fx (its channels stay)"
    if parametrize.is_parametrized(m):
        kinds = sorted(
            {type(p).__name__ for ps in m.parametrizations.values() for p in ps}  # type: ignore[union-attr]
        )
        return (
            f"its {', '.join(sorted(m.parametrizations))} is parametrized ({', '.join(kinds)}): "  # type: ignore[union-attr]
            "the parametrization's tensors are not cut (its channels stay); "
            "torch.nn.utils.parametrize.remove_parametrizations(module, name) first bakes it"
        )
    hooks = [type(h).__name__ for h in m._forward_pre_hooks.values()]
    old = [h for h in hooks if h in ("WeightNorm", "SpectralNorm")]
    if old:
        return (
            f"its weight is recomputed by a {old[0]} hook (torch.nn.utils.{old[0].lower()[:-4]}_norm): "
            "its channels stay; torch.nn.utils.remove_weight_norm / remove_spectral_norm first "
            "bakes it"
        )
    return None


def has_module_rule(m: nn.Module) -> bool:
    """Whether a rule is registered for ``m``'s class or one of its bases."""
    return any(base in _MODULES for base in type(m).__mro__)


def has_function_rule(fn: Any) -> bool:
    """Whether a rule is registered for the function ``fn``."""
    return fn in _FUNCTIONS


def traits(node: fx.Node, module: nn.Module | None = None) -> frozenset[str]:
    """What the op of ``node`` means (``module``: the called module, for ``call_module``)."""
    key = _key(node, module)
    return _TRAITS.get(key, frozenset()) if key is not None else frozenset()


def modules_with(trait: str) -> tuple[type[nn.Module], ...]:
    """Every registered module type with ``trait`` (for ``isinstance`` checks)."""
    return tuple(t for t in _MODULES if trait in _TRAITS.get(t, ()))


def _key(node: fx.Node, module: nn.Module | None) -> Any:
    """The registry key of ``node``'s op, or None when no rule can be trusted for it."""
    if node.op == "call_module":
        if module is None:
            return None
        cls = type(module)
        for i, base in enumerate(cls.__mro__):
            if base in _MODULES:
                # a subclass that overrides any method (forward, _conv_forward, ...) may compute
                # something else: only trust the rule for the class it was written for, or for
                # subclasses that add nothing but construction
                if all(_adds_no_methods(sub) for sub in cls.__mro__[:i]):
                    return base
                return None
        return None
    if node.op == "call_function":
        return node.target if node.target in _FUNCTIONS else None
    if node.op == "call_method":
        return node.target if node.target in _METHODS else None
    return None


_HARMLESS = {"__init__", "extra_repr", "reset_parameters", "__repr__", "_get_name"}


def _adds_no_methods(klass: type) -> bool:
    return not any(
        callable(v)
        and not isinstance(v, type)
        and k not in _HARMLESS
        and not k.startswith("__")
        or k in ("forward", "__call__")
        for k, v in vars(klass).items()
    )


@contextlib.contextmanager
def strict(on: bool = True) -> Iterator[None]:
    """Within the block, a rule that raises fails the analysis (``SurgeonRuleError``) instead
    of blocking its dims."""
    before = _STRICT["on"]
    _STRICT["on"] = on
    try:
        yield
    finally:
        _STRICT["on"] = before


def is_strict() -> bool:
    return _STRICT["on"]
