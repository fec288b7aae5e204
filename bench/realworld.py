"""Real-world coverage: torchvision and timm architectures (random weights, no download).

For each model: channel groups holding parameters, how many prune, MAC and parameter drop at
ratio 0.5, onnxruntime parity of the exported slim model (max |ort - torch| over the output's
largest magnitude), ratio-0 exactness (hand-zeroed channels removed, outputs compared to 1e-5
of their scale), slim time, and the top blocked reason. With Torch-Pruning installed (a
bench-only dependency: ``pip install torch-pruning``), its MAC drop at the same ratio is
measured in the same run, side by side. Each model runs in its own process with a time limit,
so a model that crashes, hangs or runs out of memory is a row, never the end of the script.
Rows are kept in a JSON-lines file (``--out``): a second run only measures what is missing.

Run from the repository root: ``PYTHONPATH=. python bench/realworld.py [--set default|all]
[--models tv:resnet18,timm:repvgg_a0] [--size 128] [--markdown] [--out FILE]``.
``--set all``: every torchvision classification model, the torchvision segmentation models
and the timm architectures of ``TIMM`` (50 models from 37 timm modules).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tests.helpers import main_output

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
# one or more architectures from each of 37 timm modules (convnets, hybrids, transformers, MLPs)
TIMM = """resnet26d cspresnet50 dpn68 repvgg_a0 rexnet_100 ghostnet_100 tf_efficientnet_lite0
efficientnet_b0 mixnet_s mobilenetv3_large_100 cait_xxs24_224 vit_tiny_patch16_224
deit_tiny_patch16_224 convnext_atto regnetx_002 densenet121 vgg11_bn dla34 hrnet_w18_small
res2net50_14w_8s resnest14d skresnet18 legacy_seresnet18 selecsls42b hardcorenas_a
mobilevit_xxs efficientformer_l1 levit_128s pit_ti_224 swin_tiny_patch4_window7_224
xcit_nano_12_p16_224 poolformer_s12 nf_resnet26 ese_vovnet19b_dw inception_v3
legacy_xception mixer_s16_224 resmlp_12_224 tinynet_a lcnet_050 visformer_tiny
edgenext_xx_small repvit_m1 fastvit_t8 ghostnetv2_100 tiny_vit_5m_224 efficientvit_b0
mobileone_s0 crossvit_tiny_240 coat_lite_tiny""".split()

HEAD = [
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


def all_specs() -> list[str]:
    import torchvision

    tv = [f"tv:{n}" for n in torchvision.models.list_models(module=torchvision.models)]
    seg = [
        f"tvseg:{n}" for n in torchvision.models.list_models(module=torchvision.models.segmentation)
    ]
    return tv + seg + [f"timm:{n}" for n in TIMM]


def build(spec: str) -> torch.nn.Module:
    """The model of ``spec`` with random weights, in eval mode. A weight matrix initialised
    to zero (torchvision's ViT head) is drawn at random too: an all-zero output would make the
    exactness check prove nothing."""
    lib, name = spec.split(":")
    torch.manual_seed(0)
    if lib in ("tv", "tvseg"):
        import torchvision

        kw = {"weights_backbone": None, "aux_loss": False} if lib == "tvseg" else {}
        model = torchvision.models.get_model(name, weights=None, **kw)
    else:
        import timm

        model = timm.create_model(name, pretrained=False)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2 and not p.any():
                torch.nn.init.normal_(p, std=0.02)
    return model.eval()


def example(model: torch.nn.Module, spec: str, size: int) -> torch.Tensor:
    """A 1 x 3 x size x size input where the model takes it, else the size it was made for
    (timm's pretrained_cfg, or 224 for torchvision's fixed-size transformers)."""
    torch.manual_seed(1)
    sides = [size]
    cfg = getattr(model, "pretrained_cfg", None) or {}
    sides.append(int(cfg.get("input_size", (3, 224, 224))[-1]))
    sides.append(getattr(model, "image_size", 224))
    for side in sides:
        x = torch.randn(1, 3, side, side)
        try:
            with torch.no_grad():
                model(x)
            return x
        except Exception:  # noqa: BLE001 - the next size
            continue
    return torch.randn(1, 3, sides[1], sides[1])


class _Limit(Exception):
    pass


@contextlib.contextmanager
def _time_limit(seconds: int):
    def fire(*_: Any) -> None:
        raise _Limit(f"over {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def peer_drop(model: torch.nn.Module, x: torch.Tensor, limit: int) -> str:
    """Torch-Pruning's MAC drop at ratio 0.5 (MetaPruner, L2, the last Linear ignored). A
    result whose output shape differs from the model's (it pruned a classifier that is a
    conv, as in SqueezeNet) is not a success."""
    try:
        import torch_pruning as tp
    except ImportError:
        return "n/a"
    from surgeon.cost import count_macs

    try:
        with _time_limit(limit):
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
            with torch.no_grad():
                if main_output(m(x)).shape != main_output(model(x)).shape:
                    return "fails (output shape changed)"
            return f"{count_macs(model, x) / count_macs(m, x):.2f}x"
    except _Limit:
        return f"fails (over {limit} s)"
    except Exception as exc:  # noqa: BLE001 - the peer's failure is a figure too
        return f"fails ({type(exc).__name__})"


def _parity(slim: torch.nn.Module, x: torch.Tensor, folder: Path) -> float:
    """Export (surgeon checks parity itself and raises over its tolerance), then measure
    max |ort - torch| / max |torch| of the first output."""
    import onnxruntime as ort

    import surgeon

    path = surgeon.export(slim, x, folder / "slim.onnx")
    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        with torch.no_grad():
            want = main_output(slim(x)).numpy()
        return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))
    finally:
        for f in folder.iterdir():
            f.unlink()


def measure(spec: str, size: int, peer_limit: int) -> dict[str, Any]:
    """One model's row (as a dict); a failure is recorded with its reason."""
    import surgeon
    from surgeon.cost import count_macs, count_params
    from surgeon.diagnose import blocked_reasons
    from tests.helpers import assert_exact, zero_thirds

    res: dict[str, Any] = {"model": spec}
    try:
        model = build(spec)
        x = example(model, spec, size)
        res["input"] = x.shape[-1]
        graph = surgeon.analyze(model, x)
        start = time.perf_counter()
        slim = surgeon.slim(model, 0.5, x)
        res["slim_s"] = time.perf_counter() - start
        res["groups"] = sum(1 for g in graph.groups if g.params)
        res["prunable"] = len(graph.prunable_groups())
        res["macs"] = [count_macs(model, x), count_macs(slim, x)]
        res["params"] = [count_params(model), count_params(slim)]
        # the network's own input and output channels block every model: not a reason
        top = blocked_reasons(graph, top=1, boundary=False)
        res["blocked"] = top[0]["reason"] if top else "-"
        with tempfile.TemporaryDirectory() as tmp:
            res["parity"] = _parity(slim, x, Path(tmp))
        # the exactness harness: a third of every group's channels zeroed by hand, then ratio 0
        # must give the same outputs; where the analysis cannot see the zeros (a weight
        # computed in forward: weight standardisation) nothing is removed, and it says so
        zeroed = copy.deepcopy(model)
        zero_thirds(zeroed, graph)
        res["exact"] = True
        res["removed_at_0"] = count_params(assert_exact(zeroed, x)) < count_params(model)
        res["status"] = "slimmed"
    except Exception as exc:  # noqa: BLE001 - refused or failed: a row with its reason
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        res["status"] = "refused" if type(exc).__module__.startswith("surgeon") else "failed"
        res["error"] = f"{type(exc).__name__}: {first[:160]}"
        return res
    if peer_limit > 0:
        res["peer"] = peer_drop(model, x, peer_limit)
    return res


def run_isolated(spec: str, args: argparse.Namespace) -> dict[str, Any]:
    """``measure`` in a child process with a time limit."""
    cmd = [sys.executable, __file__, "--one", spec, "--size", str(args.size)]
    cmd += ["--peer-limit", str(args.peer_limit)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=args.limit, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        return {"model": spec, "status": "failed", "error": f"over the {args.limit} s limit"}
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return {"model": spec, "status": "failed", "error": f"exit {done.returncode}: {tail[:160]}"}


def cells(r: dict[str, Any]) -> list[str]:
    if r["status"] != "slimmed":
        return [r["model"], "-", "-", "-", "-", "-", "-", "-", f"{r['status']}: {r['error']}", "-"]
    macs, params = r["macs"], r["params"]
    return [
        r["model"],
        str(r["groups"]),
        str(r["prunable"]),
        f"{macs[0] / macs[1]:.2f}x",
        f"{params[0] / params[1]:.2f}x",
        f"{r['parity']:.1e}",
        ("exact" if r.get("removed_at_0", True) else "exact, none dead") if r.get("exact") else "-",
        f"{r['slim_s']:.1f} s",
        str(r["blocked"])[:60],
        r.get("peer", "n/a"),
    ]


def summary(rows: list[dict[str, Any]]) -> list[str]:
    n = len(rows)
    slimmed = [r for r in rows if r["status"] == "slimmed"]
    big = [r for r in slimmed if r["macs"][0] / r["macs"][1] >= 2.0]
    broken = [r for r in slimmed if not r.get("exact") or r["parity"] > 1e-4]
    beaten = []
    for r in slimmed:
        peer = r.get("peer", "")
        if peer.endswith("x") and r["macs"][0] / r["macs"][1] < 0.95 * float(peer[:-1]):
            beaten.append(r["model"])
    return [
        f"models: {n}; slimmed: {len(slimmed)}; with a MAC drop >= 2x: {len(big)} "
        f"({100 * len(big) / max(n, 1):.1f}%); refused or failed: {n - len(slimmed)}; "
        f"broken (not exact at ratio 0, or parity > 1e-4): {len(broken)}",
        f"below 0.95x the peer's MAC drop: {', '.join(beaten) or 'none'}",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", choices=("default", "all"), default="default")
    ap.add_argument("--models", default=None, help="comma-separated specs (tv:, tvseg:, timm:)")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--limit", type=int, default=1200, help="seconds per model")
    ap.add_argument("--peer-limit", type=int, default=300, help="seconds for the peer (0: not run)")
    ap.add_argument("--peer-from", default=None, help="JSON-lines file to take peer rows from")
    ap.add_argument("--out", default=None, help="JSON-lines file of rows (resumed)")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)
    if args.one:
        print("RESULT " + json.dumps(measure(args.one, args.size, args.peer_limit)), flush=True)
        return
    specs = args.models.split(",") if args.models else DEFAULT
    if args.set == "all" and not args.models:
        specs = all_specs()
    done: dict[str, dict[str, Any]] = {}
    out = Path(args.out) if args.out else None
    if out is not None and out.exists():
        for line in out.read_text().splitlines():
            row = json.loads(line)
            done[row["model"]] = row
    for spec in specs:
        if spec in done:
            continue
        done[spec] = run_isolated(spec, args)
        print(" | ".join(cells(done[spec])), file=sys.stderr, flush=True)
        if out is not None:
            with out.open("a") as f:
                f.write(json.dumps(done[spec]) + "\n")
    rows = [done[s] for s in specs]
    if args.peer_from:  # the peer's figures do not depend on surgeon: reuse a run's
        peers = {}
        for line in Path(args.peer_from).read_text().splitlines():
            row = json.loads(line)
            if "peer" in row:
                peers[row["model"]] = row["peer"]
        for r in rows:
            r.setdefault("peer", peers.get(r["model"], "n/a"))
    if args.markdown:
        print("| " + " | ".join(HEAD) + " |")
        print("|" + "---|" * len(HEAD))
        for r in rows:
            print("| " + " | ".join(cells(r)) + " |")
        print()
        for line in summary(rows):
            print(f"- {line}")
    else:
        for r in [HEAD, *(cells(r) for r in rows)]:
            print("  ".join(f"{c:<14}" for c in r))
        print("\n".join(summary(rows)))


if __name__ == "__main__":
    main()
