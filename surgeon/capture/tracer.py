"""The symbolic tracer: torch.fx's, with the rules' library calls kept whole, leaf modules
honoured, torch's varargs-size factories traceable and attribute caches a forward writes
kept, and the module and source line it failed in remembered for the error."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import traceback
from collections.abc import Iterable
from typing import Any

import torch
import torch.fx as fx
from torch.utils import _pytree as pytree

__all__ = ["SurgeonTracer", "erase_new_nodes", "user_frame"]


log = logging.getLogger(__name__)


_TORCH_DIR = os.path.dirname(torch.__file__)


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
        # each node keeps the source line that made it (node.stack_trace): the report names
        # the line a blocked group comes from
        self.record_stack_traces = True
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


def user_frame(exc: BaseException) -> traceback.FrameSummary | None:
    """The innermost traceback frame that is not inside torch itself."""
    frames = [
        f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(_TORCH_DIR)
    ]
    ours = os.path.dirname(__file__)  # surgeon/capture/
    frames = [f for f in frames if not f.filename.startswith(ours)]
    return frames[-1] if frames else None


def erase_new_nodes(graph: fx.Graph, before: set[fx.Node]) -> None:
    """Take out the nodes a failed attempt at tracing added (those not in ``before``)."""
    for node in reversed(list(graph.nodes)):
        if node not in before:
            graph.erase_node(node)
