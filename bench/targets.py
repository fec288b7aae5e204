"""Targets instead of ratios: what ``surgeon.Target`` reaches on real models, and what it keeps.

Two tables:

1. ``--models``: torchvision and timm models of different families (random weights, 224 x 224,
   batch 1): ``Target(speedup=2.0, threads=1)`` measured in onnxruntime on this CPU against
   the original (interleaved rounds), and ``Target(macs=3.0)`` / ``Target(params=4.0)``
   counted; per target the factor achieved, the rounds it took, the MAC factor and the slim
   time (export and timing included).
2. ``--digits``: accuracy at equal measured speedup on scikit-learn's digits (a small CNN
   trained from a fixed seed): target-driven allocation (``Target(speedup=...)``) against the
   uniform ratio that reaches the same measured speedup and against Torch-Pruning's global
   pruning at the same MACs, zero-shot and after the same fine-tune, over the same seeds.

Run: ``python bench/targets.py --models`` / ``python bench/targets.py --digits``
(``--out FILE`` writes the table as Markdown too).
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

import torch

import surgeon
from surgeon.keys import PLAN_KEY

MODELS = (
    "tv:resnet50",
    "tv:mobilenet_v2",
    "tv:efficientnet_b0",
    "tv:regnet_y_400mf",
    "tv:convnext_tiny",
    "tv:densenet121",
    "tv:shufflenet_v2_x1_0",
    "tv:swin_t",
    "timm:vit_small_patch16_224",
    "timm:mobilevit_xs",
)


def build(spec: str) -> torch.nn.Module:
    lib, name = spec.split(":")
    if lib == "tv":
        import torchvision

        return torchvision.models.get_model(name, weights=None).eval()
    import timm

    return timm.create_model(name, pretrained=False).eval()


def one(model: torch.nn.Module, target: surgeon.Target, x: torch.Tensor) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        slim = surgeon.slim(model, target, x)
    except surgeon.SurgeonError as exc:
        return {"error": f"{type(exc).__name__}: {str(exc)[:160]}"}
    found = slim.meta[PLAN_KEY]["target"]
    return {
        "achieved": found["achieved"],
        "rounds": len(found["rounds"]),
        "macs": found["theoretical"],
        "form": type(slim).__name__,
        "seconds": time.perf_counter() - start,
    }


def models_table(specs: list[str]) -> list[str]:
    targets = (
        surgeon.Target(speedup=2.0, threads=1),
        surgeon.Target(macs=3.0),
        surgeon.Target(params=4.0),
    )
    lines = [
        "| model | target | achieved | rounds | MACs fewer | form | slim time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    x = torch.randn(1, 3, 224, 224)
    for spec in specs:
        model = build(spec)
        for target in targets:
            row = one(model, target, x)
            label = f"{target.kind} {target.value:g}x"
            if "error" in row:
                lines.append(f"| {spec} | {label} | {row['error']} | | | | |")
            else:
                lines.append(
                    f"| {spec} | {label} | {row['achieved']:.2f}x | {row['rounds']} | "
                    f"{row['macs']:.2f}x | {row['form']} | {row['seconds']:.0f} |"
                )
            print(lines[-1], flush=True)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="?", const=",".join(MODELS), default=None)
    ap.add_argument("--digits", action="store_true")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    torch.manual_seed(0)
    lines: list[str] = []
    if args.models:
        print(f"torch {torch.__version__}; onnxruntime on this CPU, 1 thread, batch 1\n")
        lines += models_table(args.models.split(","))
    if args.digits:
        from bench.targets_digits import digits_table

        lines += digits_table(args.seeds)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
