"""The keyword-input adapter: a decorated or ``**kwargs`` forward (Hugging Face's) gets, for the
duration of a capture, a forward whose signature is the example inputs' keys."""

from __future__ import annotations

import contextlib
import inspect
import keyword
from collections.abc import Iterable
from typing import Any

import torch

from surgeon.capture.inputs import as_args

__all__ = ["CAPTURE_DEFAULTS", "capture_defaults", "explicit_forward"]


# keyword arguments a captured forward gets unless the example gives them: a key-value cache
# for generation is state carried between calls, not part of the function being slimmed
CAPTURE_DEFAULTS = {"use_cache": False}


def capture_defaults(cls: type, keys: Iterable[str]) -> dict[str, Any]:
    """The :data:`CAPTURE_DEFAULTS` that ``cls.forward`` takes and ``keys`` do not give."""
    try:
        known = inspect.signature(inspect.unwrap(cls.forward)).parameters
    except (TypeError, ValueError):
        return {}
    return {k: v for k, v in CAPTURE_DEFAULTS.items() if k in known and k not in set(keys)}


@contextlib.contextmanager
def explicit_forward(model: torch.nn.Module, example_inputs: Any):
    """Give ``model`` a ``forward`` with an explicit signature for the duration (by a subclass
    of its own class): one parameter per key of dict ``example_inputs``, or per positional
    input, named as ``forward`` names them. A decorated ``forward(self, input_ids=None,
    **kwargs)`` (Hugging Face's) or a ``forward(self, x, **kwargs)`` is then traced through,
    where fx would read the unwrapped signature and patch the wrapper's code. Nothing changes
    for a plain forward whose parameters name every input."""
    cls = type(model)
    args, kwargs = as_args(example_inputs)
    keys = list(kwargs) if isinstance(example_inputs, dict) else _positional_names(cls, len(args))
    if not keys or not _needs_adapter(cls, keys):
        yield
        return
    params = ", ".join(keys)
    fixed = capture_defaults(cls, keys)
    by_name = isinstance(example_inputs, dict)
    call = [f"{k}={k}" if by_name else k for k in keys]
    call += [f"{k}={v!r}" for k, v in fixed.items()]
    scope: dict[str, Any] = {"_forward": cls.forward}
    exec(  # noqa: S102 - the names are checked identifiers
        f"def forward(self, {params}):\n    return _forward(self, {', '.join(call)})\n",
        scope,
    )
    model.__class__ = type(cls.__name__, (cls,), {"forward": scope["forward"]})
    try:
        yield
    finally:
        model.__class__ = cls


def _positional_names(cls: type, n: int) -> list[str]:
    """The names ``forward`` gives its first ``n`` positional parameters ([] if it has fewer)."""
    try:
        params = list(inspect.signature(inspect.unwrap(cls.forward)).parameters.values())[1:]
    except (TypeError, ValueError):
        return []
    named = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return named[:n] if n and len(named) >= n else []


def _needs_adapter(cls: type, keys: list[str]) -> bool:
    if not all(k.isidentifier() and not keyword.iskeyword(k) for k in keys):
        return False
    forward = cls.forward
    try:
        params = inspect.signature(inspect.unwrap(forward)).parameters.values()
    except (TypeError, ValueError):
        return False
    named = {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    var_kw = any(p.kind == p.VAR_KEYWORD for p in params)
    if not set(keys) <= named and not var_kw:
        return False  # an unknown key: refused later, by name
    return inspect.unwrap(forward) is not forward or var_kw
