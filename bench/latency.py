"""onnxruntime CPU latency of original vs slim, for every zoo model, with and without round_to.

Run from the repository root::

    python bench/latency.py                      # every zoo model, ratio 0.5
    python bench/latency.py --models resnet18 mobilenet_v2 --runs 100 --threads 4

For each model the original, the slim model (``surgeon.slim(model, ratio, x)``) and the slim
model with ``round_to=8`` are exported to ONNX (validated against PyTorch by
``surgeon.export``) and timed in the same process with ``surgeon.bench`` on the CPU provider,
in alternating rounds (original, slim, slim rounded, original, ...) so that load from elsewhere
on the machine hits all three alike. The table reports medians (of the round medians) and,
beside them, measured speedup (median original / median slim), theoretical speedup (MACs
original / MACs slim, Blalock et al.) and their ratio: how much of the MAC reduction
onnxruntime turns into time. ``--json FILE`` also writes every number.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import onnxruntime as ort
import torch
from rich.console import Console
from rich.table import Table
from torch import nn

import surgeon
from surgeon.benchmark import bench
from surgeon.cost import count_macs, count_params
from surgeon.exporter import export, write_bytes_atomic
from surgeon.models import ZOO, create

# piped into a file or CI log, Rich would wrap the table at 80 columns
console = Console() if sys.stdout.isatty() else Console(width=150)


def _human(value: float) -> str:
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(ZOO), choices=list(ZOO))
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--round-to", type=int, default=8, help="the rounded variant's N")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10, help="untimed runs before each round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating timing rounds")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    return parser.parse_args(argv)


def _interleaved_medians(paths: list[Path], args: argparse.Namespace, status: Any) -> list[float]:
    """Median latency of each file, timed in alternating rounds so drift hits all alike.

    Each of ``args.rounds`` rounds times every file for ``runs / rounds`` runs (after the warm-up);
    a file's latency is the median of its round medians.
    """
    per_round = max(1, args.runs // args.rounds)
    medians: list[list[float]] = [[] for _ in paths]
    for round_index in range(args.rounds):
        for i, path in enumerate(paths):
            status.update(f"timing {path.stem} (round {round_index + 1}/{args.rounds})")
            result = bench(
                path,
                providers=("cpu",),
                warmup=args.warmup,
                runs=per_round,
                threads=args.threads,
            )
            medians[i].append(result["cpu"].median_ms)
    return [statistics.median(m) for m in medians]


def _measure(
    name: str, args: argparse.Namespace, folder: Path, status: Any
) -> list[dict[str, Any]]:
    model, x = create(name)
    status.update(f"{name}: export the original")
    paths = [export(model, x, folder / f"{name}.onnx")]
    variants: list[tuple[str, nn.Module, float]] = []
    for round_to in (None, args.round_to):
        label = "slim" if round_to is None else f"slim, round_to={round_to}"
        status.update(f"{name}: {label}")
        started = time.perf_counter()
        slim = surgeon.slim(model, args.ratio, x, round_to=round_to)
        variants.append((label, slim, time.perf_counter() - started))
        paths.append(export(slim, x, folder / f"{name}_slim_{round_to}.onnx"))
    original_ms, *slim_ms = _interleaved_medians(paths, args, status)
    original_macs = count_macs(model, x)
    rows = []
    for (label, slim, seconds), latency in zip(variants, slim_ms, strict=True):
        macs = count_macs(slim, x)
        measured = original_ms / latency
        theoretical = original_macs / macs
        rows.append(
            {
                "model": name,
                "variant": label,
                "input_shape": list(x.shape),
                "params_original": count_params(model),
                "params_slim": count_params(slim),
                "macs_original": original_macs,
                "macs_slim": macs,
                "latency_original_ms": original_ms,
                "latency_slim_ms": latency,
                "measured_speedup": measured,
                "theoretical_speedup": theoretical,
                "measured_over_theoretical": measured / theoretical,
                "slim_seconds": seconds,
            }
        )
    return rows


def _table(rows: list[dict[str, Any]], args: argparse.Namespace) -> Table:
    threads = "default" if args.threads is None else str(args.threads)
    table = Table(
        title=(
            f"onnxruntime {ort.__version__} CPU latency, ratio {args.ratio:g}, median of "
            f"{args.rounds} interleaved rounds of {max(1, args.runs // args.rounds)} runs, "
            f"intra-op threads {threads} ({platform.processor() or 'cpu'})"
        ),
        title_justify="left",
    )
    for column in ("model", "variant", "params", "MACs"):
        table.add_column(column, justify="left" if column in ("model", "variant") else "right")
    for column in ("original ms", "slim ms", "measured", "theoretical", "measured / theor."):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            row["model"],
            row["variant"],
            f"{_human(row['params_original'])} -> {_human(row['params_slim'])}",
            f"{_human(row['macs_original'])} -> {_human(row['macs_slim'])}",
            f"{row['latency_original_ms']:.3f}",
            f"{row['latency_slim_ms']:.3f}",
            f"{row['measured_speedup']:.2f}x",
            f"{row['theoretical_speedup']:.2f}x",
            f"{row['measured_over_theoretical']:.2f}",
        )
    return table


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    warnings.filterwarnings("ignore")
    for name in ("torch", "onnxscript", "onnx_ir"):
        logging.getLogger(name).setLevel(logging.ERROR)
    torch.set_grad_enabled(False)
    rows: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="surgeon-bench-") as tmp,
        console.status("starting") as status,
    ):
        for name in args.models:
            rows.extend(_measure(name, args, Path(tmp), status))
    console.print(_table(rows, args))
    if args.json is not None:
        write_bytes_atomic(args.json, (json.dumps(rows, indent=2) + "\n").encode())
        console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
