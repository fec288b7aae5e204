"""Hugging Face transformers models from tiny configs (random weights, no download), ratio 0.5.

For each model: parameters and MACs before -> after, attention heads before -> after (all
layers), the hidden width (input embeddings) and the first MLP width before -> after, the form
slim gave back, onnxruntime parity of the exported slim model (max |ort - torch| over the
output's largest magnitude), slim time, and Torch-Pruning's MAC drop at the same ratio when it
is installed and runs (a bench-only dependency). The configs are the ones
``tests/test_transformers.py`` uses.

Run from the repository root: ``PYTHONPATH=. python bench/transformers.py [--markdown]``.
"""

from __future__ import annotations

import os
import sys

# run as a script, this file's folder comes first on sys.path, and this file would then be
# imported as the `transformers` package it measures
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

import argparse
import copy
import logging
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

import surgeon
from bench.realworld import _time_limit
from surgeon.cost import count_macs, count_params
from tests.helpers import main_output

HEAD = [
    "model",
    "params",
    "MACs",
    "MAC drop",
    "heads",
    "hidden",
    "MLP",
    "form",
    "ORT parity",
    "slim time",
    "peer MAC drop",
]
_MLP = ("intermediate.dense", "mlp.c_fc", "mlp.up_proj", "ffn.lin1", "DenseReluDense.wi", "fc1")


def _out(m: torch.nn.Module) -> int:
    """A projection's output width (``nn.Linear``, or GPT-2's ``Conv1D`` with its ``nf``)."""
    return getattr(m, "out_features", None) or m.nf


def _q_width(model: torch.nn.Module, q: str | None) -> int:
    return sum(_out(m) for n, m in model.named_modules() if q and n.endswith(q))


def _widths(model: torch.nn.Module) -> tuple[str, str]:
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    hidden = str(emb.weight.shape[1]) if isinstance(emb, torch.nn.Embedding) else "-"
    mlp = next((str(_out(m)) for n, m in model.named_modules() if n.endswith(_MLP)), "-")
    return hidden, mlp


def _parity(slim: torch.nn.Module, x: dict[str, torch.Tensor]) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        path = surgeon.export(slim, x, Path(tmp) / "slim.onnx")
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed = {i.name: x[i.name].numpy() for i in sess.get_inputs()}
        got = sess.run(None, feed)[0]
    with torch.no_grad():
        want = main_output(slim(**x)).numpy()
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))


def _peer(model: torch.nn.Module, x: dict[str, torch.Tensor]) -> str:
    try:
        import torch_pruning as tp
    except ImportError:
        return "n/a"
    try:
        with _time_limit(300):
            m = copy.deepcopy(model)
            heads = [mod for mod in m.modules() if isinstance(mod, torch.nn.Linear)][-1:]
            tp.pruner.MetaPruner(
                m,
                x,
                importance=tp.importance.MagnitudeImportance(p=2),
                pruning_ratio=0.5,
                ignored_layers=heads,
            ).step()
            with torch.no_grad():
                if main_output(m(**x)).shape != main_output(model(**x)).shape:
                    return "fails (output shape changed)"
            return f"{count_macs(model, x) / count_macs(m, x):.2f}x"
    except Exception as exc:  # noqa: BLE001 - the peer's failure is a figure too
        return f"fails ({type(exc).__name__})"


def row(name: str) -> list[str]:
    from tests.test_transformers import build

    model, x, q = build(name)
    try:
        start = time.perf_counter()
        slim = surgeon.slim(model, 0.5, x)
        took = time.perf_counter() - start
        parity = f"{_parity(slim, x):.1e}"
    except Exception as exc:  # noqa: BLE001 - a refusal is a row
        return [
            name,
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            f"{type(exc).__name__}: {exc}"[:80],
            "-",
            "-",
        ]
    cfg_heads = getattr(model.config, "num_attention_heads", None)
    before, after = _q_width(model, q), _q_width(slim, q)
    layers = sum(1 for n, _ in model.named_modules() if q and n.endswith(q))
    heads = "-"
    if isinstance(cfg_heads, int) and before:
        heads = f"{cfg_heads * layers} -> {cfg_heads * layers * after // before}"
    (h0, m0), (h1, m1) = _widths(model), _widths(slim)
    p0, p1 = count_params(model), count_params(slim)
    c0, c1 = count_macs(model, x), count_macs(slim, x)
    return [
        name,
        f"{p0 / 1e3:.1f}K -> {p1 / 1e3:.1f}K",
        f"{c0 / 1e6:.2f}M -> {c1 / 1e6:.2f}M",
        f"{c0 / c1:.2f}x",
        heads,
        f"{h0} -> {h1}",
        f"{m0} -> {m1}",
        "own class" if not isinstance(slim, torch.fx.GraphModule) else "graph",
        parity,
        f"{took:.1f} s",
        _peer(model, x),
    ]


def main() -> None:
    from tests.test_transformers import MODELS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)
    rows: list[list[Any]] = [row(name) for name in MODELS]
    if args.markdown:
        print("| " + " | ".join(HEAD) + " |")
        print("|" + "---|" * len(HEAD))
        for r in rows:
            print("| " + " | ".join(r) + " |")
    else:
        for r in [HEAD, *rows]:
            print("  ".join(f"{c:<16}" for c in r))


if __name__ == "__main__":
    main()
