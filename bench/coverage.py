"""Coverage table: how each zoo architecture slims at ratio 0.5.

For every zoo model: channel groups holding parameters, how many are prunable, how many are
blocked and why (reasons grouped by kind), parameters and MACs before / after
``surgeon.slim(model, 0.5, x)``, and onnxruntime parity of the exported slim model (max abs
difference to PyTorch, relative to the output's scale).

Run: ``python bench/coverage.py [--models a,b] [--markdown]``
"""

from __future__ import annotations

import argparse
import re
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

import surgeon
from surgeon.cost import count_macs, count_params
from surgeon.models import ZOO, create


def _reason_kind(reason: str) -> str:
    text = reason.split(" [")[0]
    return re.sub(r"'[^']*'", "…", text)


def _human(v: float) -> str:
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if v >= scale:
            return f"{v / scale:.2f}{unit}"
    return f"{v:.0f}"


def _parity(slim: torch.nn.Module, x: torch.Tensor, folder: Path, name: str) -> float:
    path = surgeon.export(slim, x, folder / f"{name}.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = slim(x).numpy()
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(ZOO))
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            model, x = create(name)
            graph = surgeon.analyze(model, x)
            with_params = [g for g in graph.groups if g.params]
            prunable = [g for g in with_params if g.prunable]
            blocked = [g for g in with_params if g.blocked]
            kinds = Counter(_reason_kind(g.reasons[0]) for g in blocked)
            slim = surgeon.slim(model, 0.5, x).eval()
            p0, p1 = count_params(model), count_params(slim)
            m0, m1 = count_macs(model, x), count_macs(slim, x)
            parity = _parity(slim, x, Path(tmp), name)
            rows.append(
                (
                    name,
                    len(with_params),
                    len(prunable),
                    len(blocked),
                    f"{_human(p0)} → {_human(p1)}",
                    f"{_human(m0)} → {_human(m1)}",
                    f"{m0 / m1:.2f}x",
                    f"{parity:.1e}",
                )
            )
            notes.append((name, "; ".join(f"{n}× {k}" for k, n in kinds.most_common())))
    head = ("model", "groups", "prunable", "blocked", "params", "MACs", "MAC drop", "ORT parity")
    if args.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for r in rows:
            print("| " + " | ".join(str(c) for c in r) + " |")
        print()
        print("| model | blocked groups with parameters: reasons |")
        print("|---|---|")
        for name, why in notes:
            print(f"| {name} | {why} |")
    else:
        widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
        for r in [head, *rows]:
            print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))
        print()
        for name, why in notes:
            print(f"{name}: blocked because {why}")


if __name__ == "__main__":
    main()
