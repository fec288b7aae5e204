"""surgeon against the most used peer, Torch-Pruning, on real torchvision models, side by side.

For each model (torchvision, random weights, 1x3x224x224, ratio 0.5, L2 magnitude, the last
Linear kept whole, one torch thread):

* slim time: ``surgeon.slim(model, 0.5, x)`` and ``MetaPruner(model, x, ...).step()`` (the
  peer's dependency graph is built inside its constructor, so both columns are the whole
  job), interleaved in one process (peer, surgeon, peer, surgeon, ...) after one untimed run
  of each, on a fresh copy each time (the copy is not timed); min and median of ``--repeat``;
* peak memory: the process's resident memory sampled every millisecond during the call,
  above what it was just before (MiB), and as a multiple of the model's parameter bytes;
* one eager forward of the original (no_grad, min of 3): what a single check of a result by
  running the model costs, beside the slim times;
* MAC drop (``surgeon.count_macs``), and whether the output shape is kept;
* onnxruntime CPU latency of the original, the peer's slim model and surgeon's, one intra-op
  thread, batch 1, timed round by round in alternating order (``surgeon.bench_interleaved``),
  and measured / theoretical speedup for each.

A peer failure is a row too ("fails (ExceptionName)"). The peer is a bench-only dependency
(``pip install torch-pruning``). Run from the repository root::

    PYTHONPATH=. python bench/vs_peer.py [--models resnet18 resnet50 ...] [--repeat 3]
        [--runs 50] [--markdown] [--json FILE]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import statistics
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import torch

import surgeon
from bench.realworld import build
from surgeon.cost import count_macs
from surgeon.files import write_bytes_atomic
from tests.helpers import main_output

MODELS = [
    "resnet18",
    "resnet50",
    "mobilenet_v2",
    "efficientnet_b0",
    "densenet121",
    "vgg16_bn",
    "convnext_tiny",
    "vit_b_16",
]
PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class _Peak:
    """Peak resident memory above the level at entry, sampled every millisecond."""

    def __enter__(self) -> _Peak:
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def above(self) -> int:
        return self.peak - self.base


def _peer(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    import torch_pruning as tp

    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1:]
    pruner = tp.pruner.MetaPruner(
        model,
        x,
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=0.5,
        ignored_layers=head,
    )
    pruner.step()
    return model


def _ours(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    return surgeon.slim(model, 0.5, x)


def _timed(fn, model: torch.nn.Module, x: torch.Tensor) -> tuple[float, int, Any]:
    """Seconds, peak memory above the start (bytes), and the result or the exception."""
    work = copy.deepcopy(model)
    with _Peak() as peak:
        start = time.perf_counter()
        try:
            out: Any = fn(work, x)
        except Exception as exc:  # noqa: BLE001 - a failure is a figure too
            out = exc
        seconds = time.perf_counter() - start
    return seconds, peak.above, out


def measure(name: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    model = build(f"tv:{name}")
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    row: dict[str, Any] = {"model": name, "param_mib": param_bytes / 2**20}
    times: dict[str, list[float]] = {"peer": [], "surgeon": []}
    peaks: dict[str, int] = {"peer": 0, "surgeon": 0}
    results: dict[str, Any] = {}
    for rep in range(args.repeat + 1):  # the first round is the untimed warm-up
        for who, fn in (("peer", _peer), ("surgeon", _ours)):
            seconds, above, out = _timed(fn, model, x)
            if rep:
                times[who].append(seconds)
                peaks[who] = max(peaks[who], above)
            results[who] = out
    with torch.no_grad():
        want = main_output(model(x)).shape
        forwards = []
        for _ in range(3):  # the floor of a tool that checks its result by running it
            start = time.perf_counter()
            model(x)
            forwards.append(time.perf_counter() - start)
    row["forward_s"] = min(forwards)
    macs = count_macs(model, x)
    paths = [surgeon.export(model, x, folder / f"{name}.onnx")]
    labels = ["original"]
    for who in ("peer", "surgeon"):
        out = results[who]
        cell: dict[str, Any] = {
            "min_s": min(times[who]),
            "median_s": statistics.median(times[who]),
            "peak_mib": peaks[who] / 2**20,
            "peak_x_params": peaks[who] / param_bytes,
        }
        if isinstance(out, Exception):
            cell["fails"] = type(out).__name__
        else:
            try:
                with torch.no_grad():
                    got = main_output(out(x)).shape
            except Exception as exc:  # noqa: BLE001 - pruned, but no longer runs
                got = None
                cell["fails"] = f"the pruned model fails: {type(exc).__name__}"
            if got is None:
                pass
            elif got != want:
                cell["fails"] = f"output shape {tuple(got)} != {tuple(want)}"
            else:
                cell["mac_drop"] = macs / count_macs(out, x)
                try:
                    paths.append(surgeon.export(out, x, folder / f"{name}_{who}.onnx"))
                    labels.append(who)
                except Exception as exc:  # noqa: BLE001
                    cell["export_fails"] = type(exc).__name__
        row[who] = cell
    timed = surgeon.bench_interleaved(
        paths, x, providers="cpu", warmup=5, runs=args.runs, threads=1
    )
    original_ms = timed[0]["cpu"].median_ms
    row["original_ms"] = original_ms
    for label, result in zip(labels[1:], timed[1:], strict=True):
        cell = row[label]
        cell["ms"] = result["cpu"].median_ms
        cell["measured"] = original_ms / cell["ms"]
        cell["measured_over_theoretical"] = cell["measured"] / cell["mac_drop"]
    return row


def _cells(row: dict[str, Any]) -> list[str]:
    peer, ours = row["peer"], row["surgeon"]

    def fmt(cell: dict[str, Any], key: str, spec: str) -> str:
        if key not in cell:
            return f"fails ({cell['fails']})" if "fails" in cell else "-"
        return format(cell[key], spec)

    return [
        row["model"],
        f"{row['forward_s']:.3f}",
        f"{peer['min_s']:.2f} / {peer['median_s']:.2f}",
        f"{ours['min_s']:.2f} / {ours['median_s']:.2f}",
        f"{ours['min_s'] / peer['min_s']:.2f}",
        f"{peer['peak_mib']:.0f} / {ours['peak_mib']:.0f} ({ours['peak_x_params']:.2f}x)",
        fmt(peer, "mac_drop", ".2f"),
        fmt(ours, "mac_drop", ".2f"),
        f"{row['original_ms']:.1f}",
        fmt(peer, "ms", ".1f"),
        fmt(ours, "ms", ".1f"),
        fmt(peer, "measured_over_theoretical", ".2f"),
        fmt(ours, "measured_over_theoretical", ".2f"),
    ]


HEADERS = [
    "model",
    "one forward s",
    "peer s (min / med)",
    "surgeon s (min / med)",
    "surgeon / peer",
    "peak MiB peer / surgeon (x params)",
    "MAC drop peer",
    "MAC drop surgeon",
    "orig ms",
    "peer ms",
    "surgeon ms",
    "meas/theor peer",
    "meas/theor surgeon",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--repeat", type=int, default=3, help="timed slims per tool (after one)")
    ap.add_argument("--runs", type=int, default=50, help="interleaved onnxruntime runs")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    for noisy in ("surgeon", "torch", "onnxscript", "onnx_ir"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    rows = []
    with tempfile.TemporaryDirectory(prefix="surgeon-vs-peer-") as tmp:
        for name in args.models:
            rows.append(measure(name, args, Path(tmp)))
            print(" | ".join(_cells(rows[-1])), flush=True)
    print()
    if args.markdown:
        print("| " + " | ".join(HEADERS) + " |")
        print("|" + "---|" * len(HEADERS))
        for row in rows:
            print("| " + " | ".join(_cells(row)) + " |")
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="surgeon vs Torch-Pruning, ratio 0.5, one thread")
        for h in HEADERS:
            table.add_column(h, justify="left" if h == "model" else "right")
        for row in rows:
            table.add_row(*_cells(row))
        Console(width=200).print(table)
    if args.json is not None:
        write_bytes_atomic(args.json, (json.dumps(rows, indent=2) + "\n").encode())


if __name__ == "__main__":
    main()
