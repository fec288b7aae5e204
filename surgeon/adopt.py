"""The user's own model back: the slim graph's cuts applied to the user's modules, verified.

``slim`` decides and resizes on a traced ``GraphModule``. Users want their own model back —
the same class, methods, attributes and state-dict names (``model.fc``, ``generate``,
``reset_classifier``, checkpoint code). :func:`adopt` gives it to them when it is *provably*
the same function:

1. every parameter and buffer of the model takes the graph's tensor at the same qualified
   name (tied tensors stay tied: every name of an old tensor gets the one new tensor);
2. modules the graph traced through (rather than called) get their size attributes from their
   new tensors (``in_channels`` / ``out_channels`` / ``groups``, ``in_features`` /
   ``out_features``, ``num_features``, ``normalized_shape``, ``num_channels``,
   ``embedding_dim``);
3. a literal size the resize rewrote in the graph (``reshape(B, N, 3, 6, 64)`` -> ``3, 4,
   64``) is looked up among the int attributes of the module whose code made it
   (``self.num_heads``), which take the new value;
4. then the model's own ``forward`` runs on the example inputs and must give the graph's
   outputs (same structure and shapes, to 1e-5 of their scale), else the graph form is kept
   and the reason is given.
"""

from __future__ import annotations

import itertools
import logging
import warnings
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch.utils import _pytree as pytree

from surgeon.capture import Captured, as_args, check_trace, eval_mode
from surgeon.capture.inputs import spec_shapes
from surgeon.capture.keywords import capture_defaults
from surgeon.errors import SurgeonFixedSizeError, SurgeonPassError
from surgeon.keys import PLAN_KEY
from surgeon.options import SlimOptions

__all__ = ["adopt", "returned_form", "with_config", "differs", "int_args", "MODULE_TOLERANCE"]

log = logging.getLogger(__name__)

MODULE_TOLERANCE = 1e-5  # of the output's largest magnitude


def int_args(gm: fx.GraphModule) -> dict[str, list[Any]]:
    """Per node, the flattened args and kwargs (to diff literal sizes before / after resize)."""
    out = {}
    for node in gm.graph.nodes:
        if node.op in ("call_function", "call_method"):
            out[node.name] = pytree.tree_leaves((node.args, node.kwargs))
    return out


def adopt(
    work: nn.Module,
    gm: fx.GraphModule,
    example_inputs: Any,
    before: dict[str, list[Any]],
    want: Any = None,
) -> tuple[nn.Module | None, str, list[str]]:
    """Apply ``gm``'s tensors and sizes to ``work`` (the model ``gm`` was traced from, whose
    called submodules ``gm`` shares) and check it computes what ``gm`` computes (``want``:
    ``gm``'s output on the example, when a run already gave it).

    Returns ``(work, "", changes)`` when it does, else ``(None, reason, changes)``; ``changes``
    lists the int attributes that took new values. ``work`` is changed either way.
    """
    _take_tensors(work, gm)
    ours = {id(m) for m in gm.modules()}
    for module in work.modules():
        if id(module) not in ours:
            _sync_sizes(module)
    changes = _take_ints(work, gm, before)
    try:
        why = differs(work, gm, example_inputs, want)
    except Exception as exc:  # noqa: BLE001 - any failure of the user's forward is a reason
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        return None, f"its forward fails once resized ({type(exc).__name__}: {first})", changes
    return (None if why else work), why, changes


def _take_tensors(work: nn.Module, gm: fx.GraphModule) -> None:
    theirs = dict(
        itertools.chain(
            gm.named_parameters(remove_duplicate=False), gm.named_buffers(remove_duplicate=False)
        )
    )
    mine = list(
        itertools.chain(
            work.named_parameters(remove_duplicate=False),
            work.named_buffers(remove_duplicate=False),
        )
    )
    new_for: dict[int, torch.Tensor] = {}
    for name, t in mine:
        new = theirs.get(name)
        if new is not None and new is not t:
            new_for[id(t)] = new
    for name, t in mine:
        new = new_for.get(id(t))
        if new is None:
            continue
        owner, _, attr = name.rpartition(".")
        module = work.get_submodule(owner)
        if attr in module._parameters:
            if not isinstance(new, nn.Parameter):
                new = nn.Parameter(new, requires_grad=t.requires_grad)
            module._parameters[attr] = new
        else:
            module._buffers[attr] = new


def _sync_sizes(m: nn.Module) -> None:
    """Size attributes of a standard module (or a subclass) from its tensors' shapes."""
    if isinstance(m, nn.modules.conv._ConvNd) and m.weight is not None:
        w = m.weight
        out_dim, in_dim = (1, 0) if m.transposed else (0, 1)
        per_in = m.in_channels // m.groups if not m.transposed else None
        if not m.transposed and w.shape[in_dim] == per_in:
            per_out = m.out_channels // m.groups
            m.groups = max(1, w.shape[out_dim] // per_out)
        if m.transposed:
            m.in_channels = w.shape[0]
            m.out_channels = w.shape[1] * m.groups
        else:
            m.out_channels = w.shape[0]
            m.in_channels = w.shape[1] * m.groups
    elif isinstance(m, nn.Linear):
        m.out_features, m.in_features = m.weight.shape
    elif isinstance(m, nn.modules.batchnorm._NormBase):
        ref = m.weight if m.weight is not None else m.running_mean
        if ref is not None:
            m.num_features = ref.shape[0]
    elif isinstance(m, nn.LayerNorm) and m.weight is not None:
        m.normalized_shape = tuple(m.weight.shape)
    elif isinstance(m, nn.GroupNorm) and m.weight is not None:
        m.num_channels = m.weight.shape[0]
    elif isinstance(m, nn.Embedding):
        m.num_embeddings, m.embedding_dim = m.weight.shape
    elif isinstance(m, nn.MultiheadAttention) and m._qkv_same_embed_dim:
        m.embed_dim = m.kdim = m.vdim = m.in_proj_weight.shape[1]
        m.num_heads = max(1, m.in_proj_weight.shape[0] // 3 // m.head_dim)


def _take_ints(work: nn.Module, gm: fx.GraphModule, before: dict[str, list[Any]]) -> list[str]:
    """Literal sizes the resize rewrote, found among the int attributes of the module whose
    code made them, take the new value there. Returns ``"path.attr: old -> new"`` lines."""
    changed: dict[tuple[str, int], int] = {}
    for node in gm.graph.nodes:
        old = before.get(node.name)
        if old is None or node.op not in ("call_function", "call_method"):
            continue
        new = pytree.tree_leaves((node.args, node.kwargs))
        stack = node.meta.get("nn_module_stack") or {}
        if len(new) != len(old):
            continue
        path = list(stack.values())[-1][0] if stack else ""  # "": the model's own forward
        for a, b in zip(old, new, strict=True):
            if _plain_int(a) and _plain_int(b) and a != b:
                changed.setdefault((path, a), b)
    lines = []
    for (path, old), new in changed.items():
        try:
            module = work.get_submodule(path)
        except AttributeError:
            continue
        for attr, value in list(vars(module).items()):
            if not attr.startswith("_") and _plain_int(value) and value == old:
                setattr(module, attr, new)
                lines.append(f"{path}.{attr}: {old} -> {new}")
    return lines


def _plain_int(v: Any) -> bool:
    return type(v) is int


def differs(work: nn.Module, gm: nn.Module, example_inputs: Any, want: Any = None) -> str:
    """'' when ``work`` and ``gm`` (the slim graph, or another module) give the same outputs
    on the example, else why not. ``want``: ``gm``'s outputs (in eval mode, no grad), when
    they are known already."""

    def fresh() -> tuple[tuple, dict]:  # a forward may work in place on its inputs
        return pytree.tree_map(
            lambda v: v.clone() if isinstance(v, torch.Tensor) else v, as_args(example_inputs)
        )

    def call(m: nn.Module) -> list[Any]:
        args, kwargs = fresh()
        if kwargs and not isinstance(m, fx.GraphModule):  # what the graph was captured with
            kwargs.update(capture_defaults(type(m), kwargs))
        return pytree.tree_leaves(m(*args, **kwargs))

    with torch.no_grad(), eval_mode(gm), eval_mode(work):
        want = call(gm) if want is None else pytree.tree_leaves(want)
        got = call(work)
    if len(got) != len(want):  # a ModelOutput and the graph's dict differ in type alone
        return "its forward returns another structure than the slim graph"
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        if not isinstance(b, torch.Tensor):
            if a != b:
                return f"its output {i} differs from the slim graph's ({a!r} vs {b!r})"
            continue
        if not isinstance(a, torch.Tensor) or a.shape != b.shape:
            shape = getattr(a, "shape", type(a).__name__)
            return (
                f"its output {i} has shape {tuple(shape)} where the slim graph has {tuple(b.shape)}"
            )
        if not b.is_floating_point():
            if not torch.equal(a, b):
                return f"its output {i} differs from the slim graph's"
            continue
        scale = float(b.abs().max()) if b.numel() else 0.0
        diff = float((a - b).abs().max()) if b.numel() else 0.0
        if not diff <= MODULE_TOLERANCE * max(scale, 1e-12):
            return (
                f"its output {i} differs from the slim graph's by {diff:.3g} (scale "
                f"{scale:.3g}): its forward sizes something the graph rewrote (a literal size "
                "in its code)"
            )
    return ""


# -- 6-7. verify and adopt ------------------------------------------------------------------
def returned_form(
    model: nn.Module,
    work: nn.Module,
    gm: fx.GraphModule,
    inputs: Any,
    sizes_before: dict[str, list[Any]],
    options: SlimOptions,
    output: Any,
    captured: Captured,
    changed: dict[int, set[int]] | None = None,
) -> nn.Module:
    """The form ``options.returns`` asks for: the user's own model (``work``, its modules cut
    like the graph's, verified by :func:`~surgeon.adopt.adopt` against ``output``, the graph's
    output on the example) or the graph; the plan records which (``form``) and, for a graph in
    ``"auto"``, why (``form_reason``). Before the graph comes back, or ``"module"`` refuses,
    the graph is checked against the model if it has not been. A graph captured at the
    example's sizes is refused under ``"auto"`` (:class:`SurgeonFixedSizeError`), except with
    ``inplace`` (the model is cut already): there, as with ``"graph"``, it comes with a
    warning."""
    record = gm.meta[PLAN_KEY]
    why = "returns='graph' was asked for"
    if options.returns != "graph":
        meta = getattr(work, "meta", None)
        if record.get("blocks"):
            why = (
                f"{len(record['blocks'])} whole block(s) were removed (structures with "
                f"'layers'), and {type(model).__name__}'s own forward still calls them"
            )
        elif meta is not None and not (isinstance(meta, dict) and PLAN_KEY in meta):
            why = f"{type(model).__name__} has an attribute 'meta' of its own"
        else:
            module, why, changes = adopt(work, gm, inputs, sizes_before, output)
            if module is None and changed is not None:
                module = with_config(work, gm, inputs, output, changed)
            if module is not None:
                record.update(form="module", form_reason="", sized=changes)
                module.meta = {k: v for k, v in gm.meta.items() if k.startswith("surgeon.")}
                return module
        if not captured.checked:
            check_trace(model, inputs, captured.output)
        if options.returns == "module":
            raise SurgeonPassError(
                f"returns='module': the slim {type(model).__name__} cannot be given back as its "
                f"own class: {why}; pass returns='auto' (the graph form then) or 'graph'"
            )
        if captured.specialised and not options.inplace:
            raise SurgeonFixedSizeError(
                f"the slim {type(model).__name__} can only come back as a torch.fx.GraphModule "
                f"({why}), and that graph is {_fixed(captured)}; pass returns='graph' to take it "
                "at those sizes, or slim with example inputs of the sizes it will run at"
            )
        log.warning(
            "surgeon: the slim model is a torch.fx.GraphModule, not a %s: %s",
            type(model).__name__,
            why,
        )
    if captured.specialised:
        warnings.warn(f"surgeon: the slim graph is {_fixed(captured)}", stacklevel=2)
    record.update(form="graph", form_reason=why, sized=[])
    return gm


def with_config(
    work: nn.Module, gm: fx.GraphModule, inputs: Any, output: Any, changed: dict[int, set[int]]
) -> nn.Module | None:
    """A forward that reads its config (``x.reshape(b, -1, config.hidden_sizes[-1])``) runs
    only once the config has the slim sizes (``changed``: :func:`changed_counts`): ``work``
    with such a config, when its forward then computes what ``gm`` computes (the plan says
    the config is updated), else None."""
    from surgeon.modelconfig import update_config

    if not hasattr(getattr(work, "config", None), "to_dict"):
        return None
    why = update_config(work, changed, inputs, check=lambda: differs(work, gm, inputs, output))
    if why:
        return None
    gm.meta[PLAN_KEY]["config"] = "updated"
    return work


def _fixed(captured: Captured) -> str:
    """What a graph captured with specialised sizes holds for, and why."""
    shapes = ", ".join("x".join(map(str, s)) for s in spec_shapes(captured.specialised["inputs"]))
    return (
        f"fixed to the example inputs' sizes ({shapes}): the model's "
        f"code branches on sizes (first place: {captured.specialised['where'][0]}), and the "
        "graph keeps what the example's sizes chose, so it may fail or compute something else "
        "at other sizes"
    )
