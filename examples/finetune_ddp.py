"""Fine-tune a slim model with DistributedDataParallel (CPU, gloo).

    torchrun --standalone --nproc_per_node 2 examples/finetune_ddp.py --ratio 0.5 --epochs 2

1. Rank 0 trains the digits baseline and slims it with ``surgeon.slim``.
2. The slim structure must be the same on every rank before DDP wraps it. Rank 0 writes it
   with ``surgeon.save`` and broadcasts the file's bytes (no shared filesystem needed); every
   rank rebuilds it with ``surgeon.load`` from a fresh ``digits_cnn()``.
3. Every rank fine-tunes its shard of the data (``DistributedSampler``); DDP averages the
   gradients, so the parameters stay identical. BatchNorm running statistics are per rank
   (DDP re-broadcasts rank 0's before each forward): rank 0's are broadcast once more at the end.
4. The ranks check that their parameters and buffers are bit-identical; the script exits 1
   if not. Rank 0 prints a summary and a last line ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import surgeon
from surgeon.digits import DigitsData, accuracy, fit, load_digits_split
from surgeon.models.digits import digits_cnn


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.5, help="fraction of channels removed")
    parser.add_argument("--pretrain-epochs", type=float, default=4, help="baseline training")
    parser.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs under DDP")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak fine-tuning learning rate")
    parser.add_argument("--batch-size", type=int, default=64, help="global batch size")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def slim_on_rank0(
    args: argparse.Namespace, data: DigitsData, example: torch.Tensor
) -> tuple[dict, bytes]:
    """Train the baseline, slim it; return the numbers to report and the saved slim model."""
    torch.manual_seed(args.seed)
    model = fit(digits_cnn(), data, epochs=args.pretrain_epochs, seed=args.seed)
    slim = surgeon.slim(model, args.ratio, example)
    stats = {
        "baseline_params": surgeon.count_params(model),
        "baseline_macs": surgeon.count_macs(model, example),
        "baseline_accuracy": accuracy(model, data.x_test, data.y_test),
        "zero_shot_accuracy": accuracy(slim, data.x_test, data.y_test),
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = surgeon.save(slim, Path(tmp) / "slim.surgeon")
        return stats, path.read_bytes()


def load_slim(blob: bytes) -> torch.nn.Module:
    """Rebuild the slim model from the bytes of a surgeon file."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "slim.surgeon"
        path.write_bytes(blob)
        return surgeon.load(path, digits_cnn())


def finetune(
    model: torch.nn.Module, data: DigitsData, args: argparse.Namespace, world_size: int
) -> None:
    """Fine-tune ``model`` (wrapped in DDP) on this rank's shard of the train set."""
    sampler = DistributedSampler(
        TensorDataset(data.x_train, data.y_train), shuffle=True, seed=args.seed, drop_last=True
    )
    loader = DataLoader(
        sampler.dataset, batch_size=args.batch_size // world_size, sampler=sampler, drop_last=True
    )
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(ddp.parameters(), lr=args.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, total_steps=args.epochs * len(loader)
    )
    ddp.train()
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on every rank
        for x, y in loader:
            loss = F.cross_entropy(ddp(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # DDP all-reduces (averages) the gradients here
            optimizer.step()
            schedule.step()
    model.eval()
    for buffer in model.buffers():  # BN running stats drifted per rank: take rank 0's
        dist.broadcast(buffer, src=0)


def identical_across_ranks(model: torch.nn.Module, world_size: int) -> bool:
    """True when every rank holds exactly the same parameters and buffers."""
    state = torch.cat([t.detach().flatten().double() for t in model.state_dict().values()])
    gathered = [torch.empty_like(state) for _ in range(world_size)]
    dist.all_gather(gathered, state)
    return all(torch.equal(g, gathered[0]) for g in gathered)


def main() -> int:
    args = parse_args()
    torch.set_num_threads(1)  # one core per rank
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()

    data = load_digits_split(seed=args.seed)  # deterministic: the same on every rank
    example = data.x_test[:1]
    message = [slim_on_rank0(args, data, example) if rank == 0 else None]
    dist.broadcast_object_list(message, src=0)
    stats, blob = message[0]

    model = load_slim(blob)
    finetune(model, data, args, world_size)
    identical = identical_across_ranks(model, world_size)

    if rank == 0:
        result = {
            **stats,
            "slim_params": surgeon.count_params(model),
            "slim_macs": surgeon.count_macs(model, example),
            "accuracy": accuracy(model, data.x_test, data.y_test),
            "ratio": args.ratio,
            "world_size": world_size,
            "params_identical": identical,
        }
        print(f"params   {result['baseline_params']:>10,} -> {result['slim_params']:,}")
        print(f"MACs     {result['baseline_macs']:>10,} -> {result['slim_macs']:,}")
        print(
            f"accuracy baseline {result['baseline_accuracy']:.2f}%, "
            f"slim zero-shot {result['zero_shot_accuracy']:.2f}%, "
            f"fine-tuned on {world_size} ranks {result['accuracy']:.2f}%"
        )
        print("RESULT " + json.dumps(result), flush=True)
    # Tear down together, after the DDP wrapper (and its reducer's gloo work) is gone: a rank
    # that destroys the group while its peer still uses it can abort at exit.
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()
    if not identical:
        print(f"rank {rank}: parameters differ across ranks", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
