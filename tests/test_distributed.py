"""Multi-process training through torchrun: 2 CPU processes with the gloo backend on the tiny dataset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import TURN_NON_FINITE, cli, history_without_times, network_with_event, write_network

from cifar_cli.checkpoint import load_checkpoint, model_from_checkpoint
from cifar_cli.data import EpochBatches, load_split
from cifar_cli.settings import DEFAULTS


def _torchrun(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node=2 -m cifar_cli train --device cpu ARGS`, as a user starts it.

    Under pytest (and only there: not in 20 launches outside it) a gloo process now and then died of
    SIGABRT, about one launch in ten, before the processes waited for each other before leaving the group
    (runtime.shutdown_distributed). Should it still happen before a launch has done its work, the launch
    is tried once more (a resume is idempotent; a fresh run replaces its own partial folder); a launch
    that finished its work and then died fails the test, as does a second death.
    """
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--tee", "3",
               "-m", "cifar_cli", "train", "--device", "cpu", *args]
    environment = {**os.environ, **(env or {})}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)
    finished = "Done:" in done.stdout or "Resume with:" in done.stderr
    if "SIGABRT" in done.stderr and not finished:
        again = command if "--resume" in args else [*command, "--overwrite"]
        done = subprocess.run(again, capture_output=True, text=True, timeout=300, env=environment)
    return done


def test_two_gloo_processes_train_on_disjoint_shares(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    done = _torchrun("--epochs", "2", "--batch-size", "16", "--lr", "0.05", "--seed", "4",
                     "--data-dir", str(tiny_data), "--out", str(out))
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
        plan = EpochBatches(train_size, 8, seed=4, rank=rank, world=2, odds=DEFAULTS.augment_odds)
        plan.set_epoch(1)
        shares.append({int(i) for _, batch, _ in plan for i in batch})
    assert not shares[0] & shares[1] and len(shares[0] | shares[1]) == train_size
    assert all(r["images"] == train_size for r in history)

    # --batch-size is the whole step's (8 images a process): the schedule takes a single process's steps.
    alone = cli("train", "--epochs", "2", "--batch-size", "16", "--lr", "0.05", "--seed", "4", "--device", "cpu",
                "--data-dir", tiny_data, "--out", tmp_path / "alone")
    assert alone.exit_code == 0, alone.stderr
    schedules = [load_checkpoint(run / "last.safetensors").train_state["scheduler"]
                 for run in (out, tmp_path / "alone")]
    assert [(s["total_steps"], s["last_epoch"]) for s in schedules] == [(schedules[1]["total_steps"],) * 2] * 2

    # The checkpoint has the single-process format: it loads, rebuilds and evaluates.
    model_from_checkpoint(load_checkpoint(out / "last.safetensors"))
    result = cli("eval", out / "best.safetensors", "--data-dir", tiny_data, "--device", "cpu", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["accuracy"] == max(r["test_acc"] for r in history)


# Both processes' networks turn non-finite on their 14th training batch: epoch 2, step 4 at 10 steps an epoch
# (16 images a process).
_POISONED = network_with_event(14, TURN_NON_FINITE)


def test_a_diverging_group_says_so_once_with_the_real_step(tiny_data: Path, tmp_path: Path) -> None:
    spec = write_network(tmp_path / "poisoned.py", _POISONED)
    done = _torchrun("--model", spec, "--epochs", "3", "--batch-size", "32", "--data-dir", str(tiny_data),
                     "--out", str(tmp_path / "run"))
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if "training diverged" in line]
    assert len(lines) == 1, done.stderr[-3000:]  # one process speaks, not each
    # the step, not a sum; and the file that exists
    assert f"non-finite at epoch 2, step 4; {tmp_path / 'run' / 'last.safetensors'} keeps epoch 1" in lines[0]


# Asks its own process to stop (SIGTERM) at its 22nd training batch when told to: epoch 2, step 3 of 19 (8
# images a process), so both processes stop together at the next log step, mid-epoch.
_STOPS = network_with_event(22, 'os.environ.get("STOP_FOR_TEST") and os.kill(os.getpid(), signal.SIGTERM)')


def test_a_group_stopped_mid_epoch_resumes_to_the_same_history(tiny_data: Path, tmp_path: Path) -> None:
    spec = write_network(tmp_path / "stops.py", _STOPS)
    common = ("--model", spec, "--epochs", "3", "--batch-size", "16", "--seed", "5", "--data-dir", str(tiny_data))
    whole = _torchrun(*common, "--out", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr[-3000:]

    stopped = _torchrun(*common, "--out", str(tmp_path / "cut"), env={"STOP_FOR_TEST": "1"})
    assert stopped.returncode != 0 and "Resume with:" in stopped.stderr, stopped.stderr[-2000:]
    position = load_checkpoint(tmp_path / "cut" / "last.safetensors").train_state["position"]
    assert (position["epoch"], position["batches"]) == (2, 10)  # mid-epoch: 10 of 19 steps
    resumed = _torchrun("--resume", str(tmp_path / "cut" / "last.safetensors"), "--model", spec,
                        "--data-dir", str(tiny_data))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    # The resumed epoch's training loss and accuracy count every process's share once, not rank 0's twice.
    assert history_without_times(tmp_path / "cut") == history_without_times(tmp_path / "whole")


_FETCHES = """
import sys, time
from pathlib import Path
import torch
from cifar_cli.runtime import init_distributed, once_per_machine, shutdown_distributed

dist = init_distributed(torch.device("cpu"))
folder = Path(sys.argv[1])

def fetch():
    time.sleep(1)  # a slow download: a process that did not wait for it would find nothing
    (folder / f"fetched-by-{dist.rank}").write_text("")

once_per_machine(dist, fetch)
(folder / f"saw-{dist.rank}").write_text(",".join(sorted(p.name for p in folder.glob("fetched-by-*"))))
shutdown_distributed(together=True)
"""


def test_a_download_is_done_once_per_machine_while_the_others_wait(tmp_path: Path) -> None:
    """What `train --download` does under torchrun (run_plan.read_run_data): all writing one archive would
    mangle it."""
    (tmp_path / "fetch.py").write_text(_FETCHES)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(tmp_path / "fetch.py"), str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.glob("fetched-by-*")) == ["fetched-by-0"]
    assert [(tmp_path / f"saw-{rank}").read_text() for rank in (0, 1)] == ["fetched-by-0"] * 2
