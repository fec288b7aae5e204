"""``slim_onnx``: an ONNX file in, a slim ONNX file out, checked against the original file.

:func:`load_onnx` imports the file (:mod:`surgeon.onnxin.importer`) and checks at once that the
imported graph computes what onnxruntime computes on the original file. The graph is slimmed by
:func:`surgeon.slim` like any model (criteria, targets, rounding, compensation); an op the
importer kept opaque is a leaf with no rule, so the groups it touches are blocked with its op
type and node name. :func:`write_slim_onnx` exports the slim graph under the original's input
and output names, dynamic dims and opset (where the TorchScript exporter writes that opset), with
what was removed in the file's metadata, and checks it in onnxruntime against the slim graph; a
slim graph that removed nothing is also checked against the original file. A failure writes
nothing.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from surgeon import keys
from surgeon.errors import SurgeonExportError, SurgeonInputError
from surgeon.keys import SOURCE_KEY
from surgeon.onnxin.importer import Importer, OnnxImport
from surgeon.onnxin.opaque import OnnxOp

__all__ = ["OnnxSource", "OnnxSlim", "load_onnx", "write_slim_onnx", "slim_onnx", "SOURCE_KEY"]

_TOLERANCE = {
    torch.float32: (1e-4, 1e-5),
    torch.float64: (1e-6, 1e-8),
    torch.float16: (1e-2, 1e-3),
    torch.bfloat16: (3e-2, 1e-2),
}


@dataclass
class OnnxSource:
    """An ONNX file as surgeon read it: the graph, the example it ran, and what the slim file
    keeps of it (names, free dims, opset)."""

    path: Path
    module: nn.Module
    example: tuple[torch.Tensor, ...]
    input_names: list[str]
    output_names: list[str]
    free_dims: dict[str, dict[int, str]]  # input / output name -> {dim: its name}
    opset: int
    producer: str
    opaque: list[str] = field(default_factory=list)
    import_diff: float = 0.0
    input_infos: list[bytes] = field(
        default_factory=list
    )  # the file's inputs, serialised  # imported graph vs the file: worst max |diff| / max |output|


@dataclass
class OnnxSlim:
    """What :func:`slim_onnx` made: the slim graph, the file and the checks."""

    source: OnnxSource
    model: nn.Module
    path: Path
    opset: int
    diff: float  # slim file vs slim graph: worst max |diff| / max |output|
    original_diff: float | None  # slim file vs original file (ratio 0), the same measure
    macs: tuple[int, int]
    params: tuple[int, int]
    diagnosis: str | None = None  # why little was pruned, where little was

    @property
    def mac_drop(self) -> float:
        return self.macs[0] / max(self.macs[1], 1)


def _dims(t: onnx.ValueInfoProto) -> list[int | str | None]:
    out: list[int | str | None] = []
    for d in t.type.tensor_type.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            out.append(int(d.dim_value))
        else:
            out.append(d.dim_param or None)
    return out


def _np_dtype(t: onnx.ValueInfoProto) -> np.dtype:
    return onnx.helper.tensor_dtype_to_np_dtype(t.type.tensor_type.elem_type)


def example_from_graph(
    proto: onnx.ModelProto,
    input_shape: Iterable[int] | None = None,
    *,
    batch: int = 2,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """An example input per graph input, from its declared shape: a free first dim is the
    batch (``batch``: 2, since at 1 a size-1 batch is not told from a dim that is always 1,
    and a size read from it could end up as a constant); any other free dim needs
    ``input_shape`` (for a file with one input). Integer inputs (token ids, masks) are ones."""
    inits = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    given = tuple(input_shape) if input_shape is not None else None
    if given is not None and len(inputs) != 1:
        raise SurgeonInputError(
            f"--input-shape gives one shape; the ONNX file has {len(inputs)} inputs "
            f"({', '.join(i.name for i in inputs)}): pass example_inputs for each in Python"
        )
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for inp in inputs:
        dims = _dims(inp)
        if given is not None:
            if len(given) != len(dims) or any(
                isinstance(d, int) and d != s for d, s in zip(dims, given, strict=False)
            ):
                raise SurgeonInputError(
                    f"--input-shape {','.join(map(str, given))} does not fit input {inp.name!r} "
                    f"of the ONNX file, declared {_show(dims)}"
                )
            shape = list(given)
        else:
            shape = []
            for i, d in enumerate(dims):
                if isinstance(d, int):
                    shape.append(d)
                elif i == 0:
                    shape.append(batch)
                elif len(inputs) > 1:
                    raise SurgeonInputError(
                        f"input {inp.name!r} of the ONNX file has a free dim {i} "
                        f"({d or 'unnamed'}; declared {_show(dims)}) and the file has "
                        f"{len(inputs)} inputs ({', '.join(v.name for v in inputs)}): give "
                        "example_inputs= (a tuple in that order, or a dict by name) in Python; "
                        "the command line's --input-shape gives the shape of a single input"
                    )
                else:
                    raise SurgeonInputError(
                        f"input {inp.name!r} of the ONNX file has a free dim {i} "
                        f"({d or 'unnamed'}; declared {_show(dims)}): give its size, e.g. "
                        f"--input-shape {_suggest(dims)} (example_inputs= in Python)"
                    )
        dtype = _np_dtype(inp)
        if dtype.kind == "f":
            t = torch.randn(shape, generator=g).to(torch.from_numpy(np.zeros(0, dtype)).dtype)
        elif dtype.kind == "b":
            t = torch.ones(shape, dtype=torch.bool)
        else:
            t = torch.ones(shape, dtype=torch.from_numpy(np.zeros(0, dtype)).dtype)
        out[inp.name] = t
    return out


def _show(dims: list[Any]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def _suggest(dims: list[Any]) -> str:
    free = "224" if len(dims) == 4 else "16"  # an image side, else a length
    return ",".join(
        str(d) if isinstance(d, int) else ("2" if i == 0 else free) for i, d in enumerate(dims)
    )


def _read(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise SurgeonInputError(f"no ONNX file at {str(path)!r}")
    try:
        proto = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - any parse failure is a bad input file
        raise SurgeonInputError(f"{str(path)!r} is not a readable ONNX file: {exc}") from exc
    if proto.graph.ByteSize() == 0 or not proto.graph.output:
        raise SurgeonInputError(f"{str(path)!r} holds no ONNX graph with outputs")
    return proto


def _session(model: onnx.ModelProto | str | bytes) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # a probe that fails is reported by surgeon, not logged
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _ort_outputs(
    session: Any, names: list[str], example: tuple[torch.Tensor, ...], what: str = ""
) -> list[np.ndarray]:
    feed = {n: t.detach().cpu().numpy() for n, t in zip(names, example, strict=True)}
    try:
        return session.run(None, feed)
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own errors, said as surgeon's
        shapes = ", ".join(f"{n} {tuple(t.shape)}" for n, t in zip(names, example, strict=True))
        raise SurgeonExportError(
            f"{what or 'onnxruntime'}: onnxruntime cannot run the file on {shapes} "
            f"({str(exc).splitlines()[0][:300]}); nothing was written"
        ) from exc


def _torch_outputs(module: nn.Module, example: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    with torch.no_grad():
        out = module(*example)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return [o.detach().cpu().numpy() for o in outs]


def _diff(
    got: list[np.ndarray],
    want: list[np.ndarray],
    names: list[str],
    what: str,
    rtol: float | None = None,
) -> float:
    """Worst ``max |got - want| / max |want|`` over the outputs (relative: an untrained
    network's outputs can be tiny); raises :class:`SurgeonExportError` where
    it exceeds ``atol + rtol * max |want|`` (:func:`surgeon.export`'s tolerance for float32;
    ``rtol`` given: that rtol, atol a tenth of it)."""
    worst = 0.0
    for name, g, w in zip(names, got, want, strict=True):
        if g.shape != w.shape:
            raise SurgeonExportError(f"{what}: output {name!r} has shape {g.shape}, not {w.shape}")
        if w.dtype.kind not in "fc":
            if not np.array_equal(g, w):
                raise SurgeonExportError(f"{what}: output {name!r} differs ({w.dtype} values)")
            continue
        r, atol = _TOLERANCE.get(torch.from_numpy(np.zeros(0, w.dtype)).dtype, (1e-4, 1e-5))
        if rtol is not None:
            r, atol = max(r, rtol), max(atol, rtol / 10)
        scale = float(np.abs(w).max()) if w.size else 0.0
        d = float(np.abs(g.astype(np.float64) - w.astype(np.float64)).max()) if w.size else 0.0
        allowed = atol + r * scale
        if not d <= allowed:
            raise SurgeonExportError(
                f"{what}: output {name!r} differs by {d:.3g} > {allowed:.3g} "
                f"(atol={atol:g} + rtol={r:g} * max |{name}| {scale:.3g}); nothing was written. "
                "Where this is float rounding (onnxruntime's fused kernels on a sensitive "
                "output), give a larger rtol"
            )
        worst = max(worst, d / scale if scale > 0 else d)
    return worst


def load_onnx(
    src: str | os.PathLike[str],
    example_inputs: Any = None,
    *,
    input_shape: Iterable[int] | None = None,
    rtol: float | None = None,
) -> OnnxSource:
    """Import the ONNX file ``src`` as a ``torch.fx.GraphModule`` and check it against
    onnxruntime on the file. ``example_inputs``: a tensor, a tuple in the file's input order
    or a dict by input name; else made from the declared shapes (``input_shape`` for a free
    dim other than the batch)."""
    path = Path(src).expanduser()
    proto = _read(path)
    inits = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    names = [i.name for i in inputs]
    example = _examples(proto, names, example_inputs, input_shape, path)
    imported: OnnxImport = Importer(proto, example).run()
    module = imported.module
    args = tuple(example[n] for n in names)
    session = _session(str(path))
    output_names = [o.name for o in proto.graph.output]
    diff = _diff(
        _torch_outputs(module, args),
        _ort_outputs(session, names, args),
        output_names,
        f"the graph imported from {path.name} does not compute what onnxruntime computes on "
        "the file (an importer defect: please report it with the file)",
        rtol,
    )
    free = {
        v.name: {
            i: (d if isinstance(d, str) else f"{v.name}_dim{i}")
            for i, d in enumerate(_dims(v))
            if not isinstance(d, int)
        }
        for v in [*inputs, *proto.graph.output]
    }
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 17)
    source = OnnxSource(
        path, module, args, names, output_names, {k: v for k, v in free.items() if v}, opset,
        f"{proto.producer_name} {proto.producer_version}".strip(), imported.opaque, diff,
    )  # fmt: skip
    source.input_infos = [v.SerializeToString() for v in inputs]
    module.meta[SOURCE_KEY] = source
    return source


def _examples(
    proto: onnx.ModelProto, names: list[str], example_inputs: Any, input_shape: Any, path: Path
) -> dict[str, torch.Tensor]:
    if example_inputs is None:
        made = example_from_graph(proto, input_shape)
        if not _runs(str(path), names, tuple(made[n] for n in names)):
            made = example_from_graph(proto, input_shape, batch=1)  # a batch free in name only
        return made
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if isinstance(example_inputs, dict):
        missing = [n for n in names if n not in example_inputs]
        if missing:
            raise SurgeonInputError(f"example_inputs lacks the ONNX inputs {missing}")
        return {n: example_inputs[n] for n in names}
    values = tuple(example_inputs)
    if len(values) != len(names):
        raise SurgeonInputError(
            f"the ONNX file takes {len(names)} inputs ({', '.join(names)}); example_inputs "
            f"gives {len(values)}"
        )
    return dict(zip(names, values, strict=True))


def _opset_for(source: OnnxSource) -> int:
    """The original's opset, within what the TorchScript exporter writes (9 to 20; a file
    above 20 is taken on by :func:`_up_to`)."""
    from surgeon.exporter import max_opset

    return max(min(source.opset, max_opset(), 20), 9)


def write_slim_onnx(
    source: OnnxSource,
    slim: nn.Module,
    dst: str | os.PathLike[str],
    *,
    metadata: dict[str, Any] | None = None,
    opset: int | None = None,
    against_original: bool | None = None,
    rtol: float | None = None,
) -> tuple[int, float, float | None]:
    """Export ``slim`` (the slim graph of ``source``) to ``dst`` with the original's names,
    free dims and opset, check it, and write it atomically. Returns (opset written, worst
    diff against the slim graph, worst diff against the original file or None). The slim file
    is checked against the original file too where ``against_original`` (ratio 0: only what
    is exactly dead went) or, when None, where no weight changed shape."""
    from surgeon.files import check_output_path, write_bytes_atomic

    out = check_output_path(dst, what="ONNX file")
    opset = opset or _opset_for(source)
    # exported under placeholder names (the TorchScript exporter refuses some, e.g. "495"),
    # then renamed to the original's
    ins = [f"surgeon_in_{i}" for i in range(len(source.input_names))]
    outs = [f"surgeon_out_{i}" for i in range(len(source.output_names))]
    temp_names = dict(zip([*source.input_names, *source.output_names], [*ins, *outs], strict=True))
    dynamic = {temp_names[n]: d for n, d in source.free_dims.items() if n in temp_names}
    with tempfile.TemporaryDirectory(prefix="surgeon-onnx-") as tmp:
        temp = Path(tmp) / "slim.onnx"
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    slim.eval(), source.example, str(temp), input_names=ins,
                    output_names=outs, dynamic_axes=dynamic or None,
                    opset_version=opset, dynamo=False, do_constant_folding=True,
                )  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - any exporter failure is reported as one
            raise SurgeonExportError(
                f"the slim graph of {source.path.name} could not be exported at opset {opset}: "
                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            ) from exc
        proto = onnx.load(str(temp))
        _rename(proto, {v: k for k, v in temp_names.items()})
        opset, proto = _up_to(proto, opset, source.opset)
        try:
            onnx.checker.check_model(proto)
        except onnx.checker.ValidationError as exc:
            raise SurgeonExportError(f"the slim file fails onnx.checker: {exc}") from exc
        for key, value in (metadata or {}).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
        _inputs_kept(proto, source)
        data = proto.SerializeToString()
        session = _session(data)
        what = "the slim ONNX file does not compute what the slim graph computes"
        diff = _diff(
            _ort_outputs(session, source.input_names, source.example, what),
            _torch_outputs(slim, source.example),
            source.output_names,
            what,
            rtol,
        )
        other = _other_sizes(source)
        if other is not None:
            shapes = " x ".join(str(tuple(t.shape)) for t in other)
            what = (
                f"at other sizes ({shapes}), the slim ONNX file does not compute what the slim "
                "graph computes (a size the example fixed?)"
            )
            diff = max(diff, _diff(
                _ort_outputs(session, source.input_names, other, what),
                _torch_outputs(slim, other),
                source.output_names,
                what,
                rtol,
            ))  # fmt: skip
        original_diff = None
        if against_original or (against_original is None and _same_widths(source.module, slim)):
            what = "nothing was removed, yet the slim file does not compute what the original file computes"
            original_diff = _diff(
                _ort_outputs(session, source.input_names, source.example, what),
                _ort_outputs(_session(str(source.path)), source.input_names, source.example),
                source.output_names,
                what,
                rtol,
            )
        write_bytes_atomic(out, data, what="ONNX file")
    return opset, diff, original_diff


def _up_to(proto: onnx.ModelProto, written: int, wanted: int) -> tuple[int, onnx.ModelProto]:
    """The file at the original's opset where the TorchScript exporter stopped below it (it
    writes up to 20): onnx's version converter takes it the rest of the way, checked like any
    file after; where it cannot, the file stays at the opset written."""
    if wanted <= written:
        return written, proto
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(proto, wanted)
        onnx.checker.check_model(converted)
    except Exception:  # noqa: BLE001 - no adapter for an op: the written opset stands
        return written, proto
    return wanted, converted


def _rename(proto: onnx.ModelProto, names: dict[str, str]) -> None:
    """Rename values of ``proto`` (old -> new) everywhere; a value that already holds a new
    name is moved aside first."""
    g = proto.graph
    taken = (
        {o for n in g.node for o in n.output}
        | {i.name for i in g.input}
        | {i.name for i in g.initializer}
    )
    moves = {}
    for new in names.values():
        if new in taken and new not in names:
            moves[new] = f"{new}__surgeon"
    moves.update(names)

    def swap(name: str) -> str:
        return moves.get(name, name)

    for n in g.node:
        n.input[:] = [swap(i) for i in n.input]
        n.output[:] = [swap(o) for o in n.output]
    for coll in (g.input, g.output, g.value_info):
        for v in coll:
            v.name = swap(v.name)
    for t in g.initializer:
        t.name = swap(t.name)


def _other_sizes(source: OnnxSource) -> tuple[torch.Tensor, ...] | None:
    """The example at other sizes, where the file leaves dims free: the batch one larger and
    every other free dim twice as long (else as it is), when the original file runs on them;
    None when nothing is free or the original does not run at another size."""
    free = [source.free_dims.get(n, {}) for n in source.input_names]
    if not any(free):
        return None
    g = torch.Generator().manual_seed(1)
    for stretch in (2, 1):
        out = []
        for t, dims in zip(source.example, free, strict=True):
            shape = [
                (s + 1 if d == 0 else s * stretch) if d in dims else s
                for d, s in enumerate(t.shape)
            ]
            if t.is_floating_point():
                out.append(torch.randn(shape, generator=g).to(t.dtype))
            else:
                out.append(torch.ones(shape, dtype=t.dtype))
        other = tuple(out)
        if any(a.shape != b.shape for a, b in zip(other, source.example, strict=True)) and _runs(
            str(source.path), source.input_names, other
        ):
            return other
    return None  # the file's dims are free in name only


def _inputs_kept(proto: onnx.ModelProto, source: OnnxSource) -> None:
    """An input of the original file its graph never reads is dropped by the exporter: put
    it back, as the original declares it, so the slim file takes the same inputs."""
    have = {i.name for i in proto.graph.input}
    for raw in source.input_infos:
        info = onnx.ValueInfoProto.FromString(raw)
        if info.name not in have:
            proto.graph.input.append(info)
    order = {n: k for k, n in enumerate(source.input_names)}
    inputs = sorted(proto.graph.input, key=lambda v: order.get(v.name, len(order)))
    del proto.graph.input[:]
    proto.graph.input.extend(inputs)


def _runs(path: str, names: list[str], example: tuple[torch.Tensor, ...]) -> bool:
    try:
        _ort_outputs(_session(path), names, example)
    except Exception:  # noqa: BLE001 - onnxruntime's own errors: the file cannot take it
        return False
    return True


def _same_widths(original: nn.Module, slim: nn.Module) -> bool:
    a = {k: tuple(v.shape) for k, v in original.state_dict().items()}
    b = {k: tuple(v.shape) for k, v in slim.state_dict().items()}
    return a == b


_SETTINGS = ("ratio", "target", "importance", "scope", "round_to", "structures", "data")


def removed_record(
    source: OnnxSource, slim: nn.Module, settings: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What the metadata of the slim file records: the source, the settings (the ratio or
    target, the criterion, ... from ``settings``, a :meth:`SlimOptions.to_record`), every
    weight whose shape changed (name: before -> after) and the ops kept as they are."""
    before = {k: list(v.shape) for k, v in source.module.state_dict().items()}
    after = {k: list(v.shape) for k, v in slim.state_dict().items()}
    changed = {k: [before[k], after.get(k)] for k in before if before[k] != after.get(k)}
    return {
        keys.ONNX_FILE_KEY: source.path.name,
        keys.ONNX_PRODUCER_KEY: source.producer,
        keys.ONNX_SETTINGS_KEY: {k: v for k, v in (settings or {}).items() if k in _SETTINGS},
        keys.ONNX_REMOVED_KEY: changed,
        keys.ONNX_OPAQUE_KEY: source.opaque,
    }


def slim_onnx(
    src: str | os.PathLike[str],
    ratio: Any,
    dst: str | os.PathLike[str],
    *,
    example_inputs: Any = None,
    input_shape: Iterable[int] | None = None,
    rtol: float | None = None,
    **settings: Any,
) -> OnnxSlim:
    """Slim the ONNX file ``src`` and write the slim file ``dst``.

    ``ratio`` is what :func:`surgeon.slim` takes (a ratio, a :class:`~surgeon.Target` or
    :class:`~surgeon.SlimOptions`); ``settings`` are its keyword settings (``importance``,
    ``round_to``, ``data``, ...). The file is imported and checked against onnxruntime, slimmed,
    exported with its input and output names, free dims and opset, and checked again (against
    the slim graph, and against the original file at ratio 0 or when nothing was removed);
    ``rtol`` loosens those checks (default: :func:`surgeon.export`'s, 1e-4 of each output's
    largest magnitude in float32). Returns an
    :class:`OnnxSlim`; on any failure nothing is written at ``dst``."""
    import surgeon
    from surgeon.api import options_from
    from surgeon.cost import count_macs, count_params

    source = load_onnx(src, example_inputs, input_shape=input_shape, rtol=rtol)
    options = options_from(ratio, settings)
    options = options.replace(leaf_modules=(*options.leaf_modules, OnnxOp))
    slim = surgeon.slim(source.module, options, source.example)
    zero = options.target is None and options.ratio == 0.0
    opset, diff, original_diff = write_slim_onnx(
        source,
        slim,
        dst,
        metadata=removed_record(source, slim, options.to_record()),
        against_original=zero or None,
        rtol=rtol,
    )
    macs = (count_macs(source.module, source.example), count_macs(slim, source.example))
    params = (count_params(source.module), count_params(slim))
    return OnnxSlim(
        source, slim, Path(dst), opset, diff, original_diff, macs, params, _diagnosis(slim)
    )


def _diagnosis(slim: nn.Module) -> str | None:
    """The pipeline's little-was-pruned finding as one line: the figures and the reasons."""
    from surgeon.keys import DIAGNOSIS_KEY

    found = getattr(slim, "meta", {}).get(DIAGNOSIS_KEY)
    if not found:
        return None
    reasons = "; ".join(
        f"{r['reason']} ({r['groups']} groups, first: {r['first']})" for r in found["top_blocked"]
    )
    return (
        f"little was pruned: MACs dropped {found['mac_drop']:.2f}x where the ratio gives "
        f"{found['expected']:.1f}x on free groups ({found['prunable_groups']} of "
        f"{found['groups']} groups prunable); blocked: {reasons or 'nothing'}"
    )
