"""The ``surgeon`` command line: ``surgeon export | inspect | bench``.

Exit codes: 0 on success; 2 for a :class:`~surgeon.errors.SurgeonError` or bad command-line
input, reported as ONE line ``error: ...`` on stderr; 1 for an unexpected exception (one line,
with a hint to rerun with ``--debug`` for the traceback); 130 when interrupted (Ctrl-C), with
the one line ``interrupted; nothing was written``. Tables and progress go to stdout (to stderr
with ``export --json``, whose stdout is the report alone); stderr carries only the error line
(and, with ``--debug``, logs and tracebacks). No command leaves a partial file behind: outputs
are written to temporary files and moved into place once complete, and a command that fails
or is interrupted after writing some of its outputs removes them.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import importlib
import importlib.util
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from surgeon.errors import SurgeonError, SurgeonInputError

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from surgeon.benchmark import BenchResult
    from surgeon.options import SlimOptions
    from surgeon.report import Report

__all__ = ["app", "main", "load_model", "parse_shape"]

logger = logging.getLogger(__name__)

console = Console(soft_wrap=True)
err_console = Console(stderr=True)

app = typer.Typer(
    name="surgeon",
    help="Structured pruning that physically removes channels, with ONNX export and "
    "onnxruntime parity and latency.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # click's plain help: it wraps option help at the terminal's width (80 columns at most)
    # where Rich's four-column panels truncate it at 80
    rich_markup_mode=None,
)

INTERRUPTED = "interrupted; nothing was written"

_DEBUG = {"on": False}
_HANDLER: list[logging.Handler] = []  # the log handler this CLI installed, at most one


class Scope(str, Enum):
    """Where the pruning ratio applies."""

    local = "local"
    global_ = "global"


class Attention(str, Enum):
    """What prunes where a width is split into heads x head_dim."""

    heads = "heads"
    head_dim = "head-dim"


class Grouped(str, Enum):
    """What a grouped (not depthwise) conv loses."""

    auto = "auto"
    offsets = "offsets"
    groups = "groups"


class Device(str, Enum):
    """Where latency is measured (the onnxruntime execution provider)."""

    cpu = "cpu"
    cuda = "cuda"


class BenchDevice(str, Enum):
    """Providers for ``surgeon bench``."""

    cpu = "cpu"
    cuda = "cuda"
    all = "all"


# --------------------------------------------------------------------------------------------
# Model loading.
# --------------------------------------------------------------------------------------------


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,3,224,224"`` -> ``(1, 3, 224, 224)``; a clear error for anything else."""
    parts = [p.strip() for p in text.replace("x", ",").split(",")] if text else []
    if not parts or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise SurgeonInputError(
            f"--input-shape {text!r} is not a comma-separated list of positive ints; "
            "give the full shape with the batch, e.g. --input-shape 1,3,224,224"
        )
    return tuple(int(p) for p in parts)


def _zoo_names() -> str:
    from surgeon.models import ZOO

    return ", ".join(ZOO)


def _spec_name(spec: str) -> str:
    """A short name for a model spec: the zoo name, or the factory's name."""
    return spec.rsplit(":", 1)[1] if ":" in spec else spec


def _import_file(path: Path, spec: str) -> Any:
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
    if folder not in sys.path:  # so the file can import its neighbours
        sys.path.insert(0, folder)
    sys.modules[module_name] = module
    try:
        loader_spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise SurgeonInputError(
            f"importing {str(path)!r} failed: {type(exc).__name__}: {_one_line(exc)}"
        ) from exc
    return module


def _import_module(name: str, spec: str) -> Any:
    cwd = os.getcwd()
    if cwd not in sys.path:  # like `python -m`: packages in the current folder are found
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        raise SurgeonInputError(
            f"cannot import module {name!r} (from {spec!r}): {_one_line(exc)}; give a zoo model "
            f"({_zoo_names()}), path/to/file.py:factory or package.module:factory"
        ) from exc
    except Exception as exc:
        raise SurgeonInputError(
            f"importing {name!r} failed: {type(exc).__name__}: {_one_line(exc)}"
        ) from exc


def load_model(spec: str, input_shape: tuple[int, ...] | None = None) -> tuple[str, nn.Module, Any]:
    """Resolve a MODEL argument to ``(name, model in eval mode, example input)``.

    ``spec`` is a zoo name, ``path/to/file.py:factory`` or ``package.module:factory`` (the
    factory is called with no arguments and must return an ``nn.Module``). A non-zoo model
    needs ``input_shape``.
    """
    import torch
    from torch import nn

    from surgeon.models import ZOO, create

    if spec in ZOO:
        model, example = create(spec, input_shape=input_shape)
        return spec, model, example
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
    source, factory_name = spec.rsplit(":", 1)
    if not source or not factory_name.isidentifier():
        raise SurgeonInputError(
            f"model {spec!r} is not of the form path/to/file.py:factory or package.module:factory"
        )
    is_file = source.endswith(".py") or "/" in source or os.sep in source
    module = _import_file(Path(source).expanduser(), spec) if is_file else None
    if module is None:
        module = _import_module(source, spec)
    factory = getattr(module, factory_name, None)
    if factory is None or not callable(factory):
        found = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        what = "is not callable" if factory is not None else "is not defined"
        raise SurgeonInputError(
            f"{factory_name!r} {what} in {source!r}; it defines: {', '.join(found) or 'nothing'}"
        )
    if input_shape is None:
        raise SurgeonInputError(
            f"{spec!r} is not a zoo model, so its input shape is unknown; pass it with "
            "--input-shape, e.g. --input-shape 1,3,224,224"
        )
    try:
        model = factory()
    except Exception as exc:
        raise SurgeonInputError(
            f"calling {spec}() failed: {type(exc).__name__}: {_one_line(exc)}"
        ) from exc
    if not isinstance(model, nn.Module):
        raise SurgeonInputError(
            f"{spec}() returned a {type(model).__name__}; it must return a torch.nn.Module"
        )
    model.eval()
    example = torch.randn(input_shape, generator=torch.Generator().manual_seed(0))
    return factory_name, model, example


_CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model")


def _listing(items: Sequence[str], limit: int = 5) -> str:
    """``a, b, c (and 4 more)``."""
    shown = ", ".join(items[:limit])
    return shown + (f" (and {len(items) - limit} more)" if len(items) > limit else "")


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
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} ({'x'.join(map(str, state[k].shape)) or 'scalar'} in the file, "
        f"{'x'.join(map(str, v.shape)) or 'scalar'} in the model)"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        problems = [
            f"{label} {_listing(items)}"
            for label, items in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shapes differ for", shapes),
            )
            if items
        ]
        raise SurgeonInputError(
            f"{where} does not fit the {type(model).__name__} of {spec!r}: "
            f"{'; '.join(problems)}; give the weights of this architecture"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise SurgeonInputError(f"{where} cannot be loaded: {_one_line(exc)}") from exc


def _close(name: str, candidates: Sequence[str]) -> str:
    """`` (did you mean 'a' or 'b'?)`` (or nothing)."""
    found = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(f) for f in found)}?)" if found else ""


def _submodule_names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_modules() if n]


def resolve_ignore(model: nn.Module, names: Sequence[str]) -> tuple[str, ...]:
    """``--ignore`` names checked to be qualified names of ``model``'s submodules."""
    known = _submodule_names(model)
    for name in names:
        if name not in known:
            raise SurgeonInputError(
                f"--ignore {name!r} is not a submodule of the {type(model).__name__}"
                f"{_close(name, known)}; give a qualified name such as "
                f"{_listing([repr(n) for n in known], 3)}"
            )
    return tuple(dict.fromkeys(names))


def resolve_leaf_modules(model: nn.Module, names: Sequence[str]) -> tuple[Any, ...]:
    """``--leaf-module`` names as ``leaf_modules``: a submodule's qualified name stays a name;
    a class name (``Block``, or ``package.module.Block``) of some submodule becomes that
    class. Anything else is refused with the names and classes the model has."""
    known = _submodule_names(model)
    types: dict[str, set[type[nn.Module]]] = {}
    for module in model.modules():
        if module is model:
            continue
        t = type(module)
        for key in (t.__name__, t.__qualname__, f"{t.__module__}.{t.__qualname__}"):
            types.setdefault(key, set()).add(t)
    out: list[Any] = []
    for name in names:
        if name in known:
            out.append(name)
            continue
        found = types.get(name, set())
        if len(found) > 1:
            paths = sorted(f"{t.__module__}.{t.__qualname__}" for t in found)
            raise SurgeonInputError(
                f"--leaf-module {name!r} names {len(found)} classes of the "
                f"{type(model).__name__}: {', '.join(paths)}; give the full path of one"
            )
        if not found:
            classes = sorted({type(m).__name__ for m in model.modules() if m is not model})
            raise SurgeonInputError(
                f"--leaf-module {name!r} is neither a submodule of the {type(model).__name__} "
                f"nor the class of one{_close(name, known + classes)}; give a qualified name "
                f"({_listing([repr(n) for n in known], 3)}) or a class name "
                f"({_listing(classes, 3)})"
            )
        out.append(found.pop())
    return tuple(dict.fromkeys(out))


def _build(
    spec: str, shape: tuple[int, ...] | None, weights: Path | None
) -> tuple[str, nn.Module, Any]:
    """:func:`load_model`, then the ``--weights`` loaded into the model."""
    name, model, example = load_model(spec, shape)
    if weights is not None:
        load_weights(model, weights.expanduser(), spec)
    return name, model, example


# --------------------------------------------------------------------------------------------
# Output helpers.
# --------------------------------------------------------------------------------------------


def _one_line(exc: BaseException | str) -> str:
    text = " ".join(str(exc).split())
    return text or (type(exc).__name__ if isinstance(exc, BaseException) else "")


@contextlib.contextmanager
def _step(message: str) -> Iterator[None]:
    """A transient spinner on stderr (shown on terminals only), then a done line on stdout."""
    started = time.perf_counter()
    with err_console.status(message):
        yield
    console.print(f"[green]done[/green] {message} [dim]({time.perf_counter() - started:.1f}s)[/]")


def _setup(debug: bool) -> None:
    """Logging and warnings: quiet by default, everything on stderr with --debug."""
    _DEBUG["on"] = _DEBUG["on"] or debug
    root = logging.getLogger()
    if _HANDLER:
        root.removeHandler(_HANDLER.pop())
    if _DEBUG["on"]:
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(console=err_console, show_path=False)
        root.setLevel(logging.DEBUG)
        logging.getLogger("surgeon").setLevel(logging.DEBUG)
    else:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        root.setLevel(logging.WARNING)
        logging.getLogger("surgeon").setLevel(logging.WARNING)
        # torch / onnxscript chatter (torchvision registrations, rewrite statistics)
        for name in ("torch", "onnxscript", "onnx_ir"):
            logging.getLogger(name).setLevel(logging.ERROR)
        warnings.filterwarnings("ignore")
    _HANDLER.append(handler)
    root.addHandler(handler)


def _check_device(device: str) -> None:
    if device != "cuda":
        return
    import onnxruntime as ort

    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        raise SurgeonInputError(
            "--device cuda: onnxruntime here has no CUDAExecutionProvider (it offers "
            f"{', '.join(available)}); install onnxruntime-gpu on a machine with a CUDA GPU, "
            "or use --device cpu"
        )


def _bench_table(results: Sequence[Any], labels: Sequence[str]) -> tuple[Table, list[str]]:
    """One row per provider and file (and the speedup of the second file over the first); a
    note per provider that was not measured."""
    table = Table(title="onnxruntime latency", title_justify="left")
    if len(results) == 2:
        table.caption = f"speedup = median of {labels[0]} / median of the row's model"
        table.caption_justify = "left"
    table.add_column("provider", style="bold", no_wrap=True)
    table.add_column("model", no_wrap=True)
    table.add_column("median ms", justify="right", no_wrap=True)
    table.add_column("p90 ms", justify="right", no_wrap=True)
    table.add_column("threads", justify="right")
    table.add_column("runs", justify="right")
    if len(results) == 2:
        table.add_column("speedup", justify="right")
    notes: list[str] = []
    for provider in results[0].timings:
        timings = [r.timings[provider] for r in results]
        missing = [t for t in timings if not t.available]
        if missing:
            notes.append(f"{provider}: not measured - {missing[0].reason}")
            continue
        for index, (label, t) in enumerate(zip(labels, timings, strict=True)):
            cells = [
                provider if index == 0 else "",
                label,
                f"{t.median_ms:.3f}",
                f"{t.p90_ms:.3f}",
                "default" if t.threads is None else str(t.threads),
                str(t.runs),
            ]
            if len(results) == 2:
                cells.append("" if index == 0 else f"{timings[0].median_ms / t.median_ms:.2f}x")
            table.add_row(*cells)
    return table, notes


# --------------------------------------------------------------------------------------------
# Commands.
# --------------------------------------------------------------------------------------------


class _Interrupted(Exception):
    """Ctrl-C inside a command, carried past click (which would turn the KeyboardInterrupt
    into a silent exit 130) to :func:`main`, which says so."""


def _command(name: str, short_help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``app.command(name)``, with a KeyboardInterrupt in the command made an _Interrupted.
    ``short_help``: the line ``surgeon --help`` lists (click would cut the docstring's)."""

    def register(function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return function(*args, **kwargs)
            except KeyboardInterrupt as exc:
                raise _Interrupted from exc

        app.command(name, short_help=short_help)(run)
        return run

    return register


def _print_version(value: bool) -> None:
    if value:
        from surgeon import __version__

        console.print(f"surgeon {__version__}", markup=False, highlight=False)
        raise typer.Exit()


DebugOption = Annotated[
    bool, typer.Option("--debug", help="Log everything and show tracebacks on errors.")
]
VersionOption = Annotated[
    bool,
    typer.Option(
        "--version",
        callback=_print_version,
        is_eager=True,
        expose_value=False,
        help="Print surgeon's version and exit.",
    ),
]
InputShapeOption = Annotated[
    str | None,
    typer.Option(
        "--input-shape",
        metavar="SHAPE",
        help="Example input shape with the batch, e.g. 1,3,224,224. Default: the zoo "
        "entry's; required for other models.",
    ),
]
WeightsOption = Annotated[
    Path | None,
    typer.Option(
        "--weights",
        metavar="FILE",
        help="State dict (or a checkpoint holding one under state_dict, model_state_dict or "
        "model) loaded into the model first; read with torch.load(weights_only=True).",
    ),
]
IgnoreOption = Annotated[
    list[str] | None,
    typer.Option(
        "--ignore",
        metavar="NAME",
        help="Submodule (qualified name, e.g. layer4.1) whose shapes must not change. Repeatable.",
        show_default=False,
    ),
]
LeafModuleOption = Annotated[
    list[str] | None,
    typer.Option(
        "--leaf-module",
        metavar="NAME",
        help="Submodule (qualified name) or class name of submodules that torch.fx must not "
        "trace into; their channels are left alone. Repeatable.",
        show_default=False,
    ),
]
WarmupOption = Annotated[int, typer.Option(metavar="N", help="Untimed runs first.")]
ThreadsOption = Annotated[
    int | None,
    typer.Option(metavar="N", help="Threads of onnxruntime's operators. Default: its own."),
]

# surgeon export
ExportModelArgument = Annotated[
    str | None,
    typer.Argument(
        metavar="MODEL",
        help="Zoo name (resnet18, resnet50, ...), path/to/file.py:factory or "
        "package.module:factory. Default: the zoo's default model.",
        show_default=False,
    ),
]
RatioOption = Annotated[
    float,
    typer.Option(metavar="R", help="Fraction of each group's channels to remove, 0 <= R < 1."),
]
OutputOption = Annotated[
    Path | None,
    typer.Option(
        "--output", "-o", metavar="FILE", help="ONNX file to write. Default: <model>_slim.onnx"
    ),
]
ImportanceOption = Annotated[
    str,
    typer.Option(metavar="NAME", help="Channel importance: l2, l1, bn_scale or random."),
]
CompensateOption = Annotated[
    bool,
    typer.Option(
        "--compensate/--no-compensate",
        help="Fold removed channels' expected values (from their batch norms) into consumers.",
    ),
]
ScopeOption = Annotated[
    Scope, typer.Option(help="local: the ratio in every group; global: one threshold.")
]
AttentionOption = Annotated[
    Attention,
    typer.Option(help="What prunes in attention: whole heads, or part of each head's width."),
]
GroupedOption = Annotated[
    Grouped | None,
    typer.Option(
        help=(
            "What a grouped conv loses: offsets (every group narrows), groups (whole groups) "
            "or auto (whole groups at the in-group widths measured to run faster so on "
            "--device). Default: auto with --round-to auto, else offsets."
        ),
        show_default=False,
    ),
]
RoundToOption = Annotated[
    str | None,
    typer.Option(
        metavar="N|auto",
        help=(
            "Keep a multiple of N channels per group; auto: the multiple onnxruntime runs "
            "fastest on --device, measured once and cached; 1: no rounding."
        ),
    ),
]
DeviceOption = Annotated[
    Device, typer.Option(help="Where latency is measured (onnxruntime provider).")
]
NoBenchOption = Annotated[bool, typer.Option("--no-bench", help="Skip the latency comparison.")]
ReportOption = Annotated[
    Path | None,
    typer.Option("--report", metavar="FILE", help="Also write the report as JSON here."),
]
SaveOption = Annotated[
    Path | None,
    typer.Option(
        "--save",
        metavar="FILE",
        help="Also save the slim PyTorch model here (e.g. r18.surgeon), for surgeon.load.",
    ),
]
JsonOption = Annotated[
    bool,
    typer.Option(
        "--json", help="Print the report as JSON on stdout; progress goes to stderr then."
    ),
]
ExportRunsOption = Annotated[int, typer.Option(metavar="N", help="Timed runs per model.")]
OpsetOption = Annotated[
    int | None, typer.Option(metavar="N", help="ONNX opset. Default: the exporter's.")
]
DynamicBatchOption = Annotated[
    bool,
    typer.Option(
        "--dynamic-batch/--static-batch",
        help="A dynamic batch dimension, checked at a second batch size.",
    ),
]

# surgeon inspect
InspectModelArgument = Annotated[
    str,
    typer.Argument(
        metavar="MODEL",
        help="Zoo name, path/to/file.py:factory or package.module:factory.",
        show_default=False,
    ),
]
InspectRatioOption = Annotated[
    float | None,
    typer.Option(
        metavar="R",
        help="Show each group's channels before and after slimming at this ratio.",
        show_default=False,
    ),
]
MaxRowsOption = Annotated[
    int,
    typer.Option(metavar="N", help="With --ratio: show at most N groups (0: all of them)."),
]

# surgeon bench
FirstOnnxArgument = Annotated[
    Path, typer.Argument(metavar="FILE", help="ONNX file to time.", show_default=False)
]
SecondOnnxArgument = Annotated[
    Path | None,
    typer.Argument(
        metavar="FILE2", help="A second ONNX file, timed side by side.", show_default=False
    ),
]
BenchDeviceOption = Annotated[
    BenchDevice, typer.Option(help="onnxruntime provider(s): cpu, cuda or all.")
]
BenchRunsOption = Annotated[int, typer.Option(metavar="N", help="Timed runs per model.")]


@app.callback()
def _root(version: VersionOption = False) -> None:
    pass


def parse_round_to(text: str | None) -> int | str | None:
    """``--round-to``: ``auto`` or a whole number >= 1."""
    if text is None or text.strip().lower() == "auto":
        return None if text is None else "auto"
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise SurgeonInputError(
            f"--round-to {text} must be a whole number >= 1 (e.g. --round-to 8; 1: no "
            "rounding) or auto (the multiple onnxruntime runs fastest, measured)"
        )
    return value


def _resolve_round_to(round_to: int | str | None, device: str, threads: int | None) -> int | None:
    """``auto``: the channel multiple measured on ``device`` with ``threads`` (cached)."""
    if round_to != "auto":
        return round_to  # type: ignore[return-value]
    from surgeon.hardware import channel_multiple

    with _step(f"find the channel multiple onnxruntime runs fastest on {device}"):
        return channel_multiple(device, threads=threads)


def _resolve_grouped(
    grouped: Grouped | None, round_to: int | str | None, device: str, threads: int | None
) -> str | tuple[int, ...]:
    """``--grouped`` (default: auto with ``--round-to auto``); auto: the in-group widths
    measured on ``device`` with ``threads`` (cached with the channel multiple)."""
    value = grouped.value if grouped is not None else "auto" if round_to == "auto" else "offsets"
    if value != "auto":
        return value
    from surgeon.hardware import grouped_widths

    return grouped_widths(device, threads=threads)


def _check_slim_flags(ratio: float, round_to: str | None, importance: str) -> None:
    """The checks that name the command-line flag (SlimOptions would name the argument)."""
    if not 0 <= ratio < 1:
        raise SurgeonInputError(
            f"--ratio {ratio:g} is out of range: it is the fraction of each group's channels to "
            "remove, 0 <= ratio < 1 (e.g. --ratio 0.5)"
        )
    parse_round_to(round_to)
    if importance in ("taylor", "grad"):
        raise SurgeonInputError(
            f"--importance {importance} ranks channels by gradients on data, which the command "
            "line does not take; use --importance l2, l1, bn_scale or random, or call "
            f"surgeon.slim(model, ratio, x, importance={importance!r}, data=..., loss_fn=...) "
            "from Python"
        )


def _check_export_flags(
    ratio: float,
    round_to: str | None,
    importance: str,
    runs: int,
    warmup: int,
    threads: int | None,
    opset: int | None = None,
) -> None:
    """:func:`_check_slim_flags`, then the timing flags and ``--opset``."""
    _check_slim_flags(ratio, round_to, importance)
    if runs < 1 or warmup < 0 or (threads is not None and threads < 1):
        raise SurgeonInputError("--runs must be >= 1, --warmup >= 0 and --threads >= 1")
    if opset is not None:
        from surgeon.exporter import _MIN_OPSET, max_opset

        if not _MIN_OPSET <= opset <= max_opset():
            raise SurgeonInputError(
                f"--opset {opset} is out of range: the exporter writes opsets {_MIN_OPSET} to "
                f"{max_opset()} (the newest the installed onnx defines); give one of those, or "
                "leave --opset out for the exporter's default"
            )


def _output_paths(
    name: str, output: Path | None, report: Path | None, save: Path | None = None
) -> tuple[Path, Path | None, Path | None]:
    """The ONNX file, the report file and the surgeon file (those asked for), checked to be
    writable and distinct."""
    from surgeon.files import check_output_path

    out = check_output_path(output or Path.cwd() / f"{name}_slim.onnx", what="ONNX file")
    report_path = check_output_path(report, what="report file") if report is not None else None
    save_path = check_output_path(save, what="surgeon file") if save is not None else None
    flags = {"--output": out, "--report": report_path, "--save": save_path}
    seen: dict[Path, str] = {}
    for flag, path in flags.items():
        if path is None:
            continue
        if path in seen:
            raise SurgeonInputError(
                f"{seen[path]} and {flag} are the same file {str(path)!r}; give them "
                "different names"
            )
        seen[path] = flag
    return out, report_path, save_path


def _slim(original: nn.Module, example: Any, opts: SlimOptions) -> nn.Module:
    import surgeon

    return surgeon.slim(original, opts, example)


def _print_diagnosis(found: dict[str, Any] | None) -> None:
    """The short section a user sees when little was pruned: the figures and why."""
    if not found:
        return
    console.print(
        f"[bold yellow]little was pruned[/]: MACs dropped {found['mac_drop']:.2f}x where the "
        f"ratio gives {found['expected']:.1f}x on free groups "
        f"({found['prunable_groups']} of {found['groups']} groups prunable). Top blocked reasons:"
    )
    for r in found["top_blocked"]:
        console.print(
            f"  {r['groups']:4d} groups  {escape(r['reason'])}  (first: {escape(r['first'])})"
        )


def _form(slim_model: nn.Module) -> str:
    """Which form slim returned: the model's own class, or the graph and why."""
    from surgeon.keys import PLAN_KEY

    plan = slim_model.meta.get(PLAN_KEY, {})
    if plan.get("form") == "module":
        return f"{type(slim_model).__name__} (the model's own class, verified against the graph)"
    return f"torch.fx.GraphModule ({plan.get('form_reason') or 'the graph form'})"


def _print_specialised(found: dict[str, Any] | None) -> None:
    """The model branches on sizes: say that the slim model holds for these sizes only."""
    if not found:
        return
    console.print(
        "[bold yellow]specialised[/]: the model branches on sizes, so its graph (and the slim "
        f"model) holds for inputs of the example's sizes; first place: {escape(found['where'][0])}"
    )


def _export_both(
    original: nn.Module,
    slim_model: nn.Module,
    example: Any,
    paths: tuple[Path, Path],
    *,
    opset: int | None,
    dynamic_batch: bool,
) -> None:
    """Export the slim model and the original (for comparison) to ``paths``, in that order."""
    from surgeon.exporter import export

    original_path, slim_path = paths
    with _step("export the slim model to ONNX and check it with onnxruntime"):
        export(slim_model, example, slim_path, opset=opset, dynamic_batch=dynamic_batch)
    with _step("export the original model to ONNX (temporary, for comparison)"):
        export(original, example, original_path, opset=opset, dynamic_batch=dynamic_batch)


def _bench_both(
    paths: tuple[Path, Path], *, device: str, runs: int, warmup: int, threads: int | None
) -> tuple[BenchResult, BenchResult]:
    """onnxruntime latency of the original and the slim ONNX file on ``device``, timed side by
    side: each round runs both once (surgeon.bench_interleaved)."""
    from surgeon.benchmark import bench_interleaved

    with _step(f"time both with onnxruntime on {device} ({runs} interleaved rounds)"):
        original_bench, slim_bench = bench_interleaved(
            paths, providers=(device,), warmup=warmup, runs=runs, threads=threads
        )
    return original_bench, slim_bench


def _export_and_compare(
    spec: str,
    name: str,
    original: nn.Module,
    slim_model: nn.Module,
    example: Any,
    settings: dict[str, Any],
    out: Path,
    written: list[Path],
    *,
    opset: int | None,
    dynamic_batch: bool,
) -> Report:
    """Export both models to a temporary folder, time them (unless ``settings["bench"]`` is
    off), measure the report (named after ``spec``, what the user typed), and copy the slim
    ONNX file to ``out`` (added to ``written``)."""
    from surgeon.files import copy_file_atomic
    from surgeon.report import build_report

    with tempfile.TemporaryDirectory(prefix="surgeon-") as tmp:
        paths = (Path(tmp) / f"{name}.onnx", Path(tmp) / f"{name}_slim.onnx")
        _export_both(original, slim_model, example, paths, opset=opset, dynamic_batch=dynamic_batch)
        benches = (None, None)
        if settings["bench"]:
            benches = _bench_both(
                paths,
                device=settings["device"],
                runs=settings["runs"],
                warmup=settings["warmup"],
                threads=settings["threads"],
            )
        with _step("count parameters and MACs"):
            result = build_report(
                spec,
                original,
                slim_model,
                example,
                original_onnx=paths[0],
                slim_onnx=paths[1],
                original_bench=benches[0],
                slim_bench=benches[1],
                settings=settings,
            )
        copy_file_atomic(paths[1], out, what="ONNX file")
        written.append(out)
    return result


@contextlib.contextmanager
def _all_or_nothing() -> Iterator[list[Path]]:
    """Yield a list the command adds each output file to once it is written; on any failure
    or interruption until the command ends, those files are removed again."""
    written: list[Path] = []
    try:
        yield written
    except BaseException:
        for path in reversed(written):
            with contextlib.suppress(OSError):
                path.unlink()
        raise


@contextlib.contextmanager
def _stdout_for(as_json: bool) -> Iterator[Any]:
    """With ``--json``: everything the command prints (tables, progress, logs, library
    chatter) goes to stderr; yields the real stdout, for the JSON alone."""
    real = sys.stdout
    if not as_json:
        yield real
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield real


def _slim_options(
    model: nn.Module,
    ratio: float,
    *,
    ignore: Sequence[str] | None,
    leaf_modules: Sequence[str] | None,
    **settings: Any,
) -> SlimOptions:
    """SlimOptions from the flags, ``--ignore`` and ``--leaf-module`` checked against
    ``model`` (the same checks slim makes, naming the flag)."""
    from surgeon.options import SlimOptions

    return SlimOptions(
        ratio,
        ignore=resolve_ignore(model, ignore or ()),
        leaf_modules=resolve_leaf_modules(model, leaf_modules or ()),
        **settings,
    )


@_command("export", "Slim a model, export it to ONNX and compare it with the original.")
def export_command(
    model: ExportModelArgument = None,
    ratio: RatioOption = 0.5,
    input_shape: InputShapeOption = None,
    weights: WeightsOption = None,
    output: OutputOption = None,
    save: SaveOption = None,
    report: ReportOption = None,
    as_json: JsonOption = False,
    importance: ImportanceOption = "l2",
    compensate: CompensateOption = True,
    scope: ScopeOption = Scope.local,
    attention: AttentionOption = Attention.heads,
    round_to: RoundToOption = "auto",
    grouped: GroupedOption = None,
    ignore: IgnoreOption = None,
    leaf_module: LeafModuleOption = None,
    device: DeviceOption = Device.cpu,
    no_bench: NoBenchOption = False,
    runs: ExportRunsOption = 50,
    warmup: WarmupOption = 10,
    threads: ThreadsOption = None,
    opset: OpsetOption = None,
    dynamic_batch: DynamicBatchOption = True,
    debug: DebugOption = False,
    version: VersionOption = False,
) -> None:
    """Slim MODEL, export it to ONNX (checked against PyTorch) and compare it with the original."""
    with _stdout_for(as_json) as stdout:
        _setup(debug)
        from surgeon.models import DEFAULT_MODEL

        spec = model or DEFAULT_MODEL
        shape = parse_shape(input_shape) if input_shape is not None else None
        _check_export_flags(ratio, round_to, importance, runs, warmup, threads, opset)
        _check_device(device.value)
        out, report_path, save_path = _output_paths(_spec_name(spec), output, report, save)

        from surgeon.keys import DIAGNOSIS_KEY, PLAN_KEY

        with _step(f"load {spec}"):
            name, original, example = _build(spec, shape, weights)
        asked = parse_round_to(round_to)
        multiple = _resolve_round_to(asked, device.value, threads)
        groups = _resolve_grouped(grouped, asked, device.value, threads)
        with _step(f"slim {spec} at ratio {ratio:g} ({importance}, {scope.value})"):
            # validated here, where slim used to, so an unknown --importance fails at this step
            opts = _slim_options(
                original,
                ratio,
                ignore=ignore,
                leaf_modules=leaf_module,
                importance=importance,
                scope=scope.value,
                round_to=multiple,
                compensate=compensate,
                attention=attention.value.replace("-", "_"),
                grouped=groups,
            )
            if asked == "auto" and not no_bench:  # time the slim model at each multiple
                from surgeon.api import timed_round_to

                slim_model = timed_round_to(
                    original, example, opts.replace(round_to="auto"), provider=device.value,
                    threads=threads,
                )[0]  # fmt: skip
                opts = opts.replace(round_to=slim_model.meta[PLAN_KEY]["round_to"])
            else:
                slim_model = _slim(original, example, opts)
        settings = {
            **opts.to_record(),
            # auto: the median ms of the slim model at each multiple timed (round_to_timed)
            "round_to_timed": slim_model.meta[PLAN_KEY].get("round_to_timed"),
            # auto: the multiple measured on --device with --threads (surgeon.hardware)
            "round_to_auto": asked == "auto",
            "model": spec,
            "input_shape": list(example.shape),
            "weights": None if weights is None else str(weights.expanduser().absolute()),
            "device": device.value,
            "bench": not no_bench,
            "runs": runs,
            "warmup": warmup,
            "threads": threads,
            "onnx": str(out),
            "save": None if save_path is None else str(save_path),
            "little_pruned": slim_model.meta.get(DIAGNOSIS_KEY),
            "specialised": slim_model.meta.get(PLAN_KEY, {}).get("specialised"),
            "form": _form(slim_model),
        }
        with _all_or_nothing() as written:
            result = _export_and_compare(
                spec,
                name,
                original,
                slim_model,
                example,
                settings,
                out,
                written,
                opset=opset,
                dynamic_batch=dynamic_batch,
            )
            if report_path is not None:
                result.save_json(report_path)
                written.append(report_path)
            if save_path is not None:
                import surgeon

                with _step(f"save the slim model to {save_path.name}"):
                    surgeon.save(slim_model, save_path)
                written.append(save_path)
            console.print(result.render())
            _print_diagnosis(settings["little_pruned"])
            _print_specialised(settings["specialised"])
            console.print(f"form: {escape(settings['form'])}; attention prunes: {opts.attention}")
            for path in written:
                console.print(f"wrote {path}", markup=False, highlight=False)
            if as_json:
                stdout.write(result.to_json())
                stdout.flush()


@_command("inspect", "List a model's channel groups; preview a ratio with --ratio.")
def inspect_command(
    model: InspectModelArgument,
    input_shape: InputShapeOption = None,
    weights: WeightsOption = None,
    ratio: InspectRatioOption = None,
    scope: ScopeOption = Scope.local,
    round_to: RoundToOption = "auto",
    grouped: GroupedOption = None,
    importance: ImportanceOption = "l2",
    attention: AttentionOption = Attention.heads,
    ignore: IgnoreOption = None,
    leaf_module: LeafModuleOption = None,
    max_rows: MaxRowsOption = 40,
    debug: DebugOption = False,
) -> None:
    """Print MODEL's channel groups: what is coupled, what can be pruned and why not. With
    --ratio, each group's channels before and after slimming at that ratio."""
    _setup(debug)
    shape = parse_shape(input_shape) if input_shape is not None else None
    groups = _resolve_grouped(grouped, parse_round_to(round_to), "cpu", None)
    if ratio is not None:
        _check_slim_flags(ratio, round_to, importance)
        round_to = _resolve_round_to(parse_round_to(round_to), "cpu", None)
    if max_rows < 0:
        raise SurgeonInputError(f"--max-rows {max_rows} must be >= 0 (0 shows every group)")
    import surgeon

    with err_console.status(f"loading {model}"):
        _, loaded, example = _build(model, shape, weights)
    opts = _slim_options(
        loaded,
        0.0 if ratio is None else ratio,
        ignore=ignore,
        leaf_modules=leaf_module,
        importance=importance,
        scope=scope.value,
        round_to=round_to,
        attention=attention.value.replace("-", "_"),
        grouped=groups,
        compensate=False,  # counts only: no folding, and the graph form (nothing verified)
        returns="graph",
    )
    with err_console.status(f"analysing {model}"):
        graph = surgeon.analyze(
            loaded,
            example,
            leaf_modules=opts.leaf_modules,
            attention=opts.attention,
            grouped=groups,
        )
    if ratio is None:
        console.print(str(graph), markup=False, highlight=False)
        return
    with err_console.status(f"slimming {model} at ratio {ratio:g}"):
        slim_model = surgeon.slim(loaded, opts, example)
    _print_preview(model, graph, slim_model, opts, max_rows)


def _print_preview(
    spec: str, graph: Any, slim_model: nn.Module, opts: SlimOptions, max_rows: int
) -> None:
    """Per group with parameters: channels before -> after at ``opts.ratio``, the modules it
    touches; at most ``max_rows`` rows, then how many groups were left out."""
    from surgeon.keys import PLAN_KEY

    plan = slim_model.meta.get(PLAN_KEY, {})
    removed = {int(k): len(v) for k, v in plan.get("removed", {}).items()}
    failed = {int(k): str(v) for k, v in (plan.get("blocked") or {}).items()}
    ignored = tuple(str(i) for i in opts.ignore)
    groups = [g for g in graph.groups if g.params]
    before = sum(g.channels for g in groups)
    after = before - sum(removed.get(g.index, 0) for g in groups)
    table = Table(
        title=f"{escape(spec)} at ratio {opts.ratio:g} ({opts.scope}): {len(groups)} groups with "
        f"parameters, {sum(g.prunable for g in groups)} prunable; channels {before} -> {after}",
        title_justify="left",
    )
    table.add_column("group", justify="right", no_wrap=True)
    table.add_column("channels", justify="right", no_wrap=True)
    table.add_column("status")
    table.add_column("modules")
    shown = groups if max_rows == 0 else groups[:max_rows]
    for g in shown:
        n = g.channels
        owners = list(dict.fromkeys(p.owner or "<root>" for p in g.params))
        modules = ", ".join(owners[:6]) + (f" (+{len(owners) - 6} more)" if len(owners) > 6 else "")
        if g.index in failed:
            status = f"blocked: {failed[g.index]}"
        elif g.prunable:
            touched = [o for o in owners if any(o == i or o.startswith(f"{i}.") for i in ignored)]
            status = "prunable" + (" (--ignore)" if touched else "")
        elif g.blocked:
            status = f"blocked: {g.reasons[0]}"
        else:
            status = "fixed"
        cells = (str(g.index), f"{n} → {n - removed.get(g.index, 0)}", status, modules)
        table.add_row(*(escape(cell) for cell in cells))
    console.print(table)
    hidden = len(groups) - len(shown)
    if hidden:
        console.print(
            f"… and {hidden} more groups (--max-rows 0 shows them all)",
            markup=False,
            highlight=False,
        )


@_command("bench", "Time one ONNX file, or two side by side, in onnxruntime.")
def bench_command(
    first: FirstOnnxArgument,
    second: SecondOnnxArgument = None,
    device: BenchDeviceOption = BenchDevice.all,
    runs: BenchRunsOption = 50,
    warmup: WarmupOption = 10,
    threads: ThreadsOption = None,
    debug: DebugOption = False,
) -> None:
    """onnxruntime latency (median, p90) of one ONNX file, or of two side by side."""
    _setup(debug)
    _check_device(device.value)
    from surgeon.benchmark import bench, bench_interleaved

    providers = ("cpu", "cuda") if device is BenchDevice.all else (device.value,)
    paths = [first] if second is None else [first, second]
    options = {"providers": providers, "warmup": warmup, "runs": runs, "threads": threads}
    if len(paths) == 2 and _same_inputs(paths):
        # side by side, round by round, so that the machine's noise falls on both alike
        with err_console.status(f"timing {first} and {second}, interleaved"):
            results = bench_interleaved(paths, **options)
    else:
        results = []
        for path in paths:
            with err_console.status(f"timing {path}"):
                results.append(bench(path, **options))
    labels = [p.name for p in paths]
    if len(labels) == 2 and labels[0] == labels[1]:
        labels = ["A", "B"]
    table, notes = _bench_table(results, labels)
    console.print(table)
    for note in notes:
        console.print(f"[dim]{escape(note)}[/dim]")


def _same_inputs(paths: Sequence[Path]) -> bool:
    """Whether the ONNX files take the same inputs (names, types, shapes), so one feed serves
    both; False where a file cannot be read (bench then names the problem)."""
    import onnx

    def inputs(path: Path) -> Any:
        graph = onnx.load(str(path), load_external_data=False).graph
        return [str(i.type) + i.name for i in graph.input]

    try:
        return inputs(paths[0]) == inputs(paths[1])
    except Exception:
        return False


# --------------------------------------------------------------------------------------------
# Entry point.
# --------------------------------------------------------------------------------------------


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"error: {_one_line(message)}\n")
    sys.stderr.flush()
    return code


def _interrupted() -> int:
    """Ctrl-C: one line on stderr. Every command removes what it wrote before it ends."""
    sys.stderr.write(f"{INTERRUPTED}\n")
    sys.stderr.flush()
    return 130


def main(argv: Sequence[str] | None = None) -> None:
    """Run the CLI; exits with 0, 1 (unexpected error), 2 (user error) or 130 (interrupted)."""
    args = list(sys.argv[1:] if argv is None else argv)
    _DEBUG["on"] = "--debug" in args
    try:
        result = app(args=args, prog_name="surgeon", standalone_mode=False)
        code = result if isinstance(result, int) else 0
        if code == 130:  # typer's own answer to a Ctrl-C outside a command (while parsing)
            code = _interrupted()
    except (_Interrupted, KeyboardInterrupt):
        code = _interrupted()
    except SurgeonError as exc:
        if _DEBUG["on"]:
            import traceback

            traceback.print_exc()
        code = _fail(str(exc), 2)
    except typer.TyperException as exc:  # click usage errors: bad option, missing argument
        from typer._click.exceptions import NoArgsIsHelpError

        if isinstance(exc, NoArgsIsHelpError):
            text = exc.ctx.get_help() if exc.ctx is not None else exc.format_message()
            console.print(text, markup=False, highlight=False)
            code = 0
        else:
            code = _fail(exc.format_message(), 2 if exc.exit_code == 1 else exc.exit_code)
    except typer.Abort:
        code = _fail("aborted", 1)
    except Exception as exc:
        if _DEBUG["on"]:
            import traceback

            traceback.print_exc()
            code = _fail(f"unexpected {type(exc).__name__}: {exc}", 1)
        else:
            code = _fail(
                f"unexpected {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
                1,
            )
    sys.exit(code)


if __name__ == "__main__":
    main()
