"""The ``surgeon`` command line: ``surgeon export | inspect | bench``.

Exit codes: 0 on success; 2 for a :class:`~surgeon.errors.SurgeonError` or bad command-line
input, reported as ONE line ``error: ...`` on stderr; 1 for an unexpected exception (one line,
with a hint to rerun with ``--debug`` for the traceback); 130 when interrupted. Tables and
progress go to stdout; stderr carries only the error line (and, with ``--debug``, logs and
tracebacks). No command leaves a partial file behind: outputs are written to temporary files
and moved into place once complete.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
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
)

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

DebugOption = Annotated[
    bool, typer.Option("--debug", help="Log everything and show tracebacks on errors.")
]
InputShapeOption = Annotated[
    str | None,
    typer.Option(
        "--input-shape",
        help="Example input shape with the batch, e.g. 1,3,224,224 (default: the zoo entry's; "
        "required for other models).",
    ),
]
WarmupOption = Annotated[int, typer.Option(help="Untimed runs first.")]
ThreadsOption = Annotated[
    int | None, typer.Option(help="onnxruntime intra-op threads (default: its own).")
]

# surgeon export
ExportModelArgument = Annotated[
    str | None,
    typer.Argument(
        help="Zoo name (resnet18, resnet50, ...), path/to/file.py:factory or "
        "package.module:factory. Default: the zoo's default model.",
        show_default=False,
    ),
]
RatioOption = Annotated[
    float, typer.Option(help="Fraction of each group's channels to remove, 0 <= r < 1.")
]
OutputOption = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="ONNX file to write (default: ./<model>_slim.onnx)."),
]
ImportanceOption = Annotated[
    str, typer.Option(help="Channel importance: l2, l1, bn_scale or random.")
]
CompensateOption = Annotated[
    bool,
    typer.Option(
        "--compensate/--no-compensate",
        help="Fold removed channels' expected values (from their batch norms) into consumers.",
    ),
]
ScopeOption = Annotated[Scope, typer.Option(help="local: ratio per group; global: one threshold.")]
AttentionOption = Annotated[
    Attention, typer.Option(help="heads: whole attention heads prune; head-dim: each head's width.")
]
RoundToOption = Annotated[int | None, typer.Option(help="Keep a multiple of N channels per group.")]
DeviceOption = Annotated[
    Device, typer.Option(help="Where latency is measured (onnxruntime provider).")
]
NoBenchOption = Annotated[bool, typer.Option("--no-bench", help="Skip the latency comparison.")]
ReportOption = Annotated[
    Path | None, typer.Option("--report", help="Also write the report as JSON here.")
]
ExportRunsOption = Annotated[int, typer.Option(help="Timed onnxruntime runs per model.")]
OpsetOption = Annotated[int | None, typer.Option(help="ONNX opset (default: the exporter's).")]
DynamicBatchOption = Annotated[
    bool,
    typer.Option(
        "--dynamic-batch/--static-batch",
        help="Export with a dynamic batch dimension (checked at a second batch size).",
    ),
]

# surgeon inspect
InspectModelArgument = Annotated[
    str,
    typer.Argument(
        help="Zoo name, path/to/file.py:factory or package.module:factory.",
        show_default=False,
    ),
]

# surgeon bench
FirstOnnxArgument = Annotated[Path, typer.Argument(help="ONNX file to time.", show_default=False)]
SecondOnnxArgument = Annotated[
    Path | None,
    typer.Argument(help="A second ONNX file, timed side by side.", show_default=False),
]
BenchDeviceOption = Annotated[
    BenchDevice, typer.Option(help="onnxruntime provider(s): cpu, cuda or all.")
]
BenchRunsOption = Annotated[int, typer.Option(help="Timed runs per model.")]


def _check_export_flags(
    ratio: float,
    round_to: int | None,
    importance: str,
    runs: int,
    warmup: int,
    threads: int | None,
) -> None:
    """The checks that name the command-line flag (SlimOptions would name the argument)."""
    if not 0 <= ratio < 1:
        raise SurgeonInputError(
            f"--ratio {ratio:g} is out of range: it is the fraction of each group's channels to "
            "remove, 0 <= ratio < 1 (e.g. --ratio 0.5)"
        )
    if round_to is not None and round_to < 1:
        raise SurgeonInputError(f"--round-to {round_to} must be >= 1 (e.g. --round-to 8)")
    if importance in ("taylor", "grad"):
        raise SurgeonInputError(
            f"--importance {importance} ranks channels by gradients on data, which the command "
            "line does not take; use --importance l2, l1, bn_scale or random, or call "
            f"surgeon.slim(model, ratio, x, importance={importance!r}, data=..., loss_fn=...) "
            "from Python"
        )
    if runs < 1 or warmup < 0 or (threads is not None and threads < 1):
        raise SurgeonInputError("--runs must be >= 1, --warmup >= 0 and --threads >= 1")


def _output_paths(name: str, output: Path | None, report: Path | None) -> tuple[Path, Path | None]:
    """The ONNX file and the report file (if asked for), checked to be writable and distinct."""
    from surgeon.files import check_output_path

    out = check_output_path(output or Path.cwd() / f"{name}_slim.onnx", what="ONNX file")
    report_path = check_output_path(report, what="report file") if report is not None else None
    if report_path is not None and report_path == out:
        raise SurgeonInputError(
            f"--report and --output are the same file {str(out)!r}; give them different names"
        )
    return out, report_path


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
    from surgeon.api import PLAN_KEY

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
    """onnxruntime latency of the original and the slim ONNX file, on ``device``."""
    from surgeon.benchmark import bench

    original_path, slim_path = paths
    options = {"providers": (device,), "warmup": warmup, "runs": runs}
    with _step(f"time both with onnxruntime on {device} ({runs} runs each)"):
        original_bench = bench(original_path, threads=threads, **options)
        slim_bench = bench(slim_path, threads=threads, **options)
    return original_bench, slim_bench


def _export_and_compare(
    name: str,
    original: nn.Module,
    slim_model: nn.Module,
    example: Any,
    settings: dict[str, Any],
    out: Path,
    *,
    opset: int | None,
    dynamic_batch: bool,
) -> Report:
    """Export both models to a temporary folder, time them (unless ``settings["bench"]`` is
    off), measure the report, and copy the slim ONNX file to ``out``."""
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
                name,
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
    return result


def _save_report(result: Report, out: Path, report_path: Path | None) -> None:
    """Write the report, if asked for; without it, the ONNX file at ``out`` goes too."""
    if report_path is None:
        return
    try:
        result.save_json(report_path)
    except BaseException:
        with contextlib.suppress(OSError):
            out.unlink()  # all or nothing: no ONNX without the report that was asked for
        raise


@app.command("export")
def export_command(
    model: ExportModelArgument = None,
    ratio: RatioOption = 0.5,
    input_shape: InputShapeOption = None,
    output: OutputOption = None,
    importance: ImportanceOption = "l2",
    compensate: CompensateOption = True,
    scope: ScopeOption = Scope.local,
    attention: AttentionOption = Attention.heads,
    round_to: RoundToOption = None,
    device: DeviceOption = Device.cpu,
    no_bench: NoBenchOption = False,
    report: ReportOption = None,
    runs: ExportRunsOption = 50,
    warmup: WarmupOption = 10,
    threads: ThreadsOption = None,
    opset: OpsetOption = None,
    dynamic_batch: DynamicBatchOption = True,
    debug: DebugOption = False,
) -> None:
    """Slim MODEL, export it to ONNX (checked against PyTorch) and compare it with the original."""
    _setup(debug)
    from surgeon.models import DEFAULT_MODEL

    spec = model or DEFAULT_MODEL
    shape = parse_shape(input_shape) if input_shape is not None else None
    _check_export_flags(ratio, round_to, importance, runs, warmup, threads)
    _check_device(device.value)
    out, report_path = _output_paths(_spec_name(spec), output, report)

    from surgeon.api import PLAN_KEY
    from surgeon.diagnose import REPORT_KEY
    from surgeon.options import SlimOptions

    with _step(f"load {spec}"):
        name, original, example = load_model(spec, shape)
    with _step(f"slim {name} at ratio {ratio:g} ({importance}, {scope.value})"):
        # validated here, where slim used to, so an unknown --importance fails at the same step
        opts = SlimOptions(
            ratio,
            importance=importance,
            scope=scope.value,
            round_to=round_to,
            compensate=compensate,
            attention=attention.value.replace("-", "_"),
        )
        slim_model = _slim(original, example, opts)
    settings = {
        **opts.to_record(),
        "model": spec,
        "input_shape": list(example.shape),
        "device": device.value,
        "bench": not no_bench,
        "runs": runs,
        "warmup": warmup,
        "threads": threads,
        "onnx": str(out),
        "little_pruned": slim_model.meta.get(REPORT_KEY),
        "specialised": slim_model.meta.get(PLAN_KEY, {}).get("specialised"),
        "form": _form(slim_model),
    }
    result = _export_and_compare(
        name, original, slim_model, example, settings, out, opset=opset, dynamic_batch=dynamic_batch
    )
    _save_report(result, out, report_path)
    console.print(result.render())
    _print_diagnosis(settings["little_pruned"])
    _print_specialised(settings["specialised"])
    console.print(f"form: {escape(settings['form'])}; attention prunes: {opts.attention}")
    console.print(f"wrote {out}")
    if report_path is not None:
        console.print(f"wrote {report_path}")


@app.command("inspect")
def inspect_command(
    model: InspectModelArgument,
    input_shape: InputShapeOption = None,
    debug: DebugOption = False,
) -> None:
    """Print MODEL's channel groups: what is coupled, what can be pruned and why not."""
    _setup(debug)
    shape = parse_shape(input_shape) if input_shape is not None else None
    import surgeon

    name, loaded, example = load_model(model, shape)
    with err_console.status(f"analysing {name}"):
        graph = surgeon.analyze(loaded, example)
    console.print(str(graph), markup=False, highlight=False)


@app.command("bench")
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
    from surgeon.benchmark import bench

    providers = ("cpu", "cuda") if device is BenchDevice.all else (device.value,)
    paths = [first] if second is None else [first, second]
    results = []
    for path in paths:
        with err_console.status(f"timing {path}"):
            results.append(
                bench(path, providers=providers, warmup=warmup, runs=runs, threads=threads)
            )
    labels = [p.name for p in paths]
    if len(labels) == 2 and labels[0] == labels[1]:
        labels = ["A", "B"]
    table, notes = _bench_table(results, labels)
    console.print(table)
    for note in notes:
        console.print(f"[dim]{escape(note)}[/dim]")


# --------------------------------------------------------------------------------------------
# Entry point.
# --------------------------------------------------------------------------------------------


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"error: {_one_line(message)}\n")
    sys.stderr.flush()
    return code


def main(argv: Sequence[str] | None = None) -> None:
    """Run the CLI; exits with 0, 1 (unexpected error), 2 (user error) or 130 (interrupted)."""
    args = list(sys.argv[1:] if argv is None else argv)
    _DEBUG["on"] = "--debug" in args
    try:
        result = app(args=args, prog_name="surgeon", standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except SurgeonError as exc:
        if _DEBUG["on"]:
            import traceback

            traceback.print_exc()
        code = _fail(str(exc), 2)
    except typer.TyperException as exc:  # click usage errors: bad option, missing argument
        from typer._click.exceptions import NoArgsIsHelpError

        if isinstance(exc, NoArgsIsHelpError):
            console.print(exc.ctx.get_help() if exc.ctx is not None else exc.format_message())
            code = 0
        else:
            code = _fail(exc.format_message(), 2 if exc.exit_code == 1 else exc.exit_code)
    except typer.Abort:
        code = _fail("aborted", 1)
    except KeyboardInterrupt:
        code = _fail("interrupted", 130)
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
