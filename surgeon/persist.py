"""Save a slim model to one file; rebuild it from a fresh instance of its architecture.

``surgeon.save(slim_model, "r50.surgeon")`` writes the plan ``surgeon.slim`` recorded (which
channel classes went, the channel graph's fingerprint, the example input shapes, the leaf
module types) and the slim model's weights. ``surgeon.load("r50.surgeon", model)`` traces
``model`` - a fresh, unpruned instance of the original architecture, with any weights - on
inputs of the recorded shapes, checks that its channel graph is the one the plan was made on,
cuts the recorded classes (``ResizePass``) and loads the saved weights, strictly. The file holds
no code, like a state dict: the architecture comes from the caller.

File format
-----------
A ``.surgeon`` file is a zip archive with two members:

* ``plan.json`` - UTF-8 JSON, readable with any zip tool (``unzip -p r50.surgeon plan.json``):
  ``format`` (``"surgeon.slim"``), ``version`` (``1``), the ``surgeon`` and ``torch`` versions
  that wrote it, and ``plan``, the record ``surgeon.slim`` leaves in
  ``gm.meta["surgeon.plan"]`` (``fingerprint``, ``removed``, ``model``, ``inputs``,
  ``leaf_modules``).
* ``weights.pt`` - ``torch.save`` of the slim model's full state dict (stored, not
  compressed). It is read back with ``torch.load(weights_only=True)``: opening a file from
  elsewhere unpickles tensors only and runs no code.

One file is easy to move around; the plan stays inspectable without torch; the weights go
through torch's own serializer (no extra dependency). The archive is written to a hidden
temporary file next to the target and moved into place with ``os.replace``: a failed save
leaves nothing behind. Member timestamps are fixed, so saving the same model twice gives the
same bytes.
"""

from __future__ import annotations

import copy
import io
import itertools
import json
import logging
import os
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.utils import _pytree as pytree

import surgeon
from surgeon.capture.inputs import inputs_from_spec, spec_shapes
from surgeon.errors import SurgeonInputError, SurgeonLoadError
from surgeon.files import check_output_path, write_atomic
from surgeon.keys import PLAN_KEY, plan_of
from surgeon.names import leaf_name, resolve_leaves
from surgeon.options import Leaf
from surgeon.pipeline import ReplayError, gc_paused, replay

__all__ = ["SurgeonLoadError", "save", "load", "FORMAT", "FORMAT_VERSION"]

log = logging.getLogger(__name__)

FORMAT = "surgeon.slim"
FORMAT_VERSION = 1

_PLAN_MEMBER = "plan.json"
_WEIGHTS_MEMBER = "weights.pt"
_PLAN_FIELDS = ("fingerprint", "removed", "model", "inputs", "leaf_modules")
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed member timestamps: the same model gives the same bytes
_WHAT = "surgeon file"


# --------------------------------------------------------------------------------------------
# save
# --------------------------------------------------------------------------------------------


def save(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Write the slim ``model`` (its plan and full state dict) to the single file ``path``.

    Args:
        model: the module ``surgeon.slim`` returned (or one ``surgeon.load`` rebuilt); it
            carries its plan in ``model.meta["surgeon.plan"]``.
        path: the file to write, e.g. ``"r50.surgeon"``; its folder must exist. An existing
            file is replaced, atomically.

    Returns:
        ``path``, absolute.

    Raises:
        SurgeonInputError: ``model`` is not a module made by ``surgeon.slim``, or its plan is
            not JSON-able.
        SurgeonExportError: the folder does not exist or is not writable, or the write failed;
            nothing is left at ``path`` (an existing file there is untouched).
    """
    if not isinstance(model, nn.Module):
        raise SurgeonInputError(
            f"surgeon.save takes the torch.nn.Module surgeon.slim returned, got "
            f"{type(model).__name__}"
        )
    plan = _plan_of(model)
    target = check_output_path(path, what=_WHAT)
    doc = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "surgeon": surgeon.__version__,
        "torch": torch.__version__,
        "plan": plan,
    }
    try:
        text = _to_json(doc) + "\n"
    except (TypeError, ValueError) as exc:
        raise SurgeonInputError(
            f"the plan of this {type(model).__name__} cannot be written as JSON ({exc}); the "
            "example inputs given to surgeon.slim must be tensors, or tuples / dicts of tensors "
            "and plain numbers"
        ) from exc
    state = {key: _compact(value) for key, value in model.state_dict().items()}
    _write_atomic(target, text.encode("utf-8"), state)
    return target


def _plan_of(model: nn.Module) -> dict[str, Any]:
    plan = plan_of(model)
    if plan is None:
        raise SurgeonInputError(
            f"this {type(model).__name__} carries no surgeon plan (model.meta[{PLAN_KEY!r}]): "
            "surgeon.save stores a model made by surgeon.slim; pass the module surgeon.slim "
            "returned (surgeon.slim(model, 0.0, x) keeps every live channel), or save an "
            "unpruned model with torch.save(model.state_dict(), path)"
        )
    missing = [f for f in _PLAN_FIELDS if not isinstance(plan, dict) or f not in plan]
    if missing:
        raise SurgeonInputError(
            f"the surgeon plan of this {type(model).__name__} lacks {', '.join(missing)}: it was "
            "not written by this version of surgeon.slim; slim the model again and save the "
            "module surgeon.slim returns"
        )
    return plan


def _compact(t: torch.Tensor) -> torch.Tensor:
    """``t`` on the CPU, copied when it views a larger storage (torch.save writes all of it)."""
    t = t.detach()
    if t.layout != torch.strided:
        return t.cpu()
    if t.device.type != "cpu":
        return t.cpu()
    if t.untyped_storage().nbytes() > t.numel() * t.element_size():
        return t.clone()
    return t


def _to_json(value: Any, depth: int = 0) -> str:
    """JSON, one key per line, with lists of plain values kept on one line (class id lists)."""
    pad, end = "  " * (depth + 1), "  " * depth
    if isinstance(value, dict) and value:
        items = [f"{pad}{json.dumps(str(k))}: {_to_json(v, depth + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + end + "}"
    if isinstance(value, (list, tuple)) and any(isinstance(v, (dict, list, tuple)) for v in value):
        items = [pad + _to_json(v, depth + 1) for v in value]
        return "[\n" + ",\n".join(items) + "\n" + end + "]"
    return json.dumps(value, allow_nan=False)


def _write_atomic(target: Path, plan: bytes, state: dict[str, torch.Tensor]) -> None:
    """Stream the archive into a temporary sibling of ``target``, then move it into place."""

    def write(temp: Path) -> None:
        with open(temp, "wb") as handle, zipfile.ZipFile(handle, "w") as zf:
            info = zipfile.ZipInfo(_PLAN_MEMBER, _ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, plan)
            info = zipfile.ZipInfo(_WEIGHTS_MEMBER, _ZIP_DATE)
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as member:
                torch.save(state, member)

    hint = "; nothing was written there - free some space or choose another path"
    write_atomic(target, write, what=_WHAT, hint=hint)


# --------------------------------------------------------------------------------------------
# load
# --------------------------------------------------------------------------------------------


def load(
    path: str | os.PathLike[str],
    model: nn.Module | None = None,
    *,
    leaf_modules: Iterable[Leaf] = (),
) -> nn.Module:
    """Rebuild the slim model saved at ``path`` from ``model``, a fresh original instance.

    Args:
        path: a file written by :func:`save`.
        model: a fresh instance of the ORIGINAL (unpruned) architecture the slim model was made
            from, built with the same arguments (e.g. ``num_classes``); its weights do not
            matter, they are replaced. It is not modified (a copy is traced and cut).
        leaf_modules: the ``leaf_modules`` given to ``surgeon.slim``, when there were any.

    Returns:
        the slim model in the form it was saved in — a copy of ``model``'s own class cut by
        the plan (verified as ``slim`` verified it), or a ``torch.fx.GraphModule`` — with the
        saved weights, on ``model``'s device and in its train / eval mode, carrying its plan
        in ``meta["surgeon.plan"]`` (it can be saved again).

    Raises:
        SurgeonLoadError: the file is missing, not a surgeon file, or damaged; ``model`` is
            missing; or the plan or weights do not fit ``model`` (another architecture, other
            arguments, other leaf modules).
        SurgeonInputError: ``model`` is not a module, or ``leaf_modules`` holds something that
            is not a module type or instance.
    """
    source = _existing_file(path)
    with _open_archive(source) as zf:
        plan = _read_plan(zf, source)
        made_from = plan["model"]
        if model is None:
            raise SurgeonLoadError(
                f"surgeon.load needs the original architecture: {source!r} holds the plan and "
                f"weights of a slim {made_from} but no code; pass a fresh, unpruned instance "
                f"built with the same arguments, e.g. surgeon.load(path, model={made_from}(...)) "
                "(its weights are replaced)"
            )
        if not isinstance(model, nn.Module):
            raise SurgeonInputError(
                f"model must be a fresh torch.nn.Module instance of the original architecture "
                f"({made_from}), got {type(model).__name__}"
            )
        meta = getattr(model, "meta", None)
        if isinstance(meta, dict) and PLAN_KEY in meta:
            raise SurgeonLoadError(
                f"this {type(model).__name__} is already a slim model; surgeon.load cuts a fresh, "
                f"unpruned instance of the original architecture ({made_from}): pass that instead"
            )
        leaves = list(resolve_leaves(model, leaf_modules))
        _check_leaves(plan, leaves, source)
        state = _read_weights(zf, source)
    with gc_paused():
        gm = _rebuild(model, plan, leaves, source)
    _load_state(gm, state, source, type(model).__name__)
    gm.meta[PLAN_KEY] = copy.deepcopy(plan)
    return gm


def _existing_file(path: str | os.PathLike[str]) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise SurgeonInputError(
            f"path must be a str or os.PathLike naming a surgeon file, got {type(path).__name__}"
        )
    source = Path(path).expanduser().absolute()
    if not source.exists():
        raise SurgeonLoadError(
            f"no {_WHAT} at {str(source)!r}; check the path, or write one with "
            "surgeon.save(slim_model, path)"
        )
    if source.is_dir():
        raise SurgeonLoadError(
            f"{str(source)!r} is a folder; give the path of the {_WHAT} written by surgeon.save"
        )
    return str(source)


def _corrupt(source: str, what: str) -> SurgeonLoadError:
    return SurgeonLoadError(
        f"{source!r} is not a readable {_WHAT}: {what}; it may be truncated or damaged - save "
        "the slim model again with surgeon.save(slim_model, path)"
    )


def _open_archive(source: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(source)
    except zipfile.BadZipFile as exc:
        raise _corrupt(source, "it is not a zip archive") from exc
    except OSError as exc:
        raise SurgeonLoadError(
            f"cannot read the {_WHAT} {source!r}: {exc.strerror or exc}; check its permissions"
        ) from exc


def _read_member(zf: zipfile.ZipFile, source: str, name: str) -> bytes:
    try:
        return zf.read(name)
    except KeyError as exc:
        hint = " (a torch.save checkpoint?)" if name == _PLAN_MEMBER else ""
        raise _corrupt(source, f"the archive has no {name}{hint}") from exc
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
        raise _corrupt(source, f"{name} cannot be read ({exc})") from exc


def _read_plan(zf: zipfile.ZipFile, source: str) -> dict[str, Any]:
    raw = _read_member(zf, source, _PLAN_MEMBER)
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _corrupt(source, f"{_PLAN_MEMBER} is not valid JSON ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise _corrupt(source, f'{_PLAN_MEMBER} does not say "format": "{FORMAT}"')
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise _corrupt(source, f"{_PLAN_MEMBER} has no format version")
    if version > FORMAT_VERSION:
        raise SurgeonLoadError(
            f"{source!r} is in surgeon file format version {version}, written by surgeon "
            f"{doc.get('surgeon', '?')}; this surgeon {surgeon.__version__} reads up to version "
            f"{FORMAT_VERSION}: upgrade surgeon to load it"
        )
    plan = doc.get("plan")
    missing = [f for f in _PLAN_FIELDS if not isinstance(plan, dict) or f not in plan]
    if missing:
        raise _corrupt(source, f"its plan lacks {', '.join(missing)}")
    if not isinstance(plan["removed"], dict) or not isinstance(plan["leaf_modules"], list):
        raise _corrupt(source, "its plan's removed classes or leaf modules are malformed")
    return plan


def _read_weights(zf: zipfile.ZipFile, source: str) -> dict[str, torch.Tensor]:
    raw = _read_member(zf, source, _WEIGHTS_MEMBER)
    try:
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, pickle errors, EOFError, ...
        raise _corrupt(source, f"{_WEIGHTS_MEMBER} cannot be read ({exc})") from exc
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise _corrupt(source, f"{_WEIGHTS_MEMBER} is not a state dict")
    return state


def _check_leaves(plan: dict[str, Any], leaves: list[Leaf | str], source: str) -> None:
    given = sorted(leaf_name(m) for m in leaves)
    recorded = sorted(plan["leaf_modules"])
    if given != recorded:
        raise SurgeonLoadError(
            f"the plan in {source!r} was made with leaf_modules {recorded or 'none'}, but "
            f"surgeon.load got {given or 'none'}; pass the same leaf module types to "
            "surgeon.load(path, model, leaf_modules=[...]) as were given to surgeon.slim"
        )


def _inputs_desc(plan: dict[str, Any]) -> str:
    shapes = spec_shapes(plan["inputs"])
    return ", ".join("x".join(str(d) for d in s) for s in shapes) or "no tensors"


def _rebuild(model: nn.Module, plan: dict[str, Any], leaves: list[Leaf], source: str) -> nn.Module:
    """Replay ``plan`` on a copy of ``model`` (:func:`surgeon.pipeline.replay`, on zero inputs
    of the recorded shapes), after replaying, first, the plans of earlier steps an iterative
    schedule recorded; the errors say which part of the plan does not fit."""
    previous = plan.get("previous")
    if previous is not None:
        if not isinstance(previous, dict):
            raise _corrupt(source, "its record of earlier prune steps is malformed")
        model = _rebuild(model, previous, leaves, source)
    try:
        inputs = inputs_from_spec(plan["inputs"])
    except (KeyError, TypeError, AttributeError, ValueError, RuntimeError) as exc:
        raise _corrupt(source, f"its input spec is malformed ({exc})") from exc
    device = next(
        (t.device for t in itertools.chain(model.parameters(), model.buffers())),
        torch.device("cpu"),
    )
    inputs = pytree.tree_map(lambda v: v.to(device) if isinstance(v, torch.Tensor) else v, inputs)
    name, made_from = type(model).__name__, plan["model"]
    made = f"it was made from a {made_from} on inputs {_inputs_desc(plan)}"
    try:
        return replay(model, plan, inputs, tuple(leaves))
    except ReplayError as exc:
        if exc.stage == "record":
            raise _corrupt(
                source, f"its removed classes do not index the model's groups ({exc})"
            ) from exc
        raise SurgeonLoadError(
            {
                "capture": f"the plan in {source!r} does not fit this {name}: {made}, and tracing "
                f"this model on such inputs failed: {exc}",
                "plan": f"the plan in {source!r} does not fit this {name}: {made}, and this "
                "model's channel graph differs (another architecture, other constructor "
                "arguments or other leaf modules); load it onto a fresh instance of the model it "
                "was made from, built with the same arguments",
                "passes": f"cutting this {name} by the plan in {source!r} failed ({made}): {exc}; "
                "load it onto a fresh instance of the model it was made from",
            }[exc.stage]
        ) from exc


def _created_bias(gm: fx.GraphModule, key: str, value: torch.Tensor) -> bool:
    """Give a bias-less Conv / Linear the bias PropagatePass folded into the saved model."""
    owner, _, attr = key.rpartition(".")
    if attr != "bias" or not owner or value.dim() != 1:
        return False
    try:
        module = gm.get_submodule(owner)
    except AttributeError:
        return False
    if not isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)) or module.bias is not None:
        return False
    width = module.out_features if isinstance(module, nn.Linear) else module.out_channels
    if value.shape[0] != width:
        return False
    weight = module.weight
    module.bias = nn.Parameter(
        torch.zeros(value.shape, dtype=weight.dtype, device=weight.device),
        requires_grad=weight.requires_grad,
    )
    return True


def _load_state(gm: fx.GraphModule, state: dict[str, torch.Tensor], source: str, name: str) -> None:
    """Load the saved state dict strictly, after creating the biases slim folded in."""
    own = gm.state_dict()
    created = [k for k, v in state.items() if k not in own and _created_bias(gm, k, v)]
    if created:
        own = gm.state_dict()
    unexpected = [k for k in state if k not in own]
    missing = [k for k in own if k not in state]
    mismatched = [
        f"{k}: saved {list(state[k].shape)}, model {list(own[k].shape)}"
        for k in state
        if k in own and state[k].shape != own[k].shape
    ]
    problems = []
    for label, keys in (
        ("shapes differ", mismatched),
        ("saved but not in the model", unexpected),
        ("in the model but not saved", missing),
    ):
        if keys:
            more = f" (and {len(keys) - 5} more)" if len(keys) > 5 else ""
            problems.append(f"{label}: {'; '.join(keys[:5])}{more}")
    if problems:
        raise SurgeonLoadError(
            f"the weights in {source!r} do not fit this {name} once cut: {' | '.join(problems)}; "
            "build the model with the same arguments (e.g. num_classes) as the one that was "
            "slimmed"
        )
    try:
        gm.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise SurgeonLoadError(
            f"the weights in {source!r} cannot be loaded into this {name} once cut: {exc}"
        ) from exc
