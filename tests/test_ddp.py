"""examples/finetune_ddp.py under torchrun: 2 CPU ranks (gloo) fine-tune a slim model with DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "finetune_ddp.py"

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available in this torch build",
)


def test_finetune_ddp_example_on_two_ranks() -> None:
    pytest.importorskip("sklearn", reason="the example trains on the scikit-learn digits")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(EXAMPLE.relative_to(ROOT)),
        "--ratio",
        "0.5",
        "--pretrain-epochs",
        "3",
        "--epochs",
        "1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    log = f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
    assert result.returncode == 0, log

    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, log  # printed by rank 0 only
    report = json.loads(lines[0].removeprefix("RESULT "))
    assert report["world_size"] == 2
    assert report["params_identical"] is True
    assert report["ratio"] == 0.5
    assert report["slim_macs"] < report["baseline_macs"] / 3  # ~4x fewer at ratio 0.5
    assert report["slim_params"] < report["baseline_params"]
    assert report["baseline_accuracy"] >= 95.0
    # zero-shot the slim model has lost most of its accuracy; one epoch on 2 ranks restores it
    assert report["accuracy"] >= 90.0
    assert report["accuracy"] > report["zero_shot_accuracy"]
