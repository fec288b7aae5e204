"""Shape-specialised capture: an fx tracer whose size queries answer with the example's ints.

Plain symbolic tracing refuses code that branches or loops on sizes (``if x.shape[-2] <
self.size``, same-padding arithmetic with ``math.ceil``, ``for i in range(x.shape[1])``).
:class:`ConcreteTracer` runs the model on the example inputs *while* it traces: every proxy
carries the value its node has on those inputs. Where Python needs a real ``bool`` / ``int`` /
``float`` / ``len`` / iteration of a traced value, the tracer answers with that value and
records the place (file, line): the graph is then specialised to the example's sizes at those
places and nowhere else (a size that only flows into other ops stays symbolic, so the batch dim
stays free where the graph allows). A question about tensor *values* (``if x.sum() > 0``,
``int(t)``) is still refused: that branch would be taken on data, not on shapes."""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import operator
import os
from typing import Any

import torch
import torch.fx as fx
from torch.fx.proxy import Attribute, Proxy, TraceError
from torch.utils import _pytree as pytree

from surgeon.capture.inputs import as_args, defaults_not_given
from surgeon.capture.shapes import eval_mode
from surgeon.capture.tracer import _TORCH_DIR, SurgeonTracer, erase_new_nodes

__all__ = [
    "ConcreteTracer",
    "SpecialisingTracer",
    "wrapped_without_rule",
    "traced_specialised",
    "has_wrapped_without_rule",
]


log = logging.getLogger(__name__)


_UNKNOWN = object()  # a node whose value could not be computed (it then answers nothing)


_HERE = os.path.dirname(os.path.dirname(__file__))  # surgeon/


class ConcreteTracer(fx.Tracer):
    """Mixin body for a tracer that knows each node's value on ``example`` (args, kwargs).

    ``specialised`` lists, once each, the source lines where a traced value was turned into a
    Python value (``"file:line: code (why)"``).
    """

    def concrete_setup(self, root: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        self._values: dict[fx.Node, Any] = {}
        self._inputs = _bind_inputs(root, args, kwargs)
        self.specialised: list[str] = []
        self._through: list[fx.Node] = []

    def trace(self, root: Any, concrete_args: Any = None) -> fx.Graph:
        graph = super().trace(root, concrete_args)
        # fx's wrapper marks what it gets back as a wrapped call, and codegen would then
        # register the body's last op (torch.cat) as a wrapped global for every later trace
        for node in self._through:
            node.meta.pop("is_wrapped", None)
        return graph

    # -- values -------------------------------------------------------------------------
    def value_of(self, a: Any) -> Any:
        if isinstance(a, Proxy):
            return self._values.get(a.node, _UNKNOWN)
        return a

    def create_proxy(
        self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None
    ):  # noqa: ANN001, E501 - fx's signature
        if kind == "call_function" and hasattr(self, "_values") and wrapped_without_rule(target):
            through = self._trace_through(target, args, kwargs)
            if through is not None:
                return through
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        if hasattr(self, "_values") and proxy.node not in self._values:
            self._values[proxy.node] = self._compute(kind, target, args, kwargs)
        return proxy

    def _trace_through(self, fn: Any, args: tuple, kwargs: dict) -> Proxy | None:
        """Trace the body of a library function fx keeps as one call (``torch.fx.wrap``) and
        that has no rule, so its ops get theirs; None (its nodes taken out again) where the
        body cannot be traced or does not return one tensor."""
        before = set(self.graph.nodes)
        try:
            out = fn(*args, **kwargs)
        except Exception:  # noqa: BLE001 - the function stays one opaque call
            out = None
        if isinstance(out, Proxy):
            self._through.append(out.node)
            return out
        erase_new_nodes(self.graph, before)
        return None

    def _compute(self, kind: str, target: Any, args: tuple, kwargs: dict) -> Any:
        if kind == "placeholder":
            return self._inputs.get(str(target).lstrip("*"), _UNKNOWN)
        if kind == "get_attr":
            obj: Any = self.root
            with _unpatched():  # fx patches nn.Module.__getattr__ too
                for part in str(target).split("."):
                    obj = getattr(obj, part, _UNKNOWN)
                    if obj is _UNKNOWN:
                        break
            if isinstance(obj, torch.Tensor) and not isinstance(obj, torch.nn.Parameter):
                obj = obj.clone()  # a functional batch norm in training mode writes its stats
            return obj
        flat, spec = pytree.tree_flatten((args, kwargs))
        vals = [self.value_of(a) for a in flat]
        if any(v is _UNKNOWN for v in vals):
            return _UNKNOWN
        a, kw = pytree.tree_unflatten(vals, spec)
        try:
            # fx patches nn.Module.__call__ and wrapped functions while it traces: the value is
            # computed with the real ones
            with torch.no_grad(), _unpatched():
                if kind == "call_function":
                    return target(*a, **kw)
                if kind == "call_method":
                    return getattr(a[0], target)(*a[1:], **kw)
                if kind == "call_module":
                    module = self.root.get_submodule(target)
                    with eval_mode(module):  # a leaf's statistics must not move
                        return module(*a, **kw)
        except Exception:  # noqa: BLE001 - a value we cannot compute only answers nothing
            return _UNKNOWN
        return _UNKNOWN

    def owns_storage_of(self, t: torch.Tensor) -> bool:
        """Whether ``t`` shares memory with a parameter or buffer of the traced model."""
        ptr = t.untyped_storage().data_ptr()
        with _unpatched():
            tensors = [*self.root.parameters(), *self.root.buffers()]
        return any(p.untyped_storage().data_ptr() == ptr for p in tensors)

    def _answer(self, obj: Proxy, why: str) -> Any:
        """The value of ``obj`` for Python control flow; refuses tensor values."""
        value = self.value_of(obj)
        if value is _UNKNOWN:
            raise TraceError(
                f"a traced value is needed as a Python {why} and its value on the example "
                "inputs is unknown"
            )
        if isinstance(value, torch.Tensor):
            raise TraceError(
                f"control flow on tensor values: a tensor is used as a Python {why} "
                "(data-dependent branching is refused; only sizes may be branched on)"
            )
        self._note(why)
        return value

    # -- what Python asks of a proxy -----------------------------------------------------
    def to_bool(self, obj: Proxy) -> bool:
        return bool(self._answer(obj, "bool"))

    def iter(self, obj: Proxy):  # noqa: ANN201 - fx's signature
        value = self.value_of(obj)
        if isinstance(value, torch.Tensor):  # over dim 0: specialised to its size
            self._note("iteration over dim 0")
            n = len(value)
        else:
            n = len(self._answer(obj, "iteration"))
        return iter([obj[i] for i in range(n)])

    def _note(self, why: str) -> None:
        where = _user_line()
        entry = f"{where} ({why})" if where else why
        if entry not in self.specialised:
            self.specialised.append(entry)

    def proxy(self, node: fx.Node) -> Proxy:
        return ConcreteProxy(node, self)


class _Answers:
    """What a proxy answers when Python needs a real number from it."""

    tracer: ConcreteTracer

    def __len__(self) -> int:
        value = self.tracer.value_of(self)
        if isinstance(value, torch.Tensor):
            self.tracer._note("len of a tensor")
            return len(value)
        return len(self.tracer._answer(self, "len"))

    def __int__(self) -> int:
        return int(self.tracer._answer(self, "int"))

    def __index__(self) -> int:
        return operator.index(self.tracer._answer(self, "index"))

    def __float__(self) -> float:
        return float(self.tracer._answer(self, "float"))

    # rounding stays in the graph: it is an op on a size, not a decision
    def __ceil__(self) -> Proxy:
        return self.tracer.create_proxy("call_function", math.ceil, (self,), {})

    def __floor__(self) -> Proxy:
        return self.tracer.create_proxy("call_function", math.floor, (self,), {})

    def __trunc__(self) -> Proxy:
        return self.tracer.create_proxy("call_function", math.trunc, (self,), {})


class ConcreteProxy(_Answers, Proxy):
    def __getattr__(self, k: str) -> Any:
        if k in _STATIC:  # torch.finfo(x.dtype) needs a real dtype; it never depends on sizes
            value = self.tracer.value_of(self)
            if isinstance(value, torch.Tensor):
                return getattr(value, k)
        return ConcreteAttribute(self, k)

    def __setitem__(self, index: Any, value: Any) -> None:
        """``t[index] = value`` (a mask filled region by region, as shifted-window attention
        builds it): recorded as an ``operator.setitem`` node, and done on the carried value
        too, so later size questions and values see the write."""
        tracer = self.tracer
        target = tracer.value_of(self)
        if isinstance(target, torch.Tensor) and tracer.owns_storage_of(target):
            raise TraceError(
                "an in-place write (t[index] = value) into a parameter or buffer of the model "
                "cannot be captured; make it out of place (torch.where, index_put)"
            )
        tracer.create_proxy("call_function", operator.setitem, (self, index, value), {})


_STATIC = frozenset({"dtype", "device", "layout", "is_cuda", "ndim"})


class ConcreteAttribute(_Answers, Attribute):
    pass


def wrapped_without_rule(fn: Any) -> bool:
    """A function fx records as one call only because a library wrapped it (not a torch op,
    an operator or a builtin), and that has no rule: its body is traced instead."""
    from surgeon.rules.registry import has_function_rule

    module = getattr(fn, "__module__", None) or ""
    if not callable(fn) or module.split(".")[0] in _NATIVE or has_function_rule(fn):
        return False
    return inspect.isfunction(fn)


_NATIVE = {"torch", "operator", "builtins", "math", "_operator", "numpy"}


def _bind_inputs(root: torch.nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
    """forward's parameter names -> the example's values (defaults for the rest)."""
    try:
        sig = inspect.signature(root.forward)
        bound = sig.bind_partial(*args, **kwargs)
    except (TypeError, ValueError):
        return {}
    bound.apply_defaults()
    # forward may work in place on its inputs: the user's tensors stay untouched
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in bound.arguments.items()}


def _unpatched() -> contextlib.AbstractContextManager:
    revert = getattr(fx._symbolic_trace, "_maybe_revert_all_patches", None)
    return revert() if revert is not None else contextlib.nullcontext()


def _user_line() -> str:
    """``file:line: code`` of the innermost frame outside torch and surgeon."""
    frame = inspect.currentframe()
    while frame is not None:
        name = frame.f_code.co_filename
        if not name.startswith(_TORCH_DIR) and not name.startswith(_HERE):
            info = inspect.getframeinfo(frame, context=1)
            code = (info.code_context or [""])[0].strip()
            return f"{os.path.basename(name)}:{frame.f_lineno}: {code}"
        frame = frame.f_back
    return ""


class SpecialisingTracer(ConcreteTracer, SurgeonTracer):
    """:class:`SurgeonTracer` whose size queries answer with the example's integers. Buffers
    read in ``forward`` are traced too (``self.position_ids[:, :n]``): sliced by a size this
    tracer answers, a buffer would otherwise become a plain tensor the graph cannot follow."""

    proxy_buffer_attributes = True


def has_wrapped_without_rule(graph: fx.Graph) -> bool:
    return any(n.op == "call_function" and wrapped_without_rule(n.target) for n in graph.nodes)


def traced_specialised(
    model: torch.nn.Module, example_inputs: Any, leaves: list
) -> tuple[fx.Tracer, fx.Graph] | None:
    tracer = SpecialisingTracer(leaves)
    tracer.concrete_setup(model, *as_args(example_inputs))
    try:
        graph = tracer.trace(model, concrete_args=defaults_not_given(model, example_inputs) or None)
    except Exception as exc:  # noqa: BLE001 - the plain graph stands
        log.info("surgeon: tracing through wrapped functions failed: %s", exc)
        return None
    return tracer, graph
