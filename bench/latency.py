"""onnxruntime CPU latency of original vs slim, with and without round_to (ints or "auto").

Run from the repository root::

    python bench/latency.py                      # every zoo model, ratio 0.5, round_to 8
    python bench/latency.py --models torchvision:mobilenet_v2 torchvision:resnet50 \
        --round-to auto 8 16 --threads 1 --runs 200

For each model the original, the slim model (``surgeon.slim(model, ratio, x)``) and one slim
model per ``--round-to`` value are exported to ONNX (validated against PyTorch by
``surgeon.export``) and timed in the same process with ``surgeon.bench_interleaved`` on the CPU
provider: every round runs each file once, in alternating order, so load from elsewhere on the
machine hits all of them alike. The table reports medians and, beside them, measured speedup
(median original / median slim), theoretical speedup (MACs original / MACs slim, Blalock et
al.) and their ratio: how much of the MAC reduction onnxruntime turns into time. ``auto`` is
the multiple the slim model itself ran fastest at (:func:`surgeon.autotune.timed_round_to`, shown
in the label), with grouped convs pruned as the probe measured (``grouped="auto"``). ``--json FILE`` also writes every number.
"""

from __future__ import annotations

import argparse
import json
import logging
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
from surgeon.cost import count_macs, count_params
from surgeon.exporter import export
from surgeon.files import write_bytes_atomic
from surgeon.hardware import device_name
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
    parser.add_argument(
        "--models",
        nargs="+",
        default=list(ZOO),
        help="zoo names, or torchvision:<name> (random weights, 1x3x224x224)",
    )
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument(
        "--round-to",
        nargs="+",
        default=["8"],
        help="the rounded variants: ints and / or 'auto' (measured, surgeon.hardware)",
    )
    parser.add_argument("--runs", type=int, default=50, help="timed runs per file")
    parser.add_argument("--warmup", type=int, default=10, help="untimed runs first")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    args.round_to = [r if r == "auto" else int(r) for r in args.round_to]
    return args


def _build(name: str) -> tuple[nn.Module, torch.Tensor]:
    if name.startswith("torchvision:"):
        import torchvision

        torch.manual_seed(0)
        model = torchvision.models.get_model(name.split(":", 1)[1], weights=None).eval()
        return model, torch.randn(1, 3, 224, 224)
    return create(name)


def _interleaved_medians(paths: list[Path], args: argparse.Namespace, status: Any) -> list[float]:
    """Median latency of each file, the files timed round by round (each runs once per
    round, in alternating order: surgeon.bench_interleaved) so drift hits all alike."""
    status.update(f"timing {len(paths)} files, {args.runs} interleaved rounds")
    results = surgeon.bench_interleaved(
        paths, providers=("cpu",), warmup=args.warmup, runs=args.runs, threads=args.threads
    )
    return [r["cpu"].median_ms for r in results]


def _measure(
    name: str, args: argparse.Namespace, folder: Path, status: Any
) -> list[dict[str, Any]]:
    model, x = _build(name)
    stem = name.replace(":", "_")
    status.update(f"{name}: export the original")
    paths = [export(model, x, folder / f"{stem}.onnx")]
    variants: list[tuple[str, nn.Module, float]] = []
    for round_to in (None, *args.round_to):
        label = "slim" if round_to is None else f"slim, round_to={round_to}"
        status.update(f"{name}: {label}")
        started = time.perf_counter()
        slim = surgeon.slim(model, args.ratio, x, round_to=round_to)
        if round_to == "auto":  # the multiple its own slim model ran fastest at
            label += f" ({slim.meta['surgeon.plan']['round_to']})"
        variants.append((label, slim, time.perf_counter() - started))
        paths.append(export(slim, x, folder / f"{stem}_slim_{round_to}.onnx"))
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
            f"onnxruntime {ort.__version__} CPU latency, ratio {args.ratio:g}, batch 1, median "
            f"of {args.runs} interleaved runs, intra-op threads {threads} ({device_name()})"
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
