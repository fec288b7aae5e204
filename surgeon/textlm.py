"""Real text without a download: the Python standard library's own source files, read as
bytes, and a small LLaMA-architecture decoder trained on them here, to measure what pruning
costs a language model in held-out perplexity.

The corpus is the ``*.py`` files at the top of the standard library folder, sorted by name:
every tenth file (the 1st, the 11th, ...) is held out, the rest is the training text. The
tokens are the bytes (a vocabulary of 256), so no tokenizer is trained or downloaded.

``train_lm(BENCH)`` trains the benchmark's model for a bounded time and caches it (weights as
safetensors and what training measured as JSON) under :func:`surgeon.hardware.cache_path`,
keyed by its settings and the corpus, so later runs reuse it; ``perplexity`` scores a model on
the held-out files; ``prune_lm`` removes a share of the parameters by one of the compared
methods; ``recover`` distils a pruned model from the dense one for a token budget.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import logging
import math
import os
import sysconfig
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from surgeon.errors import SurgeonInputError
from surgeon.hardware import cache_path

__all__ = [
    "BENCH",
    "SMALL",
    "LMSpec",
    "TextData",
    "calibration_batches",
    "load_text",
    "lm_config",
    "METHODS",
    "perplexity",
    "prune_lm",
    "recover",
    "train_lm",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextData:
    """The byte tokens of the training and held-out files (uint8, concatenated with a newline
    between files) and the file names of each split."""

    train: torch.Tensor
    heldout: torch.Tensor
    train_files: tuple[str, ...]
    heldout_files: tuple[str, ...]

    def digest(self) -> str:
        h = hashlib.sha256()
        for t in (self.train, self.heldout):
            h.update(t.numpy().tobytes())
        return h.hexdigest()[:16]


def load_text(heldout_every: int = 10) -> TextData:
    """The standard library's top-level ``*.py`` files, sorted by name, split by file: every
    ``heldout_every``-th file (from the first) is held out."""
    root = sysconfig.get_paths()["stdlib"]
    files = sorted(glob.glob(os.path.join(root, "*.py")))
    if len(files) < 2 * heldout_every:
        raise SurgeonInputError(
            f"the standard library at {root} has {len(files)} top-level .py files; the text "
            "benchmark needs a full Python installation"
        )
    parts: dict[bool, list[bytes]] = {True: [], False: []}
    names: dict[bool, list[str]] = {True: [], False: []}
    for i, f in enumerate(files):
        with open(f, "rb") as fh:
            parts[i % heldout_every == 0].append(fh.read())
        names[i % heldout_every == 0].append(os.path.basename(f))

    def tokens(chunks: list[bytes]) -> torch.Tensor:
        return torch.frombuffer(bytearray(b"\n".join(chunks)), dtype=torch.uint8).clone()

    return TextData(
        tokens(parts[False]), tokens(parts[True]), tuple(names[False]), tuple(names[True])
    )


@dataclass(frozen=True)
class LMSpec:
    """The decoder's sizes and how it is trained: ``steps`` of AdamW on ``batch`` random
    windows of ``seq`` bytes, stopping early after ``seconds``."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    seq: int = 128
    batch: int = 16
    steps: int = 3000
    seconds: float = 600.0
    lr: float = 3e-3
    seed: int = 0

    def key(self, data: TextData) -> str:
        text = json.dumps(dataclasses.asdict(self), sort_keys=True) + data.digest()
        return hashlib.sha256(text.encode()).hexdigest()[:16]


#: the benchmark's model: 2.5M parameters, trained for up to 12 minutes
BENCH = LMSpec(hidden=192, layers=6, heads=6, kv_heads=3, intermediate=512, steps=3000, seconds=720)
#: the test suite's: 0.2M parameters, 600 steps (about a minute; the time bound only guards a
#: slow machine, so the steps and the model are the same everywhere)
SMALL = LMSpec(
    hidden=64, layers=4, heads=4, kv_heads=2, intermediate=160, seq=64, steps=600, seconds=300
)


def lm_config(spec: LMSpec) -> Any:
    """The ``LlamaConfig`` of ``spec``: a byte vocabulary, untied input and output embeddings."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=256,
        hidden_size=spec.hidden,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        intermediate_size=spec.intermediate,
        max_position_embeddings=spec.seq,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )


def _windows(tokens: torch.Tensor, seq: int, batch: int, gen: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, len(tokens) - seq, (batch,), generator=gen)
    return torch.stack([tokens[s : s + seq] for s in starts.tolist()]).long()


def _lm_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())


def train_lm(spec: LMSpec = BENCH, data: TextData | None = None) -> tuple[nn.Module, dict]:
    """The model ``spec`` describes, trained on ``data``'s training files, and what training
    measured (``steps``, ``seconds``, ``tokens``, ``heldout_ppl``); from the cache when this
    spec was trained on this corpus before (``cached``: True)."""
    from safetensors.torch import load_file, save_file
    from transformers import LlamaForCausalLM

    data = data or load_text()
    key = spec.key(data)
    weights, info_file = cache_path(f"lm/{key}.safetensors"), cache_path(f"lm/{key}.json")
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(lm_config(spec))
    if weights.exists() and info_file.exists():
        model.load_state_dict(load_file(str(weights)))
        info = json.loads(info_file.read_text())
        return model.eval(), {**info, "cached": True}
    gen = torch.Generator().manual_seed(spec.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.1, betas=(0.9, 0.95))
    warmup = max(1, spec.steps // 20)
    model.train()
    start = time.perf_counter()
    step = 0
    while True:
        # cosine decay over whichever bound comes first, the steps or the seconds
        done = max(step / spec.steps, (time.perf_counter() - start) / spec.seconds)
        if done >= 1:
            break
        scale = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * done))
        for group in opt.param_groups:
            group["lr"] = spec.lr * scale
        loss = _lm_loss(model, _windows(data.train, spec.seq, spec.batch, gen))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 200 == 0:
            log.info("train_lm: step %d, loss %.3f", step, loss.item())
    seconds = time.perf_counter() - start
    model.eval()
    info = {
        "steps": step,
        "seconds": round(seconds, 1),
        "tokens": step * spec.batch * spec.seq,
        "params": sum(p.numel() for p in model.parameters()),
        "heldout_ppl": round(perplexity(model, data.heldout, spec.seq), 4),
    }
    weights.parent.mkdir(parents=True, exist_ok=True)
    tmp = weights.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    os.replace(tmp, weights)
    info_file.write_text(json.dumps(info))
    return model, {**info, "cached": False}


def perplexity(model: nn.Module, tokens: torch.Tensor, seq: int, windows: int = 64) -> float:
    """exp of the mean next-byte cross-entropy over the first ``windows`` non-overlapping
    windows of ``seq`` bytes of ``tokens`` (fixed: every model is scored on the same text)."""
    n = min(windows, len(tokens) // seq)
    ids = tokens[: n * seq].reshape(n, seq).long()
    total, count = 0.0, 0
    with torch.no_grad():
        for chunk in ids.split(16):
            logits = model(input_ids=chunk).logits.float()
            total += float(
                F.cross_entropy(
                    logits[:, :-1].flatten(0, 1), chunk[:, 1:].flatten(), reduction="sum"
                )
            )
            count += chunk[:, 1:].numel()
    return math.exp(total / count)


def calibration_batches(
    data: TextData, seq: int, batches: int = 4, batch: int = 8, seed: int = 1
) -> list[tuple[dict[str, torch.Tensor], None]]:
    """``batches`` batches of random training windows, as ``slim``'s ``data=`` takes them
    (``({"input_ids": ids}, None)``: a causal LM's own next-token loss needs no target)."""
    gen = torch.Generator().manual_seed(seed)
    return [({"input_ids": _windows(data.train, seq, batch, gen)}, None) for _ in range(batches)]


def recover(
    student: nn.Module,
    teacher: nn.Module,
    data: TextData,
    seq: int,
    tokens: int,
    batch: int = 16,
    lr: float = 1e-3,
    seed: int = 2,
) -> nn.Module:
    """Distil ``student`` from ``teacher`` on training windows (KL to the teacher's next-byte
    distribution plus the next-byte loss, equal weights) for ``tokens`` tokens; in place."""
    from surgeon.schedule import distill_loss

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    steps = max(1, tokens // (batch * seq))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    student.train()
    teacher.eval()
    for _ in range(steps):
        ids = _windows(data.train, seq, batch, gen)
        with torch.no_grad():
            soft = teacher(input_ids=ids).logits[:, :-1].flatten(0, 1)
        logits = student(input_ids=ids).logits[:, :-1].flatten(0, 1)
        loss = distill_loss(logits, soft, ids[:, 1:].flatten(), T=1.0, alpha=0.5)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        sched.step()
    return student.eval()


#: the pruning methods ``prune_lm`` compares: the criteria with one threshold over every
#: group (``scope="global"``, each group capped at :data:`CAP` of its classes), whole layers
#: alone, and Torch-Pruning's LLM recipe (L2 magnitude, one ratio for every group, whole
#: heads, no calibration) run by surgeon
METHODS = ("l2", "activation", "taylor", "fluctuation", "layers", "uniform-l2")
#: the most any group loses under the criteria's global threshold
CAP = 0.8


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def prune_lm(
    model: nn.Module, method: str, share: float, calib: list[Any]
) -> tuple[nn.Module, float]:
    """``model`` with about ``share`` of its parameters removed by ``method`` (one of
    :data:`METHODS`), calibrated on ``calib`` (its first batch is the example input); the slim
    model and the share it removed. ``layers`` takes the whole number of layers nearest the
    share; the others the ratio, found by bisection, whose result removes nearest the share."""
    import surgeon

    if method not in METHODS:
        raise SurgeonInputError(f"method={method!r}: use one of {METHODS}")
    example = calib[0][0]
    total = _params(model)
    if method == "layers":
        stack = max(
            (m for m in model.modules() if isinstance(m, nn.ModuleList)), key=len, default=None
        )
        if stack is None:
            raise SurgeonInputError(f"the {type(model).__name__} has no stack of layers")
        k = min(len(stack) - 1, max(1, round(share * total / _params(stack[0]))))
        slim = surgeon.slim(
            model, k / len(stack) + 1e-6, example, structures=("layers",), data=calib
        )
        return slim, 1 - _params(slim) / total

    def make(ratio: float) -> nn.Module:
        if method == "uniform-l2":
            return surgeon.slim(model, ratio, example)
        return surgeon.slim(
            model,
            ratio,
            example,
            importance=method,
            data=calib,
            scope="global",
            max_group_ratio=CAP,
        )

    lo, hi, best = 0.0, 0.95, None
    for _ in range(7):
        mid = (lo + hi) / 2
        slim = make(mid)
        removed = 1 - _params(slim) / total
        if best is None or abs(removed - share) < abs(best[1] - share):
            best = (slim, removed)
        lo, hi = (mid, hi) if removed < share else (lo, mid)
    return best
