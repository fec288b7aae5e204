"""Where the time goes: onnxruntime's node profile against the session's own latency.

For each model (random weights, 224 x 224, batch 1, one thread): the original and a slim
model (ratio 0.5) exported, timed side by side (interleaved rounds) and profiled node by
node; the table gives the session's median, the sum of the node times (the profile's median
per node) and their ratio, and the three layers of the slim model that paid least (measured
speedup over MAC drop as onnxruntime runs them).

Run: ``PYTHONPATH=. python bench/layer_profile.py [--models resnet18,mobilenet_v2]``
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import torchvision

import surgeon
from surgeon.profile import layer_rows, node_profile


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18,mobilenet_v2")
    ap.add_argument("--runs", type=int, default=50)
    args = ap.parse_args()
    print("| model | file | session median (ms) | sum of node times (ms) | sum / median |")
    print("|---|---|---|---|---|")
    worst = []
    x = torch.randn(1, 3, 224, 224)
    for name in args.models.split(","):
        model = torchvision.models.get_model(name, weights=None).eval()
        slim = surgeon.slim(model, 0.5, x)
        with tempfile.TemporaryDirectory() as tmp:
            paths = [
                surgeon.export(m, x, Path(tmp) / f"{i}.onnx") for i, m in enumerate((model, slim))
            ]
            timed = surgeon.bench_interleaved(paths, x, providers="cpu", runs=args.runs, threads=1)
            profiles = [node_profile(p, x, threads=1, runs=args.runs) for p in paths]
        for label, t, prof in zip(("original", "slim"), timed, profiles, strict=True):
            median = t.median_ms("cpu")
            total = sum(n.ms for n in prof.values())
            print(f"| {name} | {label} | {median:.3f} | {total:.3f} | {total / median:.2f} |")
        rows = [r for r in layer_rows(*profiles) if r["efficiency"] is not None]
        worst += [(name, r) for r in sorted(rows, key=lambda r: r["efficiency"])[:3]]
    print("\n| model | layer | MACs as run | ms | measured / theoretical |")
    print("|---|---|---|---|---|")
    for name, r in worst:
        print(
            f"| {name} | {r['layer']} | {r['macs'][0]:,} → {r['macs'][1]:,} | "
            f"{r['ms'][0]:.3f} → {r['ms'][1]:.3f} | {r['efficiency']:.2f} |"
        )


if __name__ == "__main__":
    main()
