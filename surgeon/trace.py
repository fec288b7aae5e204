"""Tracing: torch.fx symbolic trace plus shape metadata from example inputs.

The traced ``GraphModule`` carries ``node.meta["tensor_meta"]`` (from torch.fx's ``ShapeProp``)
on every node. A model fx cannot trace raises :class:`SurgeonTraceError` naming the module
that was being traced and the offending source line, with the way out (leaf modules).
"""

from __future__ import annotations

import collections
import contextlib
import copy
import functools
import inspect
import io
import keyword
import logging
import os
import sys
import traceback
from collections.abc import Iterable
from typing import Any

import torch
import torch.fx as fx
from torch.fx.passes.shape_prop import ShapeProp
from torch.utils import _pytree as pytree

from surgeon.capture import (
    SPECIALISED_KEY,
    ConcreteTracer,
    erase_new_nodes,
    wrapped_without_rule,
)
from surgeon.errors import SurgeonInputError, SurgeonTraceError

__all__ = [
    "trace",
    "propagate_shapes",
    "placeholder_args",
    "SurgeonTracer",
    "as_args",
    "input_spec",
    "inputs_from_spec",
    "eval_mode",
    "AUTO_LEAVES_KEY",
]

log = logging.getLogger(__name__)

_TORCH_DIR = os.path.dirname(torch.__file__)


# -- example inputs ---------------------------------------------------------------------
def as_args(example_inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Split ``example_inputs`` (a tensor, a tuple of tensors, or a dict) into (args, kwargs)."""
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    return (example_inputs,), {}


def input_spec(example_inputs: Any) -> Any:
    """The shapes and dtypes of ``example_inputs``, JSON-able, in the same structure."""
    if isinstance(example_inputs, torch.Tensor):
        return {
            "shape": list(example_inputs.shape),
            "dtype": str(example_inputs.dtype).removeprefix("torch."),
        }
    if isinstance(example_inputs, dict):
        return {"dict": {k: input_spec(v) for k, v in example_inputs.items()}}
    if isinstance(example_inputs, (tuple, list)):
        return {"tuple": [input_spec(v) for v in example_inputs]}
    return {"value": example_inputs}


def inputs_from_spec(spec: Any) -> Any:
    """Zero tensors of the recorded shapes and dtypes (for re-tracing a recorded plan)."""
    if "shape" in spec:
        return torch.zeros(spec["shape"], dtype=getattr(torch, spec["dtype"]))
    if "dict" in spec:
        return {k: inputs_from_spec(v) for k, v in spec["dict"].items()}
    if "tuple" in spec:
        return tuple(inputs_from_spec(v) for v in spec["tuple"])
    return spec["value"]


# factories that take a size as varargs: ``torch.ones(n, m)`` with traced sizes fails in
# torch's argument parser (fx gets no say); ``torch.ones((n, m))`` traces
_SIZE_VARARGS = ("ones", "zeros", "empty", "rand", "randn")


def _packing(fn: Any) -> Any:
    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        if len(args) > 1 and any(isinstance(a, fx.Proxy) for a in args):
            return fn(tuple(args), **kwargs)
        return fn(*args, **kwargs)

    return call


def _recording(fn: Any) -> Any:
    """``torch.tensor(x.size(-1))``: torch asks the traced size for an array interface and
    fails; with a traced value in its data the call is recorded as a node instead."""

    @functools.wraps(fn)
    def call(data: Any, *args: Any, **kwargs: Any) -> Any:
        traced = [a for a in pytree.tree_leaves(data) if isinstance(a, fx.Proxy)]
        if traced:
            return traced[0].tracer.create_proxy("call_function", fn, (data, *args), kwargs)
        return fn(data, *args, **kwargs)

    return call


_PATCHED = [0]  # traces under way: the outermost one patches and restores


@contextlib.contextmanager
def _sizes_traceable():
    """Factories of ``torch`` take traced sizes while a trace runs (a trace inside a traced
    forward keeps the outer one's patch, and the outer one restores torch's own)."""
    saved = {name: getattr(torch, name) for name in (*_SIZE_VARARGS, "tensor")}
    outer = _PATCHED[0] == 0
    _PATCHED[0] += 1
    try:
        if outer:
            for name, fn in saved.items():
                setattr(torch, name, _recording(fn) if name == "tensor" else _packing(fn))
        yield
    finally:
        _PATCHED[0] -= 1
        if outer:
            for name, fn in saved.items():
                setattr(torch, name, fn)


_OWN = ("_parameters", "_buffers", "_modules")


def _holds_proxy(value: Any) -> bool:
    return any(isinstance(v, fx.Proxy) for v in pytree.tree_leaves(value))


@contextlib.contextmanager
def _caches_kept(root: Any):
    """Attributes a forward writes while it is traced (LeViT's attention-bias cache, filled in
    eval mode) would keep graph values after the trace, and the module would hand them back
    to its next eager call: each attribute that holds one gets its value from before (a dict
    or list written in place gets its contents back, nested ones too)."""
    modules = list(root.modules()) if isinstance(root, torch.nn.Module) else []
    before = []
    for m in modules:
        state = {k: v for k, v in vars(m).items() if k not in _OWN}
        # pytree rebuilds every dict, list and tuple in it (the leaves shared)
        copies = {
            k: pytree.tree_map(lambda t: t, v)
            for k, v in state.items()
            if isinstance(v, (dict, list))
        }
        before.append((m, state, copies))
    try:
        yield
    finally:
        for m, state, copies in before:
            for k, v in list(vars(m).items()):
                if k in _OWN or not _holds_proxy(v):
                    continue
                if k not in state:
                    delattr(m, k)
                elif v is state[k] and k in copies:  # a dict or list written in place
                    if isinstance(v, dict):
                        v.clear()
                        v.update(copies[k])
                    else:
                        v[:] = copies[k]
                else:
                    setattr(m, k, state[k])


class SurgeonTracer(fx.Tracer):
    """An fx tracer that honours user leaf modules and remembers where tracing failed."""

    def trace(self, root: Any, concrete_args: Any = None) -> fx.Graph:
        with _sizes_traceable(), _caches_kept(root):
            return super().trace(root, concrete_args)

    def __init__(
        self, leaf_modules: Iterable[type[torch.nn.Module] | torch.nn.Module | str] = ()
    ) -> None:
        super().__init__()
        leaves = tuple(leaf_modules)
        self._leaf_types = tuple(m for m in leaves if isinstance(m, type))
        self._leaf_ids = {id(m) for m in leaves if isinstance(m, torch.nn.Module)}
        self._leaf_names = {m for m in leaves if isinstance(m, str)}
        self._stack: list[tuple[str, str]] = []
        self.failed_in: list[tuple[str, str]] | None = None

    def is_leaf_module(self, m: torch.nn.Module, module_qualified_name: str) -> bool:
        if self._user_leaf(m, module_qualified_name):
            return True
        if isinstance(m, torch.jit.ScriptModule):
            return True  # TorchScript: fx cannot trace into it; one opaque call, params kept
        leaf = super().is_leaf_module(m, module_qualified_name)
        if leaf and _composite_without_rule(m):
            return False  # nn.TransformerEncoderLayer: its parts have rules, so trace them
        return leaf

    def _user_leaf(self, m: torch.nn.Module, path: str) -> bool:
        return (
            id(m) in self._leaf_ids
            or path in self._leaf_names
            or bool(self._leaf_types and isinstance(m, self._leaf_types))
        )

    def call_module(self, m, forward, args, kwargs):  # noqa: ANN001 - fx's signature
        try:
            path = self.path_of_module(m)
        except NameError:  # made inside forward (``nn.ReLU()(x)``): traced as what it does
            return forward(*args, **kwargs)
        self._stack.append((path, type(m).__name__))
        try:
            if not self._user_leaf(m, path):
                expanded = _expand(self, m, args, kwargs)
                if expanded is not NotImplemented:
                    return expanded
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = list(self._stack)
            raise
        finally:
            self._stack.pop()


def _composite_without_rule(m: torch.nn.Module) -> bool:
    """A torch.nn module made of submodules, with no rule of its own and no traced-through
    form (``nn.TransformerEncoderLayer``, ``nn.TransformerDecoder``): fx keeps every torch.nn
    module whole, but this one is better traced into."""
    from surgeon.rules.attention import expansion_for
    from surgeon.rules.registry import has_module_rule

    has_parts = next(m.children(), None) is not None
    return has_parts and not has_module_rule(m) and expansion_for(m) is None


def _expand(tracer: fx.Tracer, m: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
    """Trace a library module fx keeps opaque (``nn.MultiheadAttention``) as what it computes
    (:data:`surgeon.rules.attention.EXPANSIONS`); NotImplemented where that does not apply.
    Nodes of an attempt that fails are taken out again, and the module is called as it is."""
    from surgeon.rules.attention import expansion_for

    fn = expansion_for(m)
    if fn is None:
        return NotImplemented
    before = set(tracer.graph.nodes)
    try:
        out = fn(m, *args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any failure: the module stays one call
        log.info("surgeon: %s is called as it is (%s)", type(m).__name__, exc)
        out = NotImplemented
    if out is NotImplemented:
        erase_new_nodes(tracer.graph, before)
    return out


def _user_frame(exc: BaseException) -> traceback.FrameSummary | None:
    """The innermost traceback frame that is not inside torch itself."""
    frames = [
        f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(_TORCH_DIR)
    ]
    ours = (os.path.join("surgeon", "trace.py"), os.path.join("surgeon", "capture.py"))
    frames = [f for f in frames if not f.filename.endswith(ours)]
    return frames[-1] if frames else None


def deep_copy(model: torch.nn.Module, share_parameters: bool = False) -> torch.nn.Module:
    """``copy.deepcopy(model)``, with the parameters of its TorchScript submodules leaves
    again: deepcopy gives a ScriptModule plain tensors cloned from the originals (non-leaf,
    ``grad_fn=CloneBackward``), which an optimizer never updates.

    ``share_parameters``: the copy holds the model's own ``nn.Parameter`` objects (everything
    else is copied, buffers included): no copy of the weights, for a caller that never
    changes a parameter in place (it assigns new ones) and gives each one that is still
    shared a copy of its own at the end (:func:`unshare_parameters`)."""
    if share_parameters:
        memo = {id(p): p for _, p in model.named_parameters(remove_duplicate=False)}
        out = _copy_tree(model, memo)
    else:
        out = copy.deepcopy(model)
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


def trace(
    model: torch.nn.Module,
    example_inputs: Any,
    *,
    leaf_modules: Iterable[type[torch.nn.Module] | torch.nn.Module | str] = (),
    check: bool = True,
) -> fx.GraphModule:
    """Symbolically trace ``model`` and propagate shapes from ``example_inputs``.

    ``example_inputs`` is a tensor, a tuple of tensors (positional) or a dict of keyword
    tensors. ``leaf_modules`` are module types, instances or qualified submodule names fx
    must not trace into: their output dims are then blocked by the channel analysis, which is always safe.
    The returned GraphModule shares submodules with ``model``; copy first to keep it intact.
    A ``GraphModule`` is used as it is, never traced again (its shapes are propagated).
    ``check``: run ``model`` itself too and refuse a graph that computes something else
    (:func:`check_trace`); ``False`` leaves that to the caller, with the graph's output kept
    in ``gm.meta[TRACED_KEY]`` (one forward pass less when a later check covers it).
    """
    if not isinstance(model, torch.nn.Module):
        raise SurgeonInputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, fx.GraphModule):  # already a graph (a slim model, a user's capture)
        model.meta.setdefault(AUTO_LEAVES_KEY, [])
        model.meta.setdefault(SPECIALISED_KEY, None)
        model.meta[FINITE_KEY] = _finite(propagate_shapes(model, example_inputs))
        return model
    with explicit_forward(model, example_inputs):
        tracer, graph, auto = _capture(model, example_inputs, list(leaf_modules))
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    keep_unreached(model, gm)
    gm.meta[AUTO_LEAVES_KEY] = auto
    specialised = getattr(tracer, "specialised", [])
    gm.meta[SPECIALISED_KEY] = (
        {"inputs": input_spec(example_inputs), "where": specialised[:MAX_RECORDED]}
        if specialised
        else None
    )
    if specialised:
        log.warning(
            "surgeon: %s branches on sizes (%s); its graph is specialised to the example "
            "inputs' sizes, and so is the slim model",
            type(model).__name__,
            specialised[0],
        )
    traced = propagate_shapes(gm, example_inputs)
    if check:
        check_trace(model, example_inputs, traced)
    else:
        gm.meta[TRACED_KEY] = traced
    gm.meta[FINITE_KEY] = _finite(traced)
    return gm


FINITE_KEY = "surgeon.output_finite"
TRACED_KEY = "surgeon.traced_output"  # the graph's output on the example, left to check


def _finite(outputs: Any) -> list[bool]:
    """Per floating output tensor: whether all its values are finite."""
    return [
        bool(torch.isfinite(t).all())
        for t in pytree.tree_leaves(outputs)
        if isinstance(t, torch.Tensor) and t.is_floating_point()
    ]


def nonfinite(model: torch.nn.Module, example_inputs: Any, nan_only: bool = False) -> list[str]:
    """What holds NaN (and, unless ``nan_only``, infinite) values: the example inputs by
    position or keyword, the model's parameters and buffers by name."""
    bad = torch.isnan if nan_only else (lambda t: ~torch.isfinite(t))
    args, kwargs = as_args(example_inputs)
    found = []
    items = [*((f"example input {i}", a) for i, a in enumerate(args))]
    items += [(f"example input {k!r}", v) for k, v in kwargs.items()]
    for label, value in items:
        for j, t in enumerate(pytree.tree_leaves(value)):
            if isinstance(t, torch.Tensor) and t.is_floating_point() and bool(bad(t).any()):
                found.append(label if j == 0 else f"{label} (tensor {j})")
    for kind, named in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, t in named:
            if t.is_floating_point() and bool(bad(t.detach()).any()):
                found.append(f"{kind} {name!r}")
    return found


def _capture(
    model: torch.nn.Module, example_inputs: Any, leaves: list
) -> tuple[fx.Tracer, fx.Graph, list[str]]:
    """Plain symbolic tracing first; sizes specialised to the example where it fails; then a
    submodule that still fails becomes a leaf. Returns the tracer, the graph and the leaves
    made automatically (with their reasons)."""
    auto: list[str] = []
    specialise = False
    while True:
        tracer = SpecialisingTracer(leaves) if specialise else SurgeonTracer(leaves)
        if specialise:
            tracer.concrete_setup(model, *as_args(example_inputs))
        try:
            graph = tracer.trace(
                model, concrete_args=_defaults_not_given(model, example_inputs) or None
            )
            if not specialise and _has_wrapped_without_rule(graph):
                # library functions fx keeps opaque: the specialising tracer traces their
                # bodies (they often branch on sizes); where it cannot, this graph stands
                specialised = _try_specialised(model, example_inputs, leaves)
                if specialised is not None:
                    tracer, graph = specialised
            return tracer, graph, auto
        except Exception as exc:
            error = _trace_error(model, tracer, exc)
            if not specialise:
                log.info(
                    "surgeon: symbolic tracing failed (%s); capturing with sizes "
                    "specialised to the example inputs",
                    _one_line(error),
                )
                specialise = True
                continue
            culprit = _failing_submodule(model, tracer)
            if culprit is None or len(auto) >= MAX_AUTO_LEAVES:
                raise error from exc
            # block the part, not the model: that submodule becomes one opaque call
            qualname, module = culprit
            leaves.append(module)
            auto.append(f"{qualname} ({type(module).__name__}): {_one_line(error)}")
            log.warning("surgeon: %s is traced as a leaf (its channels stay): %s", qualname, exc)


MAX_RECORDED = 8


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


def _has_wrapped_without_rule(graph: fx.Graph) -> bool:
    return any(n.op == "call_function" and wrapped_without_rule(n.target) for n in graph.nodes)


def _try_specialised(
    model: torch.nn.Module, example_inputs: Any, leaves: list
) -> tuple[fx.Tracer, fx.Graph] | None:
    tracer = SpecialisingTracer(leaves)
    tracer.concrete_setup(model, *as_args(example_inputs))
    try:
        graph = tracer.trace(
            model, concrete_args=_defaults_not_given(model, example_inputs) or None
        )
    except Exception as exc:  # noqa: BLE001 - the plain graph stands
        log.info("surgeon: tracing through wrapped functions failed: %s", exc)
        return None
    return tracer, graph


class SpecialisingTracer(ConcreteTracer, SurgeonTracer):
    """:class:`SurgeonTracer` whose size queries answer with the example's integers. Buffers
    read in ``forward`` are traced too (``self.position_ids[:, :n]``): sliced by a size this
    tracer answers, a buffer would otherwise become a plain tensor the graph cannot follow."""

    proxy_buffer_attributes = True


AUTO_LEAVES_KEY = "surgeon.auto_leaves"
MAX_AUTO_LEAVES = 64


def _failing_submodule(
    model: torch.nn.Module, tracer: SurgeonTracer
) -> tuple[str, torch.nn.Module] | None:
    """The innermost submodule whose forward fx could not trace (None: the top level)."""
    if not tracer.failed_in:
        return None
    qualname, _ = tracer.failed_in[-1]
    if not qualname:
        return None
    try:
        return qualname, model.get_submodule(qualname)
    except AttributeError:
        return None


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    return text.split(" Way out:")[0][:300]


def check_trace(model: torch.nn.Module, example_inputs: Any, traced: Any) -> None:
    """The traced graph must compute what the model computes on the example inputs.

    torch.fx records ``x += y`` as an out-of-place add, so when ``x`` is also read elsewhere
    the graph and the model part ways; refuse rather than slim a different function.
    """
    args, kwargs = as_args(example_inputs)
    args = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)
    kwargs = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    with torch.no_grad(), eval_mode(model):
        eager = model(*args, **kwargs)
    want = [t for t in pytree.tree_leaves(eager) if isinstance(t, torch.Tensor)]
    got = [t for t in pytree.tree_leaves(traced) if isinstance(t, torch.Tensor)]
    name = type(model).__name__
    if len(got) != len(want):
        raise SurgeonTraceError(
            f"the torch.fx graph of {name} returns {len(got)} tensor(s) where the model returns "
            f"{len(want)} on the example inputs in eval mode: fx recorded a different path "
            "through forward"
            + (
                " (it traced the model in training mode, and forward branches on "
                "self.training, as auxiliary heads do). Way out: call model.eval() before slimming."
                if model.training
                else " (a branch on a value, a Python container it could not follow). Way out: "
                "put the module whose output differs in leaf_modules=(...), or report the model."
            )
        )
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        if a.shape != b.shape or a.dtype != b.dtype:
            raise SurgeonTraceError(
                f"the torch.fx graph of {name} gives output {i} as {a.dtype} "
                f"{tuple(a.shape)} where the model gives {b.dtype} {tuple(b.shape)}: fx "
                "recorded a different function. Way out: put the module that computes it in "
                "leaf_modules=(...), or report the model."
            )
        if not a.is_floating_point() and not a.is_complex():
            if not torch.equal(a, b):
                raise SurgeonTraceError(
                    f"the torch.fx graph of {name} does not compute what the model computes "
                    f"(output {i}, {b.dtype}, differs). Way out: put the module that computes it "
                    "in leaf_modules=(...), or report the model."
                )
            continue
        scale = float(b.abs().max()) if b.numel() else 0.0
        diff = float((a - b).abs().max()) if b.numel() else 0.0
        if diff > 1e-5 * max(scale, 1e-30) and diff > 0:
            raise SurgeonTraceError(
                f"the torch.fx graph of {name} does not compute what the model "
                f"computes (output {i} differs by {diff:.3g}, its scale is {scale:.3g}). The usual "
                "cause is an in-place update (`x += y`, `x.add_(y)`) of a tensor that is also read "
                "elsewhere, which fx records as out of place. Way out: write it out of place "
                "(`x = x + y`), or put that module in leaf_modules=(...)."
            )


def _defaults_not_given(model: torch.nn.Module, example_inputs: Any) -> dict[str, Any]:
    """forward's parameters that example_inputs leaves out and that have defaults: fx
    specialises them to the default (``scale=None`` stays ``None`` instead of a proxy)."""
    args, kwargs = as_args(example_inputs)
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return {}
    out = {}
    for i, p in enumerate(params):
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        given = i < len(args) or p.name in kwargs
        if not given and p.default is not p.empty:
            out[p.name] = p.default
    return out


def _trace_error(
    model: torch.nn.Module, tracer: SurgeonTracer, exc: Exception
) -> SurgeonTraceError:
    where = "the top-level forward"
    if tracer.failed_in:
        qualname, type_name = tracer.failed_in[-1]
        where = f"module '{qualname}' ({type_name})"
    frame = _user_frame(exc)
    line = f" at {frame.filename}:{frame.lineno}: `{(frame.line or '').strip()}`" if frame else ""
    hint = (
        "pass that module type in leaf_modules=(...) so fx treats it as one opaque call "
        "(its channels are then left untouched), or make its forward free of data-dependent "
        "Python control flow"
    )
    return SurgeonTraceError(
        f"torch.fx cannot trace {type(model).__name__}: {type(exc).__name__}: {exc} — in {where}{line}. "
        f"Way out: {hint}."
    )


def placeholder_args(gm: fx.GraphModule, example_inputs: Any) -> list[Any]:
    """Positional values for the graph's placeholders, from a tensor, tuple or dict."""
    args, kwargs = as_args(example_inputs)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    values: list[Any] = []
    for i, node in enumerate(placeholders):
        name = node.target.lstrip("*")
        if i < len(args):
            values.append(args[i])
        elif name in kwargs:
            values.append(kwargs.pop(name))
        elif node.args:
            values.append(node.args[0])
        else:
            raise SurgeonInputError(
                f"example_inputs gives no value for the model input '{name}'; pass it positionally "
                f"or as a dict key (inputs: {[p.target for p in placeholders]})"
            )
    extra = len(args) - len(placeholders)
    if extra > 0 or kwargs:
        what = (
            f"{extra} extra positional value(s)"
            if extra > 0
            else f"unknown key(s) {sorted(kwargs)}"
        )
        raise SurgeonInputError(
            f"example_inputs has {what}; the model's forward takes {[p.target for p in placeholders]}"
        )
    return values


def propagate_shapes(gm: fx.GraphModule, example_inputs: Any) -> Any:
    """Run the graph once on ``example_inputs`` under no_grad, recording tensor metadata.

    Returns the output. Raises SurgeonTraceError naming the node that failed.
    """
    # the user's tensors stay untouched even if forward works in place on its inputs
    values = [
        v.clone() if isinstance(v, torch.Tensor) else v
        for v in placeholder_args(gm, example_inputs)
    ]
    prop = _ShapeProp(gm)
    stderr = io.StringIO()
    try:
        # ShapeProp prints a traceback before it re-raises: keep it out of the user's terminal.
        # Eval mode: a run for shapes must not move BatchNorm statistics of a training model.
        with torch.no_grad(), contextlib.redirect_stderr(stderr), eval_mode(gm):
            out = prop.propagate(*values)
    except Exception as exc:
        cause = exc.__cause__ or exc
        node = prop.current
        where = (
            f" at node '{node.name}' ({node.op} {_target_name(node)})" if node is not None else ""
        )
        first = (str(cause).strip().splitlines() or [""])[0]
        raise SurgeonTraceError(
            f"running the traced model on example_inputs failed{where}: {type(cause).__name__}: "
            f"{first}. Check that example_inputs match the model's forward (shapes, dtypes, device).",
            node=node.name if node is not None else None,
        ) from exc
    sys.stderr.write(stderr.getvalue())  # whatever else was said (warnings) still reaches the user
    return out


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module):
    """Every submodule in eval mode for the duration; each one's own flag restored after."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


class _ShapeProp(ShapeProp):
    """ShapeProp that remembers the node it is running (for the error message)."""

    current: fx.Node | None = None

    def run_node(self, n: fx.Node) -> Any:
        self.current = n
        return super().run_node(n)


def _target_name(node: fx.Node) -> str:
    t = node.target
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))
