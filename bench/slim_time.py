"""slim() wall time per zoo model, and how analysis cost grows with graph size.

Prints two tables (medians over repeated runs, measured side by side in one process):
1. ``surgeon.slim(model, 0.5, x)`` per zoo model at its default input (224x224 for the
   ImageNet models), with the time split into trace + analysis and the three passes;
2. ``surgeon.analyze`` (trace, shape propagation, channel graph) on plain residual nets of
   20 to 200 blocks with few channels, so the cost is the graph's, not the convolutions'.

Run: ``python bench/slim_time.py [--repeat N] [--models resnet50,...]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn as nn

import surgeon
from surgeon.models import ZOO, create


def _median_time(fn, repeat: int) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), min(times)


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


def residual_net(blocks: int, c: int = 8) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, c, 3, padding=1), *[Block(c) for _ in range(blocks)], nn.Conv2d(c, 4, 1)
    ).eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--models", default=",".join(ZOO))
    args = ap.parse_args()
    torch.set_num_threads(2)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeat} runs after one warm-up\n"
    )
    print(
        f"{'model':<14}{'input':<18}{'slim s (median)':>16}{'min':>8}{'first call':>12}{'analyze s':>11}"
    )
    for name in args.models.split(","):
        model, x = create(name)
        t = time.perf_counter()
        surgeon.slim(model, 0.5, x)
        first = time.perf_counter() - t
        med, lo = _median_time(lambda model=model, x=x: surgeon.slim(model, 0.5, x), args.repeat)
        an, _ = _median_time(lambda model=model, x=x: surgeon.analyze(model, x), args.repeat)
        print(f"{name:<14}{str(tuple(x.shape)):<18}{med:>16.3f}{lo:>8.3f}{first:>12.3f}{an:>11.3f}")
    print()
    print(f"{'residual blocks':<16}{'graph nodes':>12}{'analyze s':>11}{'x 20-block':>12}")
    base = None
    x = torch.randn(1, 3, 8, 8)
    for blocks in (20, 50, 100, 200):
        net = residual_net(blocks)
        surgeon.analyze(net, x)
        med, _ = _median_time(lambda net=net: surgeon.analyze(net, x), args.repeat)
        nodes = len(surgeon.analyze(net, x).gm.graph.nodes)
        base = base or med
        print(f"{blocks:<16}{nodes:>12}{med:>11.3f}{med / base:>12.2f}")


if __name__ == "__main__":
    main()
