"""The model a command works on: its spec, its example input and its weights.

A MODEL argument is a zoo name (``resnet18``), ``path/to/file.py:factory`` or
``package.module:factory`` (``torchvision.models:resnet50``); the factory is called with no
arguments and must return an ``nn.Module``. A path ending in ``.onnx`` is an ONNX file: it is
imported as a graph (:func:`surgeon.onnxin.job.load_onnx`), its example made from the shapes
it declares (``--input-shape`` for a free dim other than the batch). A model from outside the zoo needs
``--input-shape``; ``--weights`` loads a state dict (or a checkpoint holding one) into it.
Every problem is a :class:`~surgeon.errors.SurgeonInputError` that says what to give instead.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from surgeon.cli.output import one_line
from surgeon.errors import SurgeonInputError

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

__all__ = ["parse_shape", "spec_name", "load_model", "load_weights", "build"]

_CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model")


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,3,224,224"`` -> ``(1, 3, 224, 224)``; a clear error for anything else."""
    parts = [p.strip() for p in text.replace("x", ",").split(",")] if text else []
    if not parts or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise SurgeonInputError(
            f"--input-shape {text!r} is not a comma-separated list of positive ints; "
            "give the full shape with the batch, e.g. --input-shape 1,3,224,224"
        )
    return tuple(int(p) for p in parts)


def spec_name(spec: str) -> str:
    """A short name for a model spec: the zoo name, or the factory's name."""
    return spec.rsplit(":", 1)[1] if ":" in spec else spec


def build(
    spec: str, shape: tuple[int, ...] | None, weights: Path | None
) -> tuple[str, nn.Module, Any]:
    """:func:`load_model`, then the ``--weights`` loaded into the model."""
    name, model, example = load_model(spec, shape)
    if weights is not None and spec.endswith(".onnx"):
        raise SurgeonInputError(
            f"--weights does not apply to the ONNX file {spec!r}: its weights are in the file"
        )
    if weights is not None:
        load_weights(model, weights.expanduser(), spec)
    return name, model, example


def load_model(spec: str, input_shape: tuple[int, ...] | None = None) -> tuple[str, nn.Module, Any]:
    """Resolve a MODEL argument to ``(name, model in eval mode, example input)``; a model
    from outside the zoo needs ``input_shape``."""
    import torch
    from torch import nn

    from surgeon.models import ZOO, create

    if spec in ZOO:
        model, example = create(spec, input_shape=input_shape)
        return spec, model, example
    if spec.endswith(".onnx"):
        from surgeon.onnxin.job import load_onnx

        source = load_onnx(spec, input_shape=input_shape)
        example = source.example[0] if len(source.example) == 1 else source.example
        return Path(spec).stem, source.module, example
    factory_name, factory = _factory(spec)
    if input_shape is None:
        raise SurgeonInputError(
            f"{spec!r} is not a zoo model, so its input shape is unknown; pass it with "
            "--input-shape, e.g. --input-shape 1,3,224,224"
        )
    try:
        model = factory()
    except Exception as exc:
        raise SurgeonInputError(
            f"calling {spec}() failed: {type(exc).__name__}: {one_line(exc)}"
        ) from exc
    if not isinstance(model, nn.Module):
        raise SurgeonInputError(
            f"{spec}() returned a {type(model).__name__}; it must return a torch.nn.Module"
        )
    model.eval()
    example = torch.randn(input_shape, generator=torch.Generator().manual_seed(0))
    return factory_name, model, example


def _zoo_names() -> str:
    from surgeon.models import ZOO

    return ", ".join(ZOO)


def _factory(spec: str) -> tuple[str, Callable[[], Any]]:
    """The factory a ``file.py:fn`` or ``package.module:fn`` spec names, with its name."""
    if ":" not in spec:
        if spec.endswith(".py"):
            raise SurgeonInputError(
                f"{spec!r} names a file but no factory; write {spec}:make_model, where "
                "make_model() returns the nn.Module"
            )
        raise SurgeonInputError(
            f"unknown model {spec!r}; give a zoo model ({_zoo_names()}), "
            "path/to/file.py:factory or package.module:factory"
        )
    source, name = spec.rsplit(":", 1)
    if not source or not name.isidentifier():
        raise SurgeonInputError(
            f"model {spec!r} is not of the form path/to/file.py:factory or package.module:factory"
        )
    is_file = source.endswith(".py") or "/" in source or os.sep in source
    module = _import_file(Path(source).expanduser(), spec) if is_file else None
    if module is None:
        module = _import_module(source, spec)
    factory = getattr(module, name, None)
    if factory is None or not callable(factory):
        found = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        what = "is not callable" if factory is not None else "is not defined"
        raise SurgeonInputError(
            f"{name!r} {what} in {source!r}; it defines: {', '.join(found) or 'nothing'}"
        )
    return name, factory


def _import_file(path: Path, spec: str) -> Any:
    """The module in the file at ``path``, imported under a name of its own; its folder is
    put on ``sys.path`` so that it can import its neighbours."""
    if not path.is_file():
        raise SurgeonInputError(
            f"model file {str(path)!r} (from {spec!r}) does not exist; give a zoo model "
            f"({_zoo_names()}), path/to/file.py:factory or package.module:factory"
        )
    module_name = f"_surgeon_user_{path.stem}_{abs(hash(str(path.resolve())))}"
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise SurgeonInputError(f"cannot import {str(path)!r}: it is not a Python file")
    module = importlib.util.module_from_spec(loader_spec)
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    sys.modules[module_name] = module
    try:
        loader_spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise SurgeonInputError(
            f"importing {str(path)!r} failed: {type(exc).__name__}: {one_line(exc)}"
        ) from exc
    return module


def _import_module(name: str, spec: str) -> Any:
    """The module ``name``, found as ``python -m`` finds it (the current folder first)."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        raise SurgeonInputError(
            f"cannot import module {name!r} (from {spec!r}): {one_line(exc)}; give a zoo model "
            f"({_zoo_names()}), path/to/file.py:factory or package.module:factory"
        ) from exc
    except Exception as exc:
        raise SurgeonInputError(
            f"importing {name!r} failed: {type(exc).__name__}: {one_line(exc)}"
        ) from exc


def load_weights(model: nn.Module, path: Path, spec: str) -> None:
    """Load the state dict (or checkpoint) at ``path`` into ``model``, strictly.

    The file is read with ``torch.load(weights_only=True)`` (tensors only, no code runs). A
    file that does not fit ``model`` is refused with the missing and unexpected keys and the
    shapes that differ.
    """
    import torch

    where = f"--weights {str(path)!r}"
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise SurgeonInputError(f"{where} {what}; give the file torch.save wrote the weights to")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SurgeonInputError(
            f"{where} cannot be read as PyTorch weights ({type(exc).__name__}: {first[:200]}); "
            "give a state dict or a checkpoint saved with torch.save"
        ) from exc
    state = dict(_state_dict_of(loaded, where))
    own = model.state_dict()
    if state and not any(k in own for k in state) and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}  # DataParallel's
    problems = _misfit(own, state)
    if problems:
        raise SurgeonInputError(
            f"{where} does not fit the {type(model).__name__} of {spec!r}: "
            f"{'; '.join(problems)}; give the weights of this architecture"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise SurgeonInputError(f"{where} cannot be loaded: {one_line(exc)}") from exc


def _misfit(own: Mapping[str, Any], state: Mapping[str, Any]) -> list[str]:
    """How ``state`` does not fit the model's own state dict: the missing keys, the
    unexpected keys and the shapes that differ (nothing when it fits)."""

    def size(tensor: Any) -> str:
        return "x".join(map(str, tensor.shape)) or "scalar"

    shapes = [
        f"{k} ({size(state[k])} in the file, {size(v)} in the model)"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    found = (
        ("missing keys", [k for k in own if k not in state]),
        ("unexpected keys", [k for k in state if k not in own]),
        ("shapes differ for", shapes),
    )
    return [f"{label} {_listing(items)}" for label, items in found if items]


def _state_dict_of(loaded: Any, where: str) -> Mapping[str, Any]:
    """The state dict in what ``torch.load`` gave: the dict itself, or a checkpoint's
    ``state_dict`` / ``model_state_dict`` / ``model`` entry."""
    import torch

    def is_state(value: Any) -> bool:
        return (
            isinstance(value, Mapping)
            and bool(value)
            and all(isinstance(k, str) for k in value)
            and all(isinstance(v, torch.Tensor) for v in value.values())
        )

    if is_state(loaded):
        return loaded
    if isinstance(loaded, Mapping):
        for key in _CHECKPOINT_KEYS:
            if is_state(loaded.get(key)):
                return loaded[key]
        keys = [str(k) for k in loaded]
        raise SurgeonInputError(
            f"{where} holds a dict with the keys {_listing(keys) or '(none)'}, which is neither a "
            "state dict (parameter name -> tensor) nor a checkpoint with one under "
            f"{', '.join(repr(k) for k in _CHECKPOINT_KEYS)}; save it with "
            "torch.save(model.state_dict(), path)"
        )
    raise SurgeonInputError(
        f"{where} holds a {type(loaded).__name__}, not a state dict; save it with "
        "torch.save(model.state_dict(), path)"
    )


def _listing(items: Sequence[str], limit: int = 5) -> str:
    """``a, b, c (and 4 more)``."""
    shown = ", ".join(items[:limit])
    return shown + (f" (and {len(items) - limit} more)" if len(items) > limit else "")
