"""Real-world coverage: torchvision and timm architectures (random weights, no download).

For each model: channel groups holding parameters, how many prune, MAC and parameter drop at
ratio 0.5, onnxruntime parity of the exported slim model (relative to the output's scale),
ratio-0 exactness (hand-zeroed channels removed, outputs compared to 1e-5 of their scale),
slim time, and the top blocked reason. With Torch-Pruning installed (a bench-only
dependency: ``pip install torch-pruning``), its MAC drop at the same ratio is measured in the
same run, side by side. A model either slims or is refused with its reason: a failure is a
row, never a crash of the script.

Run from the repository root: ``PYTHONPATH=. python bench/realworld.py [--models tv:resnet18,timm:repvgg_a0] [--size 128]
[--all-torchvision] [--markdown]``
"""

from __future__ import annotations

import argparse
import copy
import logging
import tempfile
import time
import warnings
from pathlib import Path

import torch

import surgeon
from surgeon.cost import count_macs, count_params
from surgeon.diagnose import blocked_reasons
from tests.helpers import assert_exact_at_zero

DEFAULT = [
    "tv:resnet18",
    "tv:resnet50",
    "tv:mobilenet_v2",
    "tv:efficientnet_b0",
    "tv:efficientnet_v2_s",
    "tv:convnext_tiny",
    "tv:densenet121",
    "tv:googlenet",
    "tv:squeezenet1_1",
    "tv:vit_b_16",
    "tv:swin_t",
    "timm:cspresnet50",
    "timm:dpn68",
    "timm:repvgg_a0",
    "timm:rexnet_100",
    "timm:ghostnet_100",
    "timm:tf_efficientnet_lite0",
    "timm:cait_xxs24_224",
    "timm:deit_tiny_patch16_224",
]
_NEEDS_224 = ("vit", "swin", "cait", "deit")


def build(spec: str) -> torch.nn.Module:
    lib, name = spec.split(":")
    torch.manual_seed(0)
    if lib == "tv":
        import torchvision

        return torchvision.models.get_model(name, weights=None).eval()
    import timm

    return timm.create_model(name, pretrained=False).eval()


def peer_drop(model: torch.nn.Module, x: torch.Tensor) -> str:
    """Torch-Pruning's MAC drop at ratio 0.5 (MetaPruner, L2, the classifier ignored)."""
    try:
        import torch_pruning as tp
    except ImportError:
        return "n/a"
    try:
        m = copy.deepcopy(model)
        head = [mod for mod in m.modules() if isinstance(mod, torch.nn.Linear)][-1:]
        pruner = tp.pruner.MetaPruner(
            m,
            x,
            importance=tp.importance.MagnitudeImportance(p=2),
            pruning_ratio=0.5,
            ignored_layers=head,
        )
        pruner.step()
        return f"{count_macs(model, x) / count_macs(m, x):.2f}x"
    except Exception as exc:  # the peer's failure is a figure too
        return f"fails ({type(exc).__name__})"


def row(spec: str, size: int, folder: Path) -> list[str]:
    side = 224 if any(k in spec for k in _NEEDS_224) else size
    x = torch.randn(1, 3, side, side)
    try:
        model = build(spec)
        graph = surgeon.analyze(model, x)
        start = time.perf_counter()
        slim = surgeon.slim(model, 0.5, x)
        took = time.perf_counter() - start
        path = surgeon.export(slim, x, folder / "slim.onnx")  # raises unless ort agrees
        path.unlink()
        assert_exact_at_zero(model, x)
    except Exception as exc:
        return [
            spec,
            "-",
            "-",
            "-",
            "-",
            "refused / failed",
            "-",
            "-",
            f"{type(exc).__name__}: {str(exc)[:80]}",
            "-",
        ]
    top = blocked_reasons(graph, top=1)
    return [
        spec,
        str(sum(1 for g in graph.groups if g.params)),
        str(len(graph.prunable_groups())),
        f"{count_macs(model, x) / count_macs(slim, x):.2f}x",
        f"{count_params(model) / count_params(slim):.2f}x",
        "ok (<= 1e-4)",
        "exact",
        f"{took:.1f} s",
        top[0]["reason"][:60] if top else "-",
        peer_drop(model, x),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(DEFAULT))
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--all-torchvision", action="store_true")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)
    specs = args.models.split(",")
    if args.all_torchvision:
        import torchvision

        specs = [f"tv:{n}" for n in torchvision.models.list_models(module=torchvision.models)]
    head = [
        "model",
        "groups",
        "prunable",
        "MAC drop",
        "params drop",
        "ORT parity",
        "ratio 0",
        "slim time",
        "top blocked reason",
        "peer MAC drop",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        rows = [row(s, args.size, Path(tmp)) for s in specs]
    if args.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for r in rows:
            print("| " + " | ".join(r) + " |")
    else:
        for r in [head, *rows]:
            print("  ".join(f"{c:<14}" for c in r))


if __name__ == "__main__":
    main()
