"""The command line's flags and arguments, and how they become a :class:`SlimOptions`.

Every slimming flag is handed to :class:`surgeon.options.SlimOptions` as it was typed: the
library checks each value once, and the :class:`~surgeon.errors.SurgeonInputError` it raises
names the setting at fault, which :data:`FLAGS` turns into the flag's name. Refused here are
only what the command line itself cannot do (a criterion that needs training data) and the
flags that have no library counterpart (the device, the timing flags, the opset).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from surgeon.cli.output import console, progress
from surgeon.errors import SurgeonInputError

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from surgeon.options import SlimOptions, Target

__all__ = [
    "FLAGS",
    "flag_for",
    "Scope",
    "Attention",
    "Grouped",
    "Device",
    "BenchDevice",
    "slim_options",
    "ratio_or_target",
    "with_names",
    "measured",
    "check_device",
]

FLAGS = {
    "ratio": "--ratio",
    "importance": "--importance",
    "scope": "--scope",
    "round_to": "--round-to",
    "ignore": "--ignore",
    "leaf_modules": "--leaf-module",
    "attention": "--attention",
    "grouped": "--grouped",
    "compensate": "--compensate",
    "target": "--speedup / --latency-ms / --macs / --params",
}
"""The flag of each :class:`~surgeon.options.SlimOptions` field the command line sets."""


def flag_for(option: str | None) -> str | None:
    """The flag that sets the SlimOptions field ``option``; None for a field without one."""
    return FLAGS.get(option or "")


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


def _print_version(value: bool) -> None:
    if value:
        from surgeon import __version__

        console.print(f"surgeon {__version__}", markup=False, highlight=False)
        raise typer.Exit()


# Shared by the commands.
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
        help="State dict (or a checkpoint holding one) loaded into the model first; read "
        "with torch.load(weights_only=True).",
    ),
]
WarmupOption = Annotated[int, typer.Option(metavar="N", help="Untimed runs first.")]
ThreadsOption = Annotated[
    int | None,
    typer.Option(metavar="N", help="Threads of onnxruntime's operators. Default: its own."),
]
RunsOption = Annotated[int, typer.Option(metavar="N", help="Timed runs per model.")]

# The slimming settings (what each means in full: surgeon.options.SlimOptions).
RatioOption = Annotated[
    float | None,
    typer.Option(
        FLAGS["ratio"],
        metavar="R",
        help="Fraction of each group's channels to remove, 0 <= R < 1. Default: 0.5 (when no "
        "target is given).",
        show_default=False,
    ),
]
SpeedupOption = Annotated[
    float | None,
    typer.Option(
        metavar="X",
        help="Target: X times faster, measured in onnxruntime on --device with --threads "
        "(instead of --ratio).",
        show_default=False,
    ),
]
LatencyOption = Annotated[
    float | None,
    typer.Option(
        "--latency-ms",
        metavar="MS",
        help="Target: this latency in ms, measured so.",
        show_default=False,
    ),
]
MacsOption = Annotated[
    float | None,
    typer.Option(metavar="X", help="Target: X times fewer MACs.", show_default=False),
]
ParamsOption = Annotated[
    float | None,
    typer.Option(metavar="X", help="Target: X times fewer parameters.", show_default=False),
]
ImportanceOption = Annotated[
    str,
    typer.Option(
        FLAGS["importance"], metavar="NAME", help="Channel importance: l2, l1, bn_scale or random."
    ),
]
ScopeOption = Annotated[
    Scope,
    typer.Option(FLAGS["scope"], help="local: the ratio in every group; global: one threshold."),
]
RoundToOption = Annotated[
    str | None,
    typer.Option(
        FLAGS["round_to"],
        metavar="N|auto",
        help="Keep a multiple of N channels per group (1: no rounding); auto: the multiple "
        "measured fastest on --device.",
    ),
]
GroupedOption = Annotated[
    Grouped | None,
    typer.Option(
        FLAGS["grouped"],
        help="What a grouped conv loses (auto: measured on --device). Default: auto with "
        "--round-to auto, else offsets.",
        show_default=False,
    ),
]
AttentionOption = Annotated[
    Attention,
    typer.Option(
        FLAGS["attention"],
        help="What prunes in attention: whole heads, or part of each head's width.",
    ),
]
IgnoreOption = Annotated[
    list[str] | None,
    typer.Option(
        FLAGS["ignore"],
        metavar="NAME",
        help="Submodule (qualified name, e.g. layer4.1) whose shapes must not change. Repeatable.",
        show_default=False,
    ),
]
LeafModuleOption = Annotated[
    list[str] | None,
    typer.Option(
        FLAGS["leaf_modules"],
        metavar="NAME",
        help="Submodule or class name that torch.fx must not trace into. Repeatable.",
        show_default=False,
    ),
]
CompensateOption = Annotated[
    bool,
    typer.Option(
        f"{FLAGS['compensate']}/--no-compensate",
        help="Fold removed channels' expected values (from their batch norms) into consumers.",
    ),
]

# surgeon export
ExportModelArgument = Annotated[
    str | None,
    typer.Argument(
        metavar="MODEL",
        help="Zoo name (resnet18, resnet50, ...), path/to/file.py:factory, "
        "package.module:factory or path/to/model.onnx (an ONNX file, written back under its "
        "own names and opset). Default: the zoo's default model.",
        show_default=False,
    ),
]
OutputOption = Annotated[
    Path | None,
    typer.Option(
        "--output", "-o", metavar="FILE", help="ONNX file to write. Default: <model>_slim.onnx"
    ),
]
ReportOption = Annotated[
    Path | None,
    typer.Option("--report", metavar="FILE", help="Also write the report as JSON here."),
]
HtmlOption = Annotated[
    Path | None,
    typer.Option(
        "--html",
        metavar="FILE",
        help="Also write a self-contained HTML page: widths per group, time per layer, latency.",
    ),
]
PlotsOption = Annotated[
    Path | None,
    typer.Option("--plots", metavar="DIR", help="Also write the page's figures as PNG files here."),
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
DeviceOption = Annotated[
    Device, typer.Option(help="Where latency is measured (onnxruntime provider).")
]
NoBenchOption = Annotated[bool, typer.Option("--no-bench", help="Skip the latency comparison.")]
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
        help="Zoo name, path/to/file.py:factory, package.module:factory or path/to/model.onnx.",
        show_default=False,
    ),
]
InspectRatioOption = Annotated[
    float | None,
    typer.Option(
        FLAGS["ratio"],
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


def ratio_or_target(
    ratio: float | None,
    *,
    speedup: float | None = None,
    latency_ms: float | None = None,
    macs: float | None = None,
    params: float | None = None,
    device: str = "cpu",
    threads: int | None = None,
) -> float | Target:
    """``--ratio`` (0.5 when nothing is given), or the one target flag given, as a
    :class:`Target` measured on ``device`` with ``threads``."""
    from surgeon.options import Target

    given = {
        flag: v
        for flag, v in (
            ("--speedup", speedup), ("--latency-ms", latency_ms), ("--macs", macs),
            ("--params", params),
        )
        if v is not None
    }  # fmt: skip
    if ratio is not None and given:
        raise SurgeonInputError(
            f"--ratio and {', '.join(given)} were both given: a target decides how much goes; "
            "give one of them"
        )
    if len(given) > 1:
        raise SurgeonInputError(f"{', '.join(given)}: give one target")
    if not given:
        return 0.5 if ratio is None else ratio
    ((flag, value),) = given.items()
    try:
        return Target(
            speedup=speedup, latency_ms=latency_ms, macs=macs, params=params, device=device,
            threads=threads,
        )  # fmt: skip
    except SurgeonInputError as exc:
        raise SurgeonInputError(f"{flag} {value:g}: {exc}") from None


def slim_options(
    ratio: float | Target,
    *,
    importance: str,
    scope: Scope,
    round_to: str | None,
    attention: Attention,
    grouped: Grouped | None,
    ignore: list[str] | None,
    leaf_module: list[str] | None,
    compensate: bool = True,
    returns: str = "auto",
) -> SlimOptions:
    """The flags as a :class:`SlimOptions`, which checks them (an error names its field, and
    so the flag). Names in ``--ignore`` and ``--leaf-module`` are checked once the model is
    loaded (:func:`with_names`)."""
    from surgeon.importance import DATA_CRITERIA, GRADIENT_CRITERIA
    from surgeon.options import SlimOptions

    if importance in DATA_CRITERIA:
        raise SurgeonInputError(
            f"--importance {importance} ranks channels by what it measures on data, which the "
            "command line does not take; use --importance l2, l1, bn_scale or random, or call "
            f"surgeon.slim(model, ratio, x, importance={importance!r}, data=..."
            f"{', loss_fn=...' if importance in GRADIENT_CRITERIA else ''}) from Python"
        )
    return SlimOptions(
        ratio,
        importance=importance,
        scope=scope.value,
        round_to=_round_to(round_to),
        attention=attention.value.replace("-", "_"),
        grouped=None if grouped is None else grouped.value,
        ignore=tuple(ignore or ()),
        leaf_modules=tuple(leaf_module or ()),
        compensate=compensate,
        returns=returns,
    )


def _round_to(text: str | None) -> int | str | None:
    """``--round-to``: a whole number as an int, ``auto`` as it is; anything else is passed
    on for SlimOptions to refuse."""
    if text is None or text.strip().lower() == "auto":
        return None if text is None else "auto"
    try:
        return int(text)
    except ValueError:
        return text


def with_names(opts: SlimOptions, model: nn.Module) -> SlimOptions:
    """``opts`` with ``ignore`` and ``leaf_modules`` resolved in ``model`` (qualified names,
    and classes for class names), so that a name the model lacks fails before any work."""
    from surgeon.keys import SOURCE_KEY
    from surgeon.names import resolve_ignore, resolve_leaves

    leaves = resolve_leaves(model, opts.leaf_modules)
    if SOURCE_KEY in getattr(model, "meta", {}):  # an ONNX file: the ops kept as they are
        from surgeon.onnxin.opaque import OnnxOp

        leaves = (*leaves, OnnxOp)
    return opts.replace(ignore=resolve_ignore(model, opts.ignore), leaf_modules=leaves)


def measured(
    opts: SlimOptions, device: str, threads: int | None, *, multiple: bool = True
) -> SlimOptions:
    """``opts`` with what is ``auto`` measured on ``device`` with ``threads``, where the
    library would measure on one CPU thread: ``grouped`` as the in-group widths that lose
    whole groups (also when unset and ``round_to`` is ``auto``: the default SlimOptions
    gives) and, with ``multiple``, ``round_to`` as the channel multiple. Both are measured
    once per machine and cached."""
    from surgeon.hardware import channel_multiple, grouped_widths

    auto = opts.round_to == "auto"
    grouped = opts.grouped
    if grouped == "auto" or (grouped is None and auto):
        grouped = grouped_widths(device, threads=threads)
    round_to = opts.round_to
    if auto and multiple:
        with progress(f"find the channel multiple onnxruntime runs fastest on {device}"):
            round_to = channel_multiple(device, threads=threads)
    return opts.replace(round_to=round_to, grouped=grouped)


def check_device(device: str) -> None:
    """``--device cuda`` needs onnxruntime's CUDA provider."""
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
