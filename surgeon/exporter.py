"""ONNX export, validated (torch.onnx -> onnx.checker -> onnxruntime parity) and written atomically.

``export(model, example_inputs, path)`` writes ``path`` only when the exported graph passes
``onnx.checker.check_model`` and onnxruntime (CPUExecutionProvider) reproduces PyTorch's outputs
on the example inputs and, with ``dynamic_batch``, on a second batch of another size. The file is
built in a hidden temporary file next to ``path`` and moved into place with ``os.replace``, so a
failure leaves nothing at ``path`` and no temporary file behind.

Exporter choice
---------------
Both torch exporters were tried on the zoo (LeNet-5, VGG-16-BN, ResNet-18/50, MobileNetV2), on
their ``surgeon.slim`` results (``torch.fx`` GraphModules) and on plain fx traces, with a dynamic
batch dimension. Both give the same numbers (onnxruntime within ~1e-6 of PyTorch at batch 1 and
3) and, saved as one file, byte-identical output across runs and processes. The default,
``exporter="auto"``, uses the TorchScript exporter (``dynamo=False``) and falls back to the
dynamo exporter only when TorchScript cannot translate an op:

* TorchScript is several times faster on the small and medium models (measured in
  docs/speed.md), which matters because ``surgeon export`` exports two models and the tests
  export every zoo model twice; it writes one self-contained file and is
  quiet. A batch size the model hard-codes is caught by the parity check at the second batch
  size, with a message that says so. It is deprecated since torch 2.9 (the DeprecationWarning is
  logged at DEBUG) and misses a few ops, e.g. ``adaptive_avg_pool2d`` to a size that does not
  divide the input (VGG-16 on 32x32 images) - that is when ``auto`` switches to dynamo.
* dynamo (``torch.export`` + onnxscript, ``exporter="dynamo"``) translates more ops but is
  slower, logs a lot at INFO, writes a ``.data`` side file unless saved with
  ``external_data=False`` (done here: the side file's name is baked into the model, which breaks
  the atomic rename and byte-identical output), and silently specialises a batch dimension the
  model hard-codes (then the second-batch parity check reports it).

Inputs are fed through a small adapter module, so the exported graph has flat, predictable names:
``input`` (one positional tensor) or ``input_0, input_1, ...`` (several), keyword tensors keep
their keyword names, and outputs are ``output`` (one tensor) or ``output_0, output_1, ...``
(the tensors of the output pytree, in ``torch.utils._pytree`` order).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import _pytree as pytree

from surgeon.capture import eval_mode
from surgeon.cost import as_args
from surgeon.errors import SurgeonExportError, SurgeonInputError
from surgeon.files import check_output_path, publish, temp_sibling
from surgeon.keys import plan_of

__all__ = ["SurgeonExportError", "export"]

logger = logging.getLogger(__name__)

Exporter = Literal["auto", "torchscript", "dynamo"]

_CONSTANT_TYPES = (type(None), bool, int, float, str)
_MIN_OPSET = 7


# --------------------------------------------------------------------------------------------
# Inputs and outputs: a flat, named view of the example inputs and of the model's outputs.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Signature:
    """How flat positional tensors map back onto the model's ``(args, kwargs)``."""

    args: tuple[Any, ...]  # a _Slot is the index of a tensor input, anything else a constant
    kwargs: tuple[tuple[str, Any], ...]
    names: tuple[str, ...]  # ONNX input names, one per tensor
    tensors: tuple[torch.Tensor, ...]


class _Slot(int):
    """Marks a position that is filled with the tensor input of this index."""


def _signature(example_inputs: Any) -> _Signature:
    args, kwargs = as_args(example_inputs)
    tensors: list[torch.Tensor] = []
    names: list[str] = []

    def take(value: Any, name: str, where: str) -> Any:
        if isinstance(value, torch.Tensor):
            tensors.append(value.detach())
            names.append(name)
            return _Slot(len(tensors) - 1)
        if isinstance(value, _CONSTANT_TYPES):
            return value
        raise SurgeonInputError(
            f"example input {where} is a {type(value).__name__}; surgeon.export takes a tensor, "
            "a tuple of tensors or a dict of keyword tensors (None / bool / int / float / str "
            "values are baked into the graph as constants)"
        )

    n_args = sum(isinstance(a, torch.Tensor) for a in args)
    flat_args = tuple(
        take(a, "input" if n_args == 1 else f"input_{i}", f"#{i}") for i, a in enumerate(args)
    )
    flat_kwargs = tuple((k, take(v, str(k), repr(k))) for k, v in kwargs.items())
    if not tensors:
        raise SurgeonInputError(
            "example_inputs holds no tensor; pass the tensor(s) the model's forward takes"
        )
    if len(set(names)) != len(names):
        raise SurgeonInputError(
            f"example input names collide: {names}; rename the keyword inputs that clash"
        )
    return _Signature(flat_args, flat_kwargs, tuple(names), tuple(tensors))


class _FlatAdapter(nn.Module):
    """Calls ``model`` from flat positional tensors and returns a flat tuple of output tensors."""

    def __init__(self, model: nn.Module, signature: _Signature) -> None:
        super().__init__()
        self.model = model
        self._args = signature.args
        self._kwargs = signature.kwargs

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        def fill(value: Any) -> Any:
            return tensors[value] if isinstance(value, _Slot) else value

        args = [fill(a) for a in self._args]
        kwargs = {k: fill(v) for k, v in self._kwargs}
        leaves = pytree.tree_leaves(self.model(*args, **kwargs))
        return tuple(leaf for leaf in leaves if isinstance(leaf, torch.Tensor))


def _other_batch(tensors: Sequence[torch.Tensor]) -> tuple[int, tuple[torch.Tensor, ...]]:
    """Inputs of the same trailing shapes at a batch size that differs from the example's."""
    batch = tensors[0].shape[0]
    new_batch = 3 if batch != 3 else 2
    generator = torch.Generator().manual_seed(1234)
    made = []
    for tensor in tensors:
        shape = (new_batch, *tensor.shape[1:])
        if tensor.is_floating_point():
            fresh = torch.randn(shape, generator=generator, dtype=torch.float32)
            scale = tensor.float().std() if tensor.numel() > 1 else torch.tensor(1.0)
            fresh = fresh * torch.nan_to_num(scale, nan=1.0) + tensor.float().mean()
            made.append(fresh.to(dtype=tensor.dtype, device=tensor.device))
        else:  # ids, masks: reuse the example's rows, so values stay in range
            index = torch.arange(new_batch, device=tensor.device) % batch
            made.append(tensor.index_select(0, index))
    return new_batch, tuple(made)


def _output_names(count: int) -> list[str]:
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


# --------------------------------------------------------------------------------------------
# Export, check, compare.
# --------------------------------------------------------------------------------------------


def _run_torch(adapter: nn.Module, tensors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return tuple(t.detach() for t in adapter(*tensors))


@contextlib.contextmanager
def _captured_output(label: str) -> Iterator[None]:
    """Send what native code and torch's log handlers print to fd 1 / 2 to a DEBUG log record.

    The TorchScript exporter dumps the whole TorchScript graph to stdout from C++ when it fails
    (its ONNX log is always on in torch 2.13), and the dynamo exporter logs one warning per
    missing torchvision op; neither belongs on the caller's terminal, least of all when the
    ``auto`` fallback recovers. Nothing is lost: ``--debug`` / DEBUG logging shows it.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    try:
        saved = [os.dup(1), os.dup(2)]
    except OSError:  # no usable fd 1 / 2 (a daemon): nothing to capture
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            text = sink.read(4000).decode(errors="replace").strip()
            if text:
                logger.debug("%s printed: %s", label, text)


@dataclass(frozen=True)
class _Job:
    """One export in progress: what is exported, on which inputs, to which file, and how."""

    adapter: nn.Module
    signature: _Signature
    expected: tuple[torch.Tensor, ...]  # PyTorch's outputs on the example inputs
    temp: Path
    opset: int | None
    dynamic_batch: bool


def _export_torchscript(job: _Job, common: dict[str, Any]) -> None:
    dynamic_axes = None
    if job.dynamic_batch:
        batch = job.signature.tensors[0].shape[0]
        dynamic_axes = {name: {0: "batch"} for name in common["input_names"]}
        for name, out in zip(common["output_names"], job.expected, strict=True):
            if out.dim() >= 1 and out.shape[0] == batch:
                dynamic_axes[name] = {0: "batch"}
    model: nn.Module = job.adapter
    if any(isinstance(m, torch.jit.ScriptModule) for m in model.modules()):
        # a scripted submodule: torch.onnx cannot trace through it from a Python module
        # ("not part of the active trace"), but it exports the whole model traced first
        model = torch.jit.trace(model, tuple(job.signature.tensors), check_trace=False)
    torch.onnx.export(
        model,
        tuple(job.signature.tensors),
        str(job.temp),
        dynamo=False,
        dynamic_axes=dynamic_axes,
        do_constant_folding=True,
        **common,
    )


def _export_dynamo(job: _Job, common: dict[str, Any]) -> None:
    dynamic_shapes = None
    if job.dynamic_batch:
        dim = torch.export.Dim("batch")
        # one entry per forward parameter; ``*tensors`` is a single (tuple) parameter
        dynamic_shapes = (tuple({0: dim} for _ in common["input_names"]),)
    program = torch.onnx.export(
        job.adapter,
        tuple(job.signature.tensors),
        dynamo=True,
        dynamic_shapes=dynamic_shapes,
        verbose=False,
        **common,
    )
    if program is None:  # pragma: no cover - the dynamo exporter always returns one
        raise SurgeonExportError("the dynamo exporter returned no ONNX program")
    program.save(str(job.temp), external_data=False)


_SDPA = F.scaled_dot_product_attention


def _sdpa_heads_repeated(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """``scaled_dot_product_attention`` without ``enable_gqa``: each key / value head repeated
    for its group of query heads (what ``enable_gqa`` means), which both exporters write."""
    if enable_gqa and key.dim() >= 3 and key.shape[-3] != query.shape[-3]:
        groups = query.shape[-3] // key.shape[-3]

        def repeat(t: torch.Tensor) -> torch.Tensor:
            *batch, heads, n, d = t.shape
            return (
                t.unsqueeze(-3)
                .expand(*batch, heads, groups, n, d)
                .reshape(*batch, heads * groups, n, d)
            )

        key, value = repeat(key), repeat(value)
    return _SDPA(
        query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
        scale=scale,
    )  # fmt: skip


@contextlib.contextmanager
def _gqa_repeated(model: nn.Module) -> Iterator[None]:
    """While exporting: ``F.scaled_dot_product_attention(..., enable_gqa=True)`` (which
    neither exporter translates) as its equivalent with the key / value heads repeated, both
    where a module calls it (Hugging Face's attention) and in fx graphs (slim models); put
    back afterwards."""
    graphs = [
        (m, node)
        for m in model.modules()
        if isinstance(m, torch.fx.GraphModule)
        for node in m.graph.nodes
        if node.op == "call_function" and node.target is _SDPA
    ]
    for _, node in graphs:
        node.target = _sdpa_heads_repeated
    for m in {id(m): m for m, _ in graphs}.values():
        m.recompile()
    F.scaled_dot_product_attention = _sdpa_heads_repeated
    try:
        yield
    finally:
        F.scaled_dot_product_attention = _SDPA
        for _, node in graphs:
            node.target = _SDPA
        for m in {id(m): m for m, _ in graphs}.values():
            m.recompile()


def _export_onnx(job: _Job, exporter: Literal["torchscript", "dynamo"]) -> None:
    """Write ``job.temp`` with one exporter, its prints and warnings sent to DEBUG logs."""
    common = {  # what both exporters are told alike
        "input_names": list(job.signature.names),
        "output_names": _output_names(len(job.expected)),
        "opset_version": job.opset,
    }
    run = _export_torchscript if exporter == "torchscript" else _export_dynamo
    with (
        warnings.catch_warnings(record=True) as caught,
        _captured_output(f"torch.onnx ({exporter})"),
        _gqa_repeated(job.adapter),
    ):
        warnings.simplefilter("always")
        run(job, common)
    for item in caught:
        logger.debug("torch.onnx (%s): %s: %s", exporter, item.category.__name__, item.message)


def _export_checked(
    job: _Job, exporter: Exporter, *, rtol: float, atol: float
) -> tuple[str, float]:
    """Export with the chosen exporter (``auto``: TorchScript, then dynamo), check the file
    and its onnxruntime parity; a TorchScript file that fails the check (a size baked in as a
    constant breaks the second batch) is exported again by dynamo. Returns the exporter used
    and the worst parity difference."""
    order: tuple[Literal["torchscript", "dynamo"], ...] = (
        ("torchscript", "dynamo") if exporter == "auto" else (exporter,)
    )
    failures: list[str] = []
    checked: SurgeonExportError | None = None  # the first file that exported but failed
    for name in order:
        try:
            _export_onnx(job, name)
            _check_opset(job, name)
        except Exception as exc:  # torch.onnx raises many unrelated types
            failures.append(f"{name} exporter: {_first_line(exc)}")
            _warn_next(name, order, exc)
            continue
        try:
            _check_model(job.temp)
            session = _session(job.temp)
            worst = _check_parity(job, session, rtol=rtol, atol=atol)
            del session
        except SurgeonExportError as exc:
            checked = checked or exc
            _warn_next(name, order, exc)
            continue
        return name, worst
    if checked is not None:
        raise checked
    raise SurgeonExportError(
        "torch.onnx could not export the model - "
        + " | ".join(failures)
        + "; rewrite the op it names, or try another opset"
    )


def _check_opset(job: _Job, name: str) -> None:
    """The file has the opset that was asked for (the dynamo exporter silently writes its
    own minimum, 18, for an older one)."""
    if job.opset is None:
        return
    import onnx

    proto = onnx.load(str(job.temp), load_external_data=False)
    written = [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")]
    if written and written[0] != job.opset:
        raise SurgeonExportError(
            f"the {name} exporter wrote opset {written[0]} where opset {job.opset} was asked "
            f"for (it cannot write that opset)"
        )


def max_opset() -> int:
    """The newest ONNX opset the installed onnx package defines."""
    import onnx

    return int(onnx.defs.onnx_opset_version())


def _warn_next(name: str, order: tuple[str, ...], exc: BaseException) -> None:
    if name != order[-1]:
        logger.warning(
            "the %s exporter failed (%s); trying the %s exporter",
            name,
            _first_line(exc, limit=200),
            order[-1],
        )


def _check_model(temp: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(temp), full_check=True)
    except Exception as exc:  # onnx raises ValidationError, InferenceError and friends
        raise SurgeonExportError(
            f"onnx.checker rejected the exported model: {_first_line(exc)}; this is an exporter "
            "bug or an op torch.onnx does not translate faithfully - try another opset"
        ) from exc


def _session(temp: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(temp), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail / InvalidGraph / ...
        if "NOT_IMPLEMENTED" in str(exc) and _uses_float64(temp):
            raise SurgeonExportError(
                "the exported model computes in float64, and onnxruntime's CPU build has no "
                f"float64 kernel for one of its ops ({_first_line(exc, limit=160)}); export a "
                "float32 copy: model.float() with float32 example inputs"
            ) from exc
        raise SurgeonExportError(
            f"onnxruntime could not load the exported model: {_first_line(exc)}; "
            "try another opset or a newer onnxruntime"
        ) from exc


def _uses_float64(path: Path) -> bool:
    """Whether the ONNX file's inputs or initializers are float64 (DOUBLE)."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # unreadable: not the float64 case we can name
        return False
    double = onnx.TensorProto.DOUBLE
    return any(i.type.tensor_type.elem_type == double for i in proto.graph.input) or any(
        t.data_type == double for t in proto.graph.initializer
    )


def _first_line(exc: BaseException, *, limit: int = 400) -> str:
    """The exception's message on one line, cut at ``limit`` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _other_batch_size(signature: _Signature, batch: int) -> bool:
    """Whether ``batch`` is not the example's (the second-batch check)."""
    return batch != signature.tensors[0].shape[0]


def _feed(
    session: Any, signature: _Signature, tensors: Sequence[torch.Tensor]
) -> dict[str, np.ndarray]:
    """The session's inputs by name, from the flat tensors."""
    feed_all = dict(zip(signature.names, tensors, strict=True))
    feed: dict[str, np.ndarray] = {}
    for item in session.get_inputs():
        if item.name not in feed_all:
            raise SurgeonExportError(
                f"the exported model has an input {item.name!r} that the example inputs do not "
                f"provide (they provide {list(signature.names)})"
            )
        feed[item.name] = feed_all[item.name].detach().cpu().numpy()
    return feed


def _run_session(
    session: Any, signature: _Signature, feed: dict[str, np.ndarray], *, batch: int, what: str
) -> list[Any]:
    try:
        return session.run(None, feed)
    except Exception as exc:
        hint = ""
        if _other_batch_size(signature, batch):
            hint = (
                "; the model probably hard-codes its batch size (e.g. a reshape to a constant)"
                " - pass dynamic_batch=False to export a fixed batch size"
            )
        raise SurgeonExportError(
            f"onnxruntime failed to run the exported model on {what} (batch {batch}): "
            f"{_first_line(exc)}{hint}"
        ) from exc


def _output_diff(
    got: np.ndarray, want: np.ndarray, label: str, *, rtol: float, atol: float
) -> float:
    """Max |got - want| of one output; raises when it exceeds the tolerance.

    ``label`` reads ``output 'name' (#i) on <what> (batch b)``.
    """
    a = got.astype(np.float64)
    b = want.astype(np.float64)
    diff = np.abs(a - b)
    both_nan = np.isnan(a) & np.isnan(b)
    diff = np.where(both_nan, 0.0, np.nan_to_num(diff, nan=np.inf))
    scale = float(np.max(np.abs(np.nan_to_num(b, nan=0.0, posinf=0.0, neginf=0.0))))
    allowed = atol + rtol * scale
    bad = diff > allowed
    max_diff = float(diff.max())
    if bad.any():
        where = np.unravel_index(int(np.argmax(diff)), diff.shape)
        raise SurgeonExportError(
            f"onnxruntime disagrees with PyTorch on {label}: max |onnxruntime - torch| = "
            f"{max_diff:.3g} > tolerance {allowed:.3g} (atol={atol:g} + rtol={rtol:g} * "
            f"max|torch|={scale:.3g}); {int(bad.sum())} of {bad.size} elements outside, worst "
            f"at index {tuple(map(int, where))}: onnxruntime {a[where]:.6g}, torch "
            f"{b[where]:.6g}. Nothing was written; loosen rtol/atol if this is float rounding, "
            "else the export is wrong"
        )
    return max_diff


def _compare(
    session: Any,
    signature: _Signature,
    tensors: Sequence[torch.Tensor],
    expected: Sequence[torch.Tensor],
    *,
    batch: int,
    rtol: float,
    atol: float,
    what: str,
) -> float:
    """Run onnxruntime on ``tensors`` and compare with ``expected``; return the worst abs diff."""
    feed = _feed(session, signature, tensors)
    results = _run_session(session, signature, feed, batch=batch, what=what)
    names = [o.name for o in session.get_outputs()]
    if len(results) != len(expected):
        raise SurgeonExportError(
            f"the exported model has {len(results)} outputs but PyTorch returns "
            f"{len(expected)} tensors; return tensors (not Python numbers) from forward"
        )
    worst = 0.0
    for index, (name, got, want_t) in enumerate(zip(names, results, expected, strict=True)):
        want = want_t.detach().cpu().numpy()
        got = np.asarray(got)
        if got.shape != want.shape:
            hint = ""
            if _other_batch_size(signature, batch):
                hint = "; the model probably hard-codes its batch size - pass dynamic_batch=False"
            raise SurgeonExportError(
                f"output {name!r} (#{index}) on {what} (batch {batch}) has shape "
                f"{tuple(got.shape)} in onnxruntime but {tuple(want.shape)} in PyTorch{hint}"
            )
        if got.size == 0:
            continue
        label = f"output {name!r} (#{index}) on {what} (batch {batch})"
        worst = max(worst, _output_diff(got, want, label, rtol=rtol, atol=atol))
    return worst


def _check_parity(job: _Job, session: Any, *, rtol: float, atol: float) -> float:
    """onnxruntime against PyTorch on the example inputs and, with ``dynamic_batch``, on a
    second batch of another size; return the worst abs diff."""
    signature = job.signature
    batch = signature.tensors[0].shape[0]
    tolerance = {"rtol": rtol, "atol": atol}
    worst = _compare(
        session,
        signature,
        signature.tensors,
        job.expected,
        batch=batch,
        what="the example inputs",
        **tolerance,
    )
    if not job.dynamic_batch:
        return worst
    new_batch, other = _other_batch(signature.tensors)
    try:
        other_expected = _run_torch(job.adapter, other)
    except Exception as exc:
        raise SurgeonExportError(
            f"the model fails in PyTorch at batch {new_batch}: {_first_line(exc)}; "
            "it probably hard-codes its batch size - pass dynamic_batch=False"
        ) from exc
    other_worst = _compare(
        session,
        signature,
        other,
        other_expected,
        batch=new_batch,
        what=f"a second batch of {new_batch}",
        **tolerance,
    )
    return max(worst, other_worst)


def _check_arguments(model: Any, opset: Any, rtol: Any, atol: Any, exporter: Any) -> None:
    if not isinstance(model, nn.Module):
        raise SurgeonInputError(
            f"surgeon.export needs a torch.nn.Module, got {type(model).__name__}"
        )
    if opset is not None and (
        isinstance(opset, bool)
        or not isinstance(opset, int)
        or not _MIN_OPSET <= opset <= max_opset()
    ):
        raise SurgeonInputError(
            f"opset must be an int from {_MIN_OPSET} to {max_opset()} (the newest the installed "
            f"onnx defines) or None, got {opset!r}"
        )
    for label, value in (("rtol", rtol), ("atol", atol)):
        if not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
            raise SurgeonInputError(f"{label} must be a finite number >= 0, got {value!r}")
    if exporter not in ("auto", "torchscript", "dynamo"):
        raise SurgeonInputError(
            f"exporter must be 'auto', 'torchscript' or 'dynamo', got {exporter!r}"
        )


def _check_one_batch(signature: _Signature) -> None:
    """``dynamic_batch`` needs every input to share its dim-0 size."""
    sizes = {t.shape[0] if t.dim() else None for t in signature.tensors}
    if len(sizes) != 1 or None in sizes:
        raise SurgeonInputError(
            "dynamic_batch needs every input tensor to have the same size in dim 0, got "
            f"shapes {[tuple(t.shape) for t in signature.tensors]}; pass dynamic_batch=False"
        )


def _specialised(model: nn.Module) -> bool:
    """A slim graph captured with sizes specialised to the example (the plan says where)."""
    plan = plan_of(model)
    return isinstance(model, torch.fx.GraphModule) and bool(plan and plan.get("specialised"))


def _expected_outputs(adapter: nn.Module, signature: _Signature) -> tuple[torch.Tensor, ...]:
    """PyTorch's outputs on the example inputs (what onnxruntime must reproduce)."""
    try:
        expected = _run_torch(adapter, signature.tensors)
    except Exception as exc:
        raise SurgeonExportError(
            f"the model fails in PyTorch on the example inputs: {_first_line(exc)}; "
            "check the input shape"
        ) from exc
    if not expected:
        raise SurgeonExportError("the model returns no tensor; nothing to export")
    return expected


def export(
    model: nn.Module,
    example_inputs: Any,
    path: str | os.PathLike[str],
    *,
    opset: int | None = None,
    dynamic_batch: bool = True,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    exporter: Exporter = "auto",
) -> Path:
    """Export ``model`` to ONNX at ``path`` and prove onnxruntime computes what PyTorch does.

    Args:
        model: the module to export; its train/eval flags are restored afterwards, and nothing
            else about it changes.
        example_inputs: a tensor, a tuple of tensors, or a dict of keyword tensors (None / bool /
            int / float / str values are baked into the graph as constants).
        path: the ``.onnx`` file to write; its folder must exist and be writable. An existing
            file is replaced only once the new one has passed every check.
        opset: ONNX opset version; ``None`` takes the exporter's default.
        dynamic_batch: make dim 0 of every input (and of outputs that carry the batch) dynamic,
            and check parity at a second batch size (3, or 2 when the example batch is 3). A
            slim graph specialised to its example's sizes is exported with a fixed batch.
        rtol, atol: parity tolerance, per output tensor:
            ``max |ort - torch| <= atol + rtol * max |torch|``. The relative part is scaled by the
            output's largest magnitude rather than element-wise (numpy ``allclose``): fp32 sums
            reordered by onnxruntime differ from PyTorch by ~1e-6 of the output range, which an
            element-wise rtol rejects on every near-zero logit of a deep net (ResNet-50: 4.6e-5
            on outputs up to 84, while PyTorch fp32 itself is 4.1e-5 away from fp64).
        exporter: ``"auto"`` (TorchScript, then dynamo if TorchScript cannot translate an op;
            see the module docstring), ``"torchscript"`` or ``"dynamo"``.

    Returns:
        The absolute path of the written file.

    Raises:
        SurgeonInputError: an argument is invalid.
        SurgeonExportError: the folder is unusable, the export or the checker failed, or
            onnxruntime disagrees with PyTorch (the message names the output, the max abs
            difference and the tolerance). Nothing is left at ``path`` in that case.
    """
    _check_arguments(model, opset, rtol, atol, exporter)
    target = check_output_path(path, what="ONNX file")
    signature = _signature(example_inputs)
    if dynamic_batch and _specialised(model):
        logger.warning(
            "%s is a graph specialised to its example inputs' sizes (batch included): exported "
            "with a fixed batch size",
            type(model).__name__,
        )
        dynamic_batch = False
    if dynamic_batch:
        _check_one_batch(signature)

    adapter = _FlatAdapter(model, signature)
    started = time.perf_counter()
    # The adapter (and through it the model) is put in eval mode as a whole: the TorchScript
    # exporter restores the *adapter's* flag recursively when it is done.
    with eval_mode(adapter), temp_sibling(target, what="ONNX file") as temp:
        expected = _expected_outputs(adapter, signature)
        job = _Job(adapter, signature, expected, temp, opset, dynamic_batch)
        used, worst = _export_checked(job, exporter, rtol=rtol, atol=atol)
        publish(temp, target, what="ONNX file")
    logger.info(
        "exported %s to %s in %.2fs (%s exporter); onnxruntime parity max abs diff %.3g",
        type(model).__name__,
        target,
        time.perf_counter() - started,
        used,
        worst,
    )
    return target
