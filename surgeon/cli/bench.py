"""``surgeon bench``: onnxruntime latency of one ONNX file, or of two side by side."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.markup import escape

from surgeon.cli.options import (
    BenchDevice,
    BenchDeviceOption,
    DebugOption,
    FirstOnnxArgument,
    RunsOption,
    SecondOnnxArgument,
    ThreadsOption,
    WarmupOption,
    check_device,
)
from surgeon.cli.output import bench_table, console, err_console, setup_logging

__all__ = ["bench_command"]


def bench_command(
    first: FirstOnnxArgument,
    second: SecondOnnxArgument = None,
    device: BenchDeviceOption = BenchDevice.all,
    runs: RunsOption = 50,
    warmup: WarmupOption = 10,
    threads: ThreadsOption = None,
    debug: DebugOption = False,
) -> None:
    """onnxruntime latency (median, p90) of one ONNX file, or of two side by side."""
    setup_logging(debug)
    check_device(device.value)
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
    table, notes = bench_table(results, labels)
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
