"""Copies of a model: one that shares the model's parameters (slim never changes one in place;
what is still shared at the end gets a copy of its own), and the parameters a graph never reads
registered on it, so the graph form holds every weight of the model."""

from __future__ import annotations

import collections
import copy
from typing import Any

import torch
import torch.fx as fx

from surgeon.errors import SurgeonInputError

__all__ = ["deep_copy", "working_copy", "unshare_parameters", "keep_unreached"]


def deep_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` that holds the model's own ``nn.Parameter`` objects (everything
    else is copied, buffers included): no copy of the weights, for a caller that never
    changes a parameter in place (it assigns new ones) and gives each one that is still
    shared a copy of its own at the end (:func:`unshare_parameters`). The parameters of its
    TorchScript submodules are leaves again: deepcopy gives a ScriptModule plain tensors
    cloned from the originals (non-leaf, ``grad_fn=CloneBackward``), which an optimizer
    never updates."""
    memo = {id(p): p for _, p in model.named_parameters(remove_duplicate=False)}
    out = _copy_tree(model, memo)
    for module in out.modules():
        if not isinstance(module, torch.jit.ScriptModule):
            continue
        for name, p in list(module.named_parameters(recurse=False)):
            if not p.is_leaf or not isinstance(p, torch.nn.Parameter):
                setattr(module, name, torch.nn.Parameter(p.detach(), p.requires_grad))
    return out


_ATOMIC = (int, float, str, bool, type(None), torch.dtype, torch.device)


def _copy_tree(m: torch.nn.Module, memo: dict[int, Any]) -> torch.nn.Module:
    """``copy.deepcopy(m, memo)`` for a module whose class copies the plain way: a new
    instance with its own ``__dict__``, its submodules copied the same way, its empty hook
    dicts new, everything else through ``deepcopy`` (the same result, without ``deepcopy``'s
    per-object reduce for the parts every module has). Any other class: ``deepcopy``."""
    if id(m) in memo:
        return memo[id(m)]
    cls = type(m)
    if (
        isinstance(m, torch.jit.ScriptModule)
        or hasattr(cls, "__deepcopy__")
        or cls.__reduce_ex__ is not torch.nn.Module.__reduce_ex__
        or cls.__getstate__ is not torch.nn.Module.__getstate__
    ):
        return copy.deepcopy(m, memo)
    new = object.__new__(cls)
    memo[id(m)] = new
    state = {}
    for k, v in m.__dict__.items():
        t = type(v)
        if t in _ATOMIC:
            state[k] = v
        elif k == "_modules":
            state[k] = {n: None if c is None else _copy_tree(c, memo) for n, c in v.items()}
        elif t in (dict, collections.OrderedDict) and not v:
            state[k] = t()
        else:
            state[k] = copy.deepcopy(v, memo)
    new.__dict__.update(state)
    return new


def unshare_parameters(model: torch.nn.Module, *modules: torch.nn.Module) -> int:
    """Give every module of ``modules`` a copy of its own of each parameter it still shares
    with ``model`` (ties among them kept: one copy per parameter). Returns how many."""
    theirs = {id(p) for _, p in model.named_parameters(remove_duplicate=False)}
    made: dict[int, torch.nn.Parameter] = {}
    seen: set[int] = set()
    for root in modules:
        for m in root.modules():
            if id(m) in seen:
                continue
            seen.add(id(m))
            for name, p in list(m._parameters.items()):
                if p is None or id(p) not in theirs:
                    continue
                if id(p) not in made:
                    made[id(p)] = torch.nn.Parameter(p.detach().clone(), p.requires_grad)
                m._parameters[name] = made[id(p)]
    return len(made)


def keep_unreached(model: torch.nn.Module, gm: fx.GraphModule) -> list[str]:
    """Register on ``gm``, under their own names, the parameters and buffers of ``model`` its
    graph never reads (a head ``forward`` skips in eval, a module only another path uses), so
    the graph form's ``parameters()``, ``state_dict()`` and counts are the model's. A whole
    submodule missing from ``gm`` is added as it is. Returns the names added."""
    added: list[str] = []
    present = {n for n, _ in gm.named_modules()}
    for path, mod in model.named_modules():
        tensors = [
            (k, v, k in mod._non_persistent_buffers_set if k in mod._buffers else None)
            for k, v in [*mod._parameters.items(), *mod._buffers.items()]
            if v is not None
        ]
        if not tensors:
            continue
        if path not in present:
            parts = path.split(".")
            top = next(
                ".".join(parts[:i])
                for i in range(1, len(parts) + 1)
                if ".".join(parts[:i]) not in present
            )
            gm.add_submodule(top, model.get_submodule(top))
            present |= {
                f"{top}.{n}" if n else top for n, _ in model.get_submodule(top).named_modules()
            }
            added.append(top)
            continue
        owner = gm.get_submodule(path)
        for k, v, non_persistent in tensors:
            if owner is mod or hasattr(owner, k):
                continue
            if non_persistent is None:
                owner.register_parameter(k, v)  # type: ignore[arg-type]
            else:
                owner.register_buffer(k, v, persistent=not non_persistent)
            added.append(f"{path}.{k}" if path else k)
    return added


def working_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` that holds the model's own parameter objects (slim never mutates
    its input unless ``inplace=True``: the passes assign new tensors, never change one in
    place, and what is left shared at the end gets a copy, :func:`unshare_parameters`)."""
    try:
        return deep_copy(model)
    except RuntimeError as exc:
        if "deepcopy" not in str(exc):
            raise
        raise SurgeonInputError(
            f"the {type(model).__name__} cannot be copied ({exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0]}); the usual cause is the deprecated "
            "torch.nn.utils.weight_norm / spectral_norm, which keep a computed weight: use "
            "torch.nn.utils.parametrizations.weight_norm / spectral_norm, or pass inplace=True",
            option="model",
        ) from exc
