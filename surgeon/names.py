"""What a user names in a model, resolved once for the library and the CLI alike.

``ignore`` and ``leaf_modules`` take submodules by object, by qualified name, and (leaves)
by class; each resolves to a form that still matches in a copy of the model (names and
types, never object identity), or raises :class:`SurgeonInputError` naming the option and
the names the model has.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from typing import Any

import torch.nn as nn

from surgeon.errors import SurgeonInputError

__all__ = ["resolve_ignore", "resolve_leaves", "leaf_name"]

Leaf = type[nn.Module] | nn.Module | str


def leaf_name(m: Leaf) -> str:
    """``package.module.Class`` of a leaf module type or instance; a qualified submodule name
    as it is."""
    if isinstance(m, str):
        return m
    t = m if isinstance(m, type) else type(m)
    return f"{t.__module__}.{t.__qualname__}"


def resolve_ignore(model: nn.Module, items: Iterable[nn.Module | str]) -> tuple[str, ...]:
    """``ignore`` as qualified submodule names of ``model`` (a module object becomes its
    name), without repeats."""
    known = _submodule_names(model)
    by_id = {id(m): n for n, m in model.named_modules() if n}
    out: list[str] = []
    for item in items:
        if isinstance(item, str) and item in known:
            out.append(item)
        elif isinstance(item, nn.Module) and id(item) in by_id:
            out.append(by_id[id(item)])
        elif isinstance(item, str):
            raise SurgeonInputError(
                f"ignore names {item!r}, which is not a submodule of the {type(model).__name__}"
                f"{_close(item, known)}; give a qualified name such as "
                f"{_listing([repr(n) for n in known], 3)}",
                option="ignore",
            )
        else:
            raise SurgeonInputError(
                f"ignore holds {type(item).__name__}, which is not a submodule of the "
                f"{type(model).__name__}; pass the module objects (or their qualified names) "
                "that must keep their shapes",
                option="ignore",
            )
    return tuple(dict.fromkeys(out))


def resolve_leaves(model: nn.Module, items: Iterable[Any]) -> tuple[type[nn.Module] | str, ...]:
    """``leaf_modules`` as module types and qualified submodule names of ``model``: a type
    stays a type, an instance becomes its name, a string is a qualified name or the name of
    the class of some submodule (``Block`` or ``package.module.Block``)."""
    known = _submodule_names(model)
    by_id = {id(m): n for n, m in model.named_modules() if n}
    out: list[type[nn.Module] | str] = []
    for item in items:
        if isinstance(item, type) and issubclass(item, nn.Module):
            out.append(item)
        elif isinstance(item, nn.Module) and id(item) in by_id:
            out.append(by_id[id(item)])
        elif isinstance(item, str) and item in known:
            out.append(item)
        elif isinstance(item, str) and item:
            out.append(_class_named(model, item, known))
        else:
            raise SurgeonInputError(
                f"leaf_modules holds {type(item).__name__}, which is neither a torch.nn.Module "
                f"type nor a submodule of the {type(model).__name__} (an instance, its qualified "
                "name such as 'layer4.1', or its class name); pass the module types or "
                "submodules fx must not trace into",
                option="leaf_modules",
            )
    return tuple(dict.fromkeys(out))


def _class_named(model: nn.Module, name: str, known: list[str]) -> type[nn.Module]:
    """The one class of ``model``'s submodules called ``name`` (short, qualified or full)."""
    types: dict[str, set[type[nn.Module]]] = {}
    for module in model.modules():
        if module is model:
            continue
        t = type(module)
        for key in (t.__name__, t.__qualname__, f"{t.__module__}.{t.__qualname__}"):
            types.setdefault(key, set()).add(t)
    found = types.get(name, set())
    if len(found) > 1:
        paths = sorted(f"{t.__module__}.{t.__qualname__}" for t in found)
        raise SurgeonInputError(
            f"leaf_modules names {name!r}, which is {len(found)} classes of the "
            f"{type(model).__name__}: {', '.join(paths)}; give the full path of one",
            option="leaf_modules",
        )
    if not found:
        classes = sorted({type(m).__name__ for m in model.modules() if m is not model})
        raise SurgeonInputError(
            f"leaf_modules names {name!r}, which is neither a submodule of the "
            f"{type(model).__name__} nor the class of one{_close(name, known + classes)}; give "
            f"a qualified name ({_listing([repr(n) for n in known], 3)}) or a class name "
            f"({_listing(classes, 3)})",
            option="leaf_modules",
        )
    return found.pop()


def _submodule_names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_modules() if n]


def _close(name: str, candidates: Sequence[str]) -> str:
    """`` (did you mean 'a' or 'b'?)``, or nothing."""
    found = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(f) for f in found)}?)" if found else ""


def _listing(items: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")
