"""What pruning costs a language model, on real text: a small LLaMA trained here on the Python
standard library's own source files (bytes; every tenth file held out,
:mod:`surgeon.textlm`), then 20% and 50% of its parameters removed by each method, and the
held-out perplexity zero-shot and after one short recovery (distillation from the dense
model, the same token budget for every method).

Methods (:data:`surgeon.textlm.METHODS`): the criteria ``l2``, ``activation``, ``taylor`` and
``fluctuation`` with one threshold over every group (``scope="global"``: heads, MLP and hidden
widths; each group capped at 80% of its classes), whole ``layers`` alone (the nearest whole
number of decoder layers, the least useful on the calibration data), and ``uniform-l2``:
Torch-Pruning's LLM recipe (L2 magnitude, the same ratio in every group, whole query heads, no
calibration), run by surgeon: Torch-Pruning 1.6.0 itself did not finish building its
dependency graph of transformers 5.24's ``LlamaForCausalLM`` (4 layers, hidden 64) in 10
minutes here. Each method but ``layers`` gets the ratio (bisection) whose result removes
nearest the share asked.

The model is trained once (up to ``--train-seconds``) and cached outside the repository
(``$SURGEON_CACHE_DIR`` or ``~/.cache/surgeon/lm``); later runs reuse it.

Run: ``python bench/lm.py`` (``--small`` for the test suite's model, ``--out FILE`` writes
the table as Markdown too).
"""

from __future__ import annotations

import os
import sys

# run as a script, this file's folder comes first on sys.path, where bench/transformers.py
# would stand in for the transformers package
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

import argparse
import copy
import dataclasses
import logging

import torch

from surgeon import textlm


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="the test suite's smaller model")
    p.add_argument("--train-seconds", type=float, default=None, help="training time bound")
    p.add_argument("--shares", type=float, nargs="+", default=[0.2, 0.5])
    p.add_argument("--methods", nargs="+", default=list(textlm.METHODS))
    p.add_argument("--recover-tokens", type=int, default=400_000)
    p.add_argument("--out", default=None, help="also write the table as Markdown here")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    spec = textlm.SMALL if args.small else textlm.BENCH
    if args.train_seconds is not None:
        spec = dataclasses.replace(spec, seconds=args.train_seconds)
    data = textlm.load_text()
    model, info = textlm.train_lm(spec, data)
    calib = textlm.calibration_batches(data, spec.seq)
    dense = textlm.perplexity(model, data.heldout, spec.seq)
    lines = [
        f"Model: LlamaForCausalLM, hidden {spec.hidden}, {spec.layers} layers, {spec.heads} heads "
        f"({spec.kv_heads} kv), MLP {spec.intermediate}, byte vocabulary: {info['params']:,} "
        f"parameters; trained {info['steps']} steps ({info['tokens']:,} tokens) in "
        f"{info['seconds']:.0f} s on {torch.get_num_threads()} threads"
        f"{' (cached)' if info['cached'] else ''}.",
        f"Text: {len(data.train_files)} standard-library files ({len(data.train):,} bytes) to "
        f"train and calibrate, {len(data.heldout_files)} held out ({len(data.heldout):,} bytes).",
        f"Recovery: distillation from the dense model, {args.recover_tokens:,} tokens each.",
        "",
        "| removed (asked) | method | removed (got) | ppl zero-shot | ppl recovered |",
        "|---|---|---|---|---|",
        f"| 0% | dense | 0.0% | {dense:.3f} | {dense:.3f} |",
    ]
    print("\n".join(lines), flush=True)
    for share in args.shares:
        for method in args.methods:
            slim, got = textlm.prune_lm(model, method, share, calib)
            zero = textlm.perplexity(slim, data.heldout, spec.seq)
            student = copy.deepcopy(slim)
            textlm.recover(student, model, data, spec.seq, args.recover_tokens)
            rec = textlm.perplexity(student, data.heldout, spec.seq)
            line = f"| {share:.0%} | {method} | {got:.1%} | {zero:.3f} | {rec:.3f} |"
            print(line, flush=True)
            lines.append(line)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
