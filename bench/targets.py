"""Targets instead of ratios: what ``surgeon.Target`` reaches on real models, and what it keeps.

Three tables:

1. ``--models``: torchvision and timm models of different families (random weights, 224 x 224,
   batch 1): ``Target(speedup=2.0, threads=1)`` measured in onnxruntime on this CPU against
   the original (interleaved rounds), and ``Target(macs=3.0)`` / ``Target(params=4.0)``
   counted; per target the factor achieved, the rounds it took, the MAC factor and the slim
   time (export and timing included).
2. ``--digits``: accuracy at equal measured speedup on scikit-learn's digits (a small CNN
   trained from a fixed seed): a uniform ratio, target-driven allocation asked for the speedup
   the ratio measured (``Target(speedup=...)``), and Torch-Pruning's global pruning at the
   target-driven model's MACs; zero-shot and after the same fine-tune, over the same seeds.

3. ``--layers``: ``Target(speedup=2.0)`` on ResNet-50 and a ViT with the widths alone and with
   whole blocks (``structures`` with ``"layers"``): how many blocks went and how many channel
   classes the widths lost.

Run: ``python bench/targets.py --models`` / ``--digits`` / ``--layers``
(``--out FILE`` writes the table as Markdown too). Torch-Pruning is a bench-only dependency
(``pip install torch-pruning``).
"""

from __future__ import annotations

import argparse
import copy
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


# -- digits: accuracy at equal measured speedup -------------------------------------------------
FINETUNE_EPOCHS = 0.5  # short: a long fine-tune brings every method to the ceiling
BATCH = 64  # the timed batch (the digits net at batch 1 is all runtime overhead)


def _tp_global(
    model: torch.nn.Module, x: torch.Tensor, ratio: float, multiple: int
) -> torch.nn.Module:
    """Torch-Pruning's global magnitude pruning (L2, the head kept) at ``ratio``, widths
    rounded to ``multiple`` as surgeon's are."""
    import torch_pruning as tp

    model = copy.deepcopy(model)
    pruner = tp.pruner.MetaPruner(
        model, x, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=ratio,
        global_pruning=True, ignored_layers=[model.fc], round_to=multiple,
    )  # fmt: skip
    pruner.step()
    return model.eval()


def _at_macs(make, macs: int, x: torch.Tensor, lo: float = 0.0, hi: float = 0.95) -> Any:
    """``make(r)`` at the ratio whose MACs come closest to ``macs`` from above (bisection)."""
    best = None
    for _ in range(14):
        mid = (lo + hi) / 2
        m = make(mid)
        if surgeon.count_macs(m, x) > macs:
            lo = mid
        else:
            hi, best = mid, m
    return best if best is not None else make(hi)


def _speedups(models: list[torch.nn.Module], x: torch.Tensor, runs: int = 200) -> list[float]:
    """Each model's measured speedup over the first, timed side by side in onnxruntime (one
    thread, interleaved rounds)."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        paths = [surgeon.export(m, x, Path(tmp) / f"m{i}.onnx") for i, m in enumerate(models)]
        timed = surgeon.bench_interleaved(
            paths, x, providers=("cpu",), warmup=20, runs=runs, threads=1
        )
    ms = [t.median_ms("cpu") for t in timed]
    return [ms[0] / m for m in ms]


def digits_table(seeds: int, ratios: str) -> list[str]:
    """Per uniform ratio: its measured speedup is the target-driven slim's target, and
    Torch-Pruning's global pruning is taken at the target-driven slim's MACs; all three are
    timed again side by side, then fine-tuned ``FINETUNE_EPOCHS`` with ``seeds`` seeds."""
    from surgeon.digits import accuracy, fit, load_digits_split
    from surgeon.hardware import channel_multiple
    from surgeon.models.digits import digits_cnn

    # every method keeps widths of one multiple: this CPU's probe's, at least 8 (onnxruntime's
    # NCHWc blocks: the probe's smaller multiple leaves this net's layers off the blocks)
    multiple = max(8, channel_multiple("cpu", threads=1))

    data = load_digits_split()
    torch.manual_seed(0)
    base = fit(digits_cnn(), data, epochs=4, seed=0)
    x = data.x_test[:BATCH]
    base_acc = accuracy(base, data.x_test, data.y_test)
    print(
        f"\ndigits: baseline test accuracy {base_acc:.1f}%; timed at batch {BATCH}, one thread; "
        f"widths rounded to {multiple} for every method\n"
    )
    lines = [
        "| speed of the ratio | method | measured speedup | MACs fewer | zero-shot | fine-tuned |",
        "|---|---|---|---|---|---|",
    ]
    for ratio in (float(v) for v in ratios.split(",")):
        uniform = surgeon.slim(base, ratio, x, round_to=multiple)
        speed = _speedups([base, uniform], x)[1]  # the uniform ratio's speed is the target's
        target = surgeon.slim(base, surgeon.Target(speedup=speed, threads=1), x, round_to=multiple)
        macs = surgeon.count_macs(target, x)
        peer = _at_macs(lambda r: _tp_global(base, x, r, multiple), macs, x)
        models = {
            f"uniform ratio {ratio:g}": uniform,
            "target-driven": target,
            "Torch-Pruning global": peer,
        }
        measured = _speedups([base, *models.values()], x)[1:]
        for (name, m), got in zip(models.items(), measured, strict=True):
            tuned = []
            for seed in range(1, seeds + 1):
                copy_ = copy.deepcopy(m)
                fit(copy_, data, epochs=FINETUNE_EPOCHS, seed=seed)
                tuned.append(accuracy(copy_, data.x_test, data.y_test))
            lines.append(
                f"| {speed:.2f}x | {name} | {got:.2f}x | "
                f"{surgeon.count_macs(base, x) / surgeon.count_macs(m, x):.2f}x "
                f"| {accuracy(m, data.x_test, data.y_test):.1f}% | {sum(tuned) / len(tuned):.1f}% |"
            )
            print(lines[-1], flush=True)
    return lines


def layers_table(specs: list[str]) -> list[str]:
    """``Target(speedup=2.0)`` with the widths alone and with whole blocks / layers too (a
    stack's layers where the model has one, its residual branches otherwise)."""
    lines = [
        "",
        "| model | structures | achieved | rounds | blocks / layers removed | channel classes removed | MACs fewer | returned |",
        "|---|---|---|---|---|---|---|---|",
    ]
    x = torch.randn(1, 3, 224, 224)
    for spec in specs:
        model = build(spec)
        for structures in (("channels", "heads"), ("channels", "heads", "layers")):
            slim = surgeon.slim(
                model, surgeon.Target(speedup=2.0, threads=1), x, structures=structures
            )
            plan = slim.meta[PLAN_KEY]
            found = plan["target"]
            classes = sum(len(v) for v in plan["removed"].values())
            lines.append(
                f"| {spec} | {' + '.join(structures)} | {found['achieved']:.2f}x | "
                f"{len(found['rounds'])} | {found['blocks']} / {found.get('layers', 0)} | {classes} | "
                f"{found['theoretical']:.2f}x | {type(slim).__name__} |"
            )
            print(lines[-1], flush=True)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="?", const=",".join(MODELS), default=None)
    ap.add_argument("--digits", action="store_true")
    ap.add_argument(
        "--layers", nargs="?", const="tv:resnet50,timm:vit_small_patch16_224", default=None
    )
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--ratios", default="0.4,0.5,0.6", help="digits: the uniform ratios matched")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    torch.manual_seed(0)
    lines: list[str] = []
    if args.models:
        print(f"torch {torch.__version__}; onnxruntime on this CPU, 1 thread, batch 1\n")
        lines += models_table(args.models.split(","))
    if args.layers:
        lines += layers_table(args.layers.split(","))
    if args.digits:
        lines += digits_table(args.seeds, args.ratios)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
