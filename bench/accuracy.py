"""Accuracy vs MAC reduction on real data: scikit-learn's digits with the zoo's DigitsNet.

One seeded baseline is trained, then:

0. rounding: L2 slims at each ratio with round_to None / "auto" / 8 / 16 (widths rounded up to
   the multiple, so more channels kept), test accuracy zero-shot and after a 1-epoch
   fine-tune: what hardware-friendly widths cost or gain (``--only-rounding``: this alone);
1. criteria: every criterion slims it at each ratio; test accuracy zero-shot without and with
   compensation, then after a one-epoch fine-tune;
2. schedules at the high ratio (>= 25x fewer MACs): one-shot / linear / AGP in 2 or 4 steps,
   with L2 or Taylor, with or without distillation from the baseline, each with the same
   fine-tune budget (``--budget`` epochs in all, split evenly over the steps), averaged over
   three fine-tune seeds (the test set has 360 images: one point is 3.6 of them);
3. a plot of the criteria curves (zero-shot compensated and fine-tuned), saved as a PNG.

Compensation with data also re-estimates the batch norms on the data batches (see
``surgeon.slim``). Taylor / grad scores and compensation means use four train batches of 256.

Run: ``python bench/accuracy.py [--markdown] [--plot bench/accuracy.png] [--only-rounding]``
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import surgeon
from surgeon.digits import accuracy, fit, load_digits_split
from surgeon.models.digits import digits_cnn

CRITERIA = ("l2", "l1", "taylor", "grad", "bn_scale", "random")
RATIOS = (0.3, 0.5, 0.7, 0.82)
HIGH_RATIO = 0.82  # 27x fewer MACs
FIT_LR = 3e-3
SEEDS = (1, 2, 3)  # fine-tune seeds: schedule results are means over them


def _table(headers: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*headers), *(fmt.format(*r) for r in rows)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--markdown", action="store_true", help="print Markdown tables")
    ap.add_argument("--plot", default="bench/accuracy.png", help="where to save the PNG plot")
    ap.add_argument("--budget", type=float, default=4.0, help="fine-tune epochs per schedule")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--only-rounding", action="store_true", help="only the rounding table (a minute)"
    )
    args = ap.parse_args()
    torch.set_num_threads(2)
    started = time.perf_counter()

    data = load_digits_split(seed=args.seed)
    torch.manual_seed(args.seed)
    base = fit(digits_cnn(), data, epochs=4, seed=args.seed)
    x = data.x_test[:1]
    batches = [(data.x_train[i : i + 256], data.y_train[i : i + 256]) for i in range(0, 1024, 256)]
    base_acc = accuracy(base, data.x_test, data.y_test)
    base_macs = surgeon.count_macs(base, x)

    def score(m) -> float:
        return accuracy(m, data.x_test, data.y_test)

    def slim(ratio: float, importance: str, **kw):
        return surgeon.slim(
            base, ratio, x, importance=importance, data=batches, loss_fn=F.cross_entropy, **kw
        )

    print(
        f"digits: {len(data.y_train)} train / {len(data.y_test)} test, DigitsNet "
        f"{surgeon.count_params(base):,} params, {base_macs:,} MACs, baseline {base_acc:.2f}%\n"
    )

    # 0. the accuracy cost of rounding widths up to a channel multiple (round_to)
    rows = []
    for ratio in RATIOS:
        for round_to in (None, "auto", 8, 16):
            model = slim(ratio, "l2", round_to=round_to)
            label = str(round_to)
            if round_to == "auto":
                label = f"auto ({model.meta['surgeon.plan']['round_to']})"
            reduction = base_macs / surgeon.count_macs(model, x)
            zero = score(model)
            tuned = score(fit(model, data, epochs=1, lr=FIT_LR, seed=1))
            rows.append([f"{ratio:.2f}", label, f"{reduction:.1f}x", f"{zero:.1f}", f"{tuned:.1f}"])
    print("Rounding: test accuracy (%) of L2 slims, compensated, zero-shot and fine-tuned")
    headers = ["ratio", "round_to", "MACs", "zero-shot", "fine-tuned"]
    print(_table(headers, rows, args.markdown) + "\n")
    if args.only_rounding:
        print(f"total {time.perf_counter() - started:.0f} s")
        return

    # 1. criteria x ratios
    curves: dict[str, list[tuple[float, float, float]]] = {}
    rows = []
    for importance in CRITERIA:
        for ratio in RATIOS:
            plain = score(slim(ratio, importance, compensate=False))
            model = slim(ratio, importance)
            zero = score(model)
            reduction = base_macs / surgeon.count_macs(model, x)
            tuned = score(fit(model, data, epochs=1, lr=FIT_LR, seed=1))
            curves.setdefault(importance, []).append((reduction, zero, tuned))
            rows.append(
                [importance, f"{ratio:.2f}", f"{reduction:.1f}x", f"{plain:.1f}", f"{zero:.1f}",
                 f"{tuned:.1f}"]
            )  # fmt: skip
    print("Criteria: test accuracy (%) zero-shot and after a 1-epoch fine-tune (one-shot, local)")
    headers = ["criterion", "ratio", "MACs", "zero-shot", "+ compensation", "fine-tuned"]
    print(_table(headers, rows, args.markdown) + "\n")

    # 2. schedules at >= 25x fewer MACs, same fine-tune budget, mean over fine-tune seeds
    teacher = copy.deepcopy(base)
    rows = []
    results = {}
    plans = [("oneshot", 1), ("linear", 2), ("linear", 4), ("agp", 2), ("agp", 4)]
    for schedule, steps in plans:
        for importance in ("l2", "taylor"):
            for distill in (False, True):
                accs, t0 = [], time.perf_counter()
                for seed in SEEDS:

                    def finetune(m, step, steps=steps, distill=distill, seed=seed):
                        fit(m, data, epochs=args.budget / steps, lr=FIT_LR, seed=100 * seed + step,
                            teacher=teacher if distill else None)  # fmt: skip

                    model = surgeon.prune_iteratively(
                        base, HIGH_RATIO, x, steps=steps, schedule=schedule, finetune=finetune,
                        importance=importance, data=batches, loss_fn=F.cross_entropy,
                    )  # fmt: skip
                    accs.append(score(model))
                acc = sum(accs) / len(accs)
                reduction = base_macs / surgeon.count_macs(model, x)
                results[(schedule, steps, importance, distill)] = acc
                rows.append(
                    [schedule, str(steps), importance, "yes" if distill else "no",
                     f"{reduction:.1f}x", f"{acc:.2f}", f"{min(accs):.2f}-{max(accs):.2f}",
                     f"{acc - base_acc:+.2f}", f"{(time.perf_counter() - t0) / len(SEEDS):.1f}"]
                )  # fmt: skip
    print(
        f"Schedules at ratio {HIGH_RATIO} with a {args.budget:g}-epoch fine-tune budget "
        f"(baseline {base_acc:.2f}%; mean of {len(SEEDS)} fine-tune seeds)"
    )
    headers = [
        "schedule",
        "steps",
        "criterion",
        "distill",
        "MACs",
        "acc %",
        "range",
        "vs base",
        "s",
    ]
    print(_table(headers, rows, args.markdown) + "\n")
    best = max(results, key=results.get)
    one_shot_l2 = results[("oneshot", 1, "l2", False)]
    print(
        f"best: {best[0]} x{best[1]} / {best[2]} / distill={best[3]}: {results[best]:.2f}% "
        f"({results[best] - base_acc:+.2f} pts); one-shot L2: {one_shot_l2:.2f}% "
        f"({one_shot_l2 - base_acc:+.2f} pts)"
    )

    if args.plot:
        import matplotlib
        import matplotlib.ticker

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
        for importance, pts in curves.items():
            red = [p[0] for p in pts]
            axes[0].plot(red, [p[1] for p in pts], marker="o", label=importance)
            axes[1].plot(red, [p[2] for p in pts], marker="o", label=importance)
        for ax, title in zip(
            axes, ("zero-shot, compensated", "after a 1-epoch fine-tune"), strict=True
        ):
            ax.axhline(base_acc, color="gray", linestyle="--", linewidth=1, label="baseline")
            ax.set_xscale("log")
            ax.set_xticks([2, 4, 10, 25])
            ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%gx"))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xlabel("MAC reduction (x, log scale)")
            ax.set_title(title)
            ax.grid(True, alpha=0.3)
        axes[0].set_ylabel("test accuracy (%)")
        axes[1].legend(loc="lower left")
        fig.suptitle("surgeon on scikit-learn digits (DigitsNet): accuracy vs MAC reduction")
        fig.tight_layout()
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot, dpi=110)
        print(f"plot: {args.plot}")
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
