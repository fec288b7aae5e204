"""``surgeon export``: slim a model, export it to ONNX and compare it with the original.

The steps: check the flags and the output paths, load the model, slim it, export both models
to a temporary folder (each checked against PyTorch in onnxruntime), time them side by side,
measure the report, then write the outputs. Every output file is written whole or not at
all, and a failure or Ctrl-C after some of them were written removes those again
(:func:`all_or_nothing`).
"""

from __future__ import annotations

import contextlib
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape

from surgeon.cli.loading import build, parse_shape, spec_name
from surgeon.cli.options import (
    Attention,
    AttentionOption,
    CompensateOption,
    DebugOption,
    Device,
    DeviceOption,
    DynamicBatchOption,
    ExportModelArgument,
    GroupedOption,
    HtmlOption,
    IgnoreOption,
    ImportanceOption,
    InputShapeOption,
    JsonOption,
    LatencyOption,
    LeafModuleOption,
    MacsOption,
    NoBenchOption,
    OpsetOption,
    OutputOption,
    ParamsOption,
    PlotsOption,
    RatioOption,
    ReportOption,
    RoundToOption,
    RunsOption,
    SaveOption,
    Scope,
    ScopeOption,
    SpeedupOption,
    ThreadsOption,
    VersionOption,
    WarmupOption,
    WeightsOption,
    check_device,
    measured,
    ratio_or_target,
    slim_options,
    with_names,
)
from surgeon.cli.output import (
    console,
    form_of,
    print_diagnosis,
    print_specialised,
    print_target,
    progress,
    progress_bar,
    setup_logging,
    stdout_for,
)
from surgeon.errors import SurgeonFixedSizeError, SurgeonInputError
from surgeon.keys import SOURCE_KEY

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from surgeon.benchmark import BenchResult
    from surgeon.options import SlimOptions
    from surgeon.report import Report

__all__ = ["export_command", "Outputs", "Timing", "output_paths", "all_or_nothing"]


@dataclass(frozen=True)
class Outputs:
    """The files export writes: the ONNX file, and the report and surgeon file if asked for."""

    onnx: Path
    report: Path | None
    save: Path | None
    html: Path | None = None
    plots: Path | None = None


@dataclass(frozen=True)
class Timing:
    """How latency is measured: the onnxruntime provider, the rounds, the threads, and
    whether at all (``--no-bench``). The counts are checked here: no library setting holds
    them."""

    device: str
    runs: int
    warmup: int
    threads: int | None
    bench: bool

    def __post_init__(self) -> None:
        threads = self.threads
        if self.runs < 1 or self.warmup < 0 or (threads is not None and threads < 1):
            raise SurgeonInputError("--runs must be >= 1, --warmup >= 0 and --threads >= 1")


def export_command(
    model: ExportModelArgument = None,
    ratio: RatioOption = None,
    speedup: SpeedupOption = None,
    latency_ms: LatencyOption = None,
    macs: MacsOption = None,
    params: ParamsOption = None,
    input_shape: InputShapeOption = None,
    weights: WeightsOption = None,
    output: OutputOption = None,
    save: SaveOption = None,
    report: ReportOption = None,
    html: HtmlOption = None,
    plots: PlotsOption = None,
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
    runs: RunsOption = 50,
    warmup: WarmupOption = 10,
    threads: ThreadsOption = None,
    opset: OpsetOption = None,
    dynamic_batch: DynamicBatchOption = True,
    debug: DebugOption = False,
    version: VersionOption = False,
) -> None:
    """Slim MODEL, export it to ONNX (checked against PyTorch) and compare it with the original."""
    with stdout_for(as_json) as stdout:
        setup_logging(debug)
        from surgeon.models import DEFAULT_MODEL

        spec = model or DEFAULT_MODEL
        shape = parse_shape(input_shape) if input_shape is not None else None
        amount = ratio_or_target(
            ratio, speedup=speedup, latency_ms=latency_ms, macs=macs, params=params,
            device=device.value, threads=threads,
        )  # fmt: skip
        opts = slim_options(
            amount, importance=importance, scope=scope, round_to=round_to, attention=attention,
            grouped=grouped, ignore=ignore, leaf_module=leaf_module, compensate=compensate,
        )  # fmt: skip
        timing = Timing(device.value, runs, warmup, threads, bench=not no_bench)
        _check_opset(opset)
        check_device(timing.device)
        outputs = output_paths(spec_name(spec), output, report, save, html, plots)
        with progress(f"load {spec}"):
            name, original, example = build(spec, shape, weights)
        opts = with_names(opts, original)
        slim_model = _slim(spec, original, example, opts, timing)
        settings = _settings(spec, example, slim_model, opts, weights, timing, outputs)
        with all_or_nothing() as written:
            result = _export_and_compare(
                spec, name, (original, slim_model), example, settings, outputs.onnx, written,
                opset=opset, dynamic_batch=dynamic_batch, html=outputs.html, plots=outputs.plots,
            )  # fmt: skip
            _write_extras(result, slim_model, outputs, written)
            _print_result(result, settings, opts, written)
            if as_json:
                stdout.write(result.to_json())
                stdout.flush()


def output_paths(
    name: str,
    output: Path | None,
    report: Path | None,
    save: Path | None,
    html: Path | None = None,
    plots: Path | None = None,
) -> Outputs:
    """The ONNX file, the report file, the surgeon file and the HTML page (those asked for),
    checked to be writable and distinct; the plots folder, to be a folder or creatable."""
    from surgeon.files import check_output_path

    outputs = Outputs(
        check_output_path(output or Path.cwd() / f"{name}_slim.onnx", what="ONNX file"),
        check_output_path(report, what="report file") if report is not None else None,
        check_output_path(save, what="surgeon file") if save is not None else None,
        check_output_path(html, what="HTML report") if html is not None else None,
        _plots_folder(plots) if plots is not None else None,
    )
    flags = {
        "--output": outputs.onnx,
        "--report": outputs.report,
        "--save": outputs.save,
        "--html": outputs.html,
    }
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
    return outputs


def _plots_folder(path: Path) -> Path:
    """``--plots``: an existing folder, or one whose parent exists (it is made at the end)."""
    path = path.expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise SurgeonInputError(f"--plots {str(path)!r} is a file: give a folder for the PNGs")
    if not path.exists() and not path.parent.is_dir():
        raise SurgeonInputError(
            f"--plots {str(path)!r}: its parent folder does not exist; create it first"
        )
    return path


def _slim(
    spec: str, original: nn.Module, example: Any, opts: SlimOptions, timing: Timing
) -> nn.Module:
    """The slim model, with what is ``auto`` measured on ``timing.device``. ``round_to="auto"``
    with timing on: made at the multiple at which it runs fastest there, timed from the
    probe's multiple up (:func:`surgeon.autotune.timed_round_to`); else at the probe's. A
    model that only comes back as a graph at the example's sizes is exported as that graph:
    the ONNX file holds for those sizes, and a line says so."""
    used = measured(opts, timing.device, timing.threads)  # shows the probe as a step
    try:
        return _slim_as(spec, original, example, used, opts, timing)
    except SurgeonFixedSizeError as exc:
        console.print(f"[bold yellow]fixed sizes[/]: {escape(str(exc))}")
        return _slim_as(spec, original, example, used.replace(returns="graph"), opts, timing)


def _slim_as(
    spec: str,
    original: nn.Module,
    example: Any,
    used: SlimOptions,
    opts: SlimOptions,
    timing: Timing,
) -> nn.Module:
    how = (
        f"to {opts.target.describe()} ({opts.importance})"
        if opts.target is not None
        else f"at ratio {opts.ratio:g} ({opts.importance}, {opts.scope})"
    )
    with (
        progress(f"slim {spec} {how}"),
        warnings.catch_warnings(),  # a graph at fixed sizes: said once, by the caller
    ):
        warnings.simplefilter("ignore", UserWarning)
        if opts.round_to == "auto" and timing.bench and opts.target is None:
            from surgeon.autotune import timed_round_to

            return timed_round_to(
                original, example, used.replace(round_to="auto"), provider=timing.device,
                threads=timing.threads,
            ).model  # fmt: skip
        import surgeon

        return surgeon.slim(original, used, example)


def _settings(
    spec: str,
    example: Any,
    slim_model: nn.Module,
    opts: SlimOptions,
    weights: Path | None,
    timing: Timing,
    outputs: Outputs,
) -> dict[str, Any]:
    """What the report records of this export: the slimming settings, the flags, and what
    slim found (little pruned, specialised, the form it returned). ``opts``: as the flags
    gave them, before anything was measured."""
    from surgeon.keys import DIAGNOSIS_KEY, PLAN_KEY

    plan = slim_model.meta.get(PLAN_KEY, {})
    record = opts.to_record()
    return {
        **record,
        # what was used where the flag said auto (measured on the device, or timed)
        "round_to": plan.get("round_to", record["round_to"]),
        "grouped": plan.get("grouped", record["grouped"]),
        # round_to auto: the median ms of the slim model at each multiple timed
        "round_to_timed": plan.get("round_to_timed"),
        # round_to auto: the multiple was measured on the device with the threads given
        "round_to_auto": opts.round_to == "auto",
        "model": spec,
        "input_shape": (
            list(example.shape) if hasattr(example, "shape") else [list(t.shape) for t in example]
        ),
        "weights": None if weights is None else str(weights.expanduser().absolute()),
        "device": timing.device,
        "bench": timing.bench,
        "runs": timing.runs,
        "warmup": timing.warmup,
        "threads": timing.threads,
        "onnx": str(outputs.onnx),
        "save": None if outputs.save is None else str(outputs.save),
        "little_pruned": slim_model.meta.get(DIAGNOSIS_KEY),
        "specialised": plan.get("specialised"),
        "form": form_of(slim_model),
        # a target: what was asked, achieved (measured), theoretical, and the rounds
        "target": plan.get("target"),
    }


def _export_and_compare(
    spec: str,
    name: str,
    models: tuple[nn.Module, nn.Module],
    example: Any,
    settings: dict[str, Any],
    out: Path,
    written: list[Path],
    *,
    opset: int | None,
    dynamic_batch: bool,
    html: Path | None = None,
    plots: Path | None = None,
) -> Report:
    """Export the original and the slim model to a temporary folder, time and profile them
    (unless ``settings["bench"]`` is off), measure the report (named after ``spec``, as the
    user typed it), copy the slim ONNX file to ``out`` and draw the page (``html``) and its
    figures (``plots``), each added to ``written``."""
    from surgeon.files import copy_file_atomic
    from surgeon.report import build_report

    with tempfile.TemporaryDirectory(prefix="surgeon-") as tmp:
        paths = (Path(tmp) / f"{name}.onnx", Path(tmp) / f"{name}_slim.onnx")
        _export_both(
            models, example, paths, opset=opset, dynamic_batch=dynamic_batch, settings=settings
        )
        feed = example if SOURCE_KEY in getattr(models[0], "meta", {}) else None  # free dims
        benches = _bench_both(paths, settings, feed) if settings["bench"] else (None, None)
        layers = _profile_both(paths, settings, feed) if settings["bench"] else []
        with progress("count parameters and MACs"):
            result = build_report(
                spec, *models, example, original_onnx=paths[0], slim_onnx=paths[1],
                original_bench=benches[0], slim_bench=benches[1], settings=settings,
                layers=layers,
            )  # fmt: skip
        copy_file_atomic(paths[1], out, what="ONNX file")
        written.append(out)
    if html is not None or plots is not None:
        from surgeon.keys import PLAN_KEY
        from surgeon.page import write_page

        plan = getattr(models[1], "meta", {}).get(PLAN_KEY)
        with progress("draw the report page"), tempfile.TemporaryDirectory() as tmp:
            page = html or Path(tmp) / "page.html"  # --plots alone: the page is not kept
            made = write_page(result, page, plan=plan, benches=benches, plots=plots)
        if html is not None:
            written.append(made)
        if plots is not None:
            written.extend(p for n in FIGURES if (p := plots / f"{n}.png").exists())
    return result


#: the figures the page draws (and --plots writes as <name>.png)
FIGURES = ("widths", "layers", "latency")
#: runs of each model the node profile times
PROFILE_RUNS = 20


def _profile_both(
    paths: tuple[Path, Path], settings: dict[str, Any], example: Any = None
) -> list[dict[str, Any]]:
    """onnxruntime's node profile of both files, matched by node: the per-layer rows."""
    from surgeon.profile import layer_rows, node_profile

    runs, warmup = min(PROFILE_RUNS, settings["runs"]), 3
    with progress_bar(
        f"profile both, node by node ({settings['device']})", 2 * (runs + warmup)
    ) as advance:
        found = [
            node_profile(
                p, example, provider=settings["device"], threads=settings["threads"], runs=runs,
                warmup=warmup, on_run=advance,
            )
            for p in paths
        ]  # fmt: skip
    return layer_rows(*found)


def _export_both(
    models: tuple[nn.Module, nn.Module],
    example: Any,
    paths: tuple[Path, Path],
    *,
    opset: int | None,
    dynamic_batch: bool,
    settings: dict[str, Any] | None = None,
) -> None:
    """Export the slim model, then the original (for comparison), each to its path."""
    from surgeon.exporter import export

    original, slim_model = models
    source = getattr(original, "meta", {}).get(SOURCE_KEY)
    if source is not None:  # an ONNX file in: the original is that file
        import onnx

        from surgeon.onnxin.job import removed_record, write_slim_onnx

        zero = settings.get("target") is None and settings.get("ratio") == 0
        with progress("export the slim graph under the file's names and opset; check it"):
            write_slim_onnx(
                source, slim_model, paths[1], opset=opset, against_original=zero or None,
                metadata=removed_record(source, slim_model, settings),
            )  # fmt: skip
        onnx.save(onnx.load(str(source.path)), str(paths[0]))
        return
    with progress("export the slim model to ONNX and check it with onnxruntime"):
        export(slim_model, example, paths[1], opset=opset, dynamic_batch=dynamic_batch)
    with progress("export the original model to ONNX (temporary, for comparison)"):
        export(original, example, paths[0], opset=opset, dynamic_batch=dynamic_batch)


def _bench_both(
    paths: tuple[Path, Path], settings: dict[str, Any], example: Any = None
) -> tuple[BenchResult, BenchResult]:
    """onnxruntime latency of the original and the slim ONNX file, timed side by side: each
    round runs both once, so that the machine's noise falls on both alike."""
    from surgeon.benchmark import bench_interleaved

    device, runs = settings["device"], settings["runs"]
    with progress(f"time both with onnxruntime on {device} ({runs} interleaved rounds)"):
        original_bench, slim_bench = bench_interleaved(
            paths, example, providers=(device,), warmup=settings["warmup"], runs=runs,
            threads=settings["threads"],
        )  # fmt: skip
    return original_bench, slim_bench


def _write_extras(
    result: Report, slim_model: nn.Module, outputs: Outputs, written: list[Path]
) -> None:
    """The report (``--report``) and the slim PyTorch model (``--save``), if asked for."""
    if outputs.report is not None:
        result.save_json(outputs.report)
        written.append(outputs.report)
    if outputs.save is not None:
        import surgeon

        with progress(f"save the slim model to {outputs.save.name}"):
            surgeon.save(slim_model, outputs.save)
        written.append(outputs.save)


def _print_result(
    result: Report, settings: dict[str, Any], opts: SlimOptions, written: list[Path]
) -> None:
    """The report's table, what slim found, and the files written."""
    console.print(result.render())
    print_diagnosis(settings["little_pruned"])
    print_specialised(settings["specialised"])
    print_target(settings["target"])
    console.print(f"form: {escape(settings['form'])}; attention prunes: {opts.attention}")
    for path in written:
        console.print(f"wrote {path}", markup=False, highlight=False)


@contextlib.contextmanager
def all_or_nothing() -> Iterator[list[Path]]:
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


def _check_opset(opset: int | None) -> None:
    """``--opset`` one the exporter writes, checked before any slow work."""
    if opset is None:
        return
    from surgeon.exporter import _MIN_OPSET, max_opset

    if not _MIN_OPSET <= opset <= max_opset():
        raise SurgeonInputError(
            f"--opset {opset} is out of range: the exporter writes opsets {_MIN_OPSET} to "
            f"{max_opset()} (the newest the installed onnx defines); give one of those, or "
            "leave --opset out for the exporter's default"
        )
