"""Multi-process training through torchrun: 2 CPU processes with the gloo backend on the tiny dataset."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import cli

from cifar_cli.checkpoint import load_checkpoint, model_from_checkpoint
from cifar_cli.data import EpochBatches, load_split


def test_two_gloo_processes_train_on_disjoint_shares(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "cifar_cli", "train", "--epochs", "2", "--batch-size", "16", "--lr", "0.05", "--seed", "4",
               "--device", "cpu", "--data-dir", str(tiny_data), "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    # Only rank 0 speaks and writes.
    assert done.stdout.count("Training on cpu x 2 processes") == 1
    assert done.stdout.count("epoch 1/2") == 1 and done.stdout.count("epoch 2/2") == 1
    history = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]

    # The ranks' shares are disjoint, and together they cover the epoch: 150 + 150 of 300 images.
    train_size = len(load_split(tiny_data, train=True))
    shares = []
    for rank in range(2):
        plan = EpochBatches(train_size, 16, seed=4, rank=rank, world=2)
        plan.set_epoch(1)
        shares.append({int(i) for _, batch in plan for i in batch})
    assert not shares[0] & shares[1] and len(shares[0] | shares[1]) == train_size
    assert all(r["images"] == train_size for r in history)

    # The checkpoint has the single-process format: it loads, rebuilds and evaluates.
    model_from_checkpoint(load_checkpoint(out / "last.safetensors"))
    result = cli("eval", out / "best.safetensors", "--data-dir", tiny_data, "--device", "cpu", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["accuracy"] == max(r["test_acc"] for r in history)
