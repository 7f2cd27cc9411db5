"""Interrupted, diverged or starved runs lose nothing, and resume to exactly the uninterrupted run."""

from __future__ import annotations

import errno
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    CANDIDATES,
    TURN_NON_FINITE,
    SignalAt,
    assert_clean_error,
    cli,
    history_without_times,
    network_with_event,
    write_network,
)

from cifar_cli.checkpoint import load_checkpoint
from cifar_cli.data import AugmentedBatches, EpochBatches
from cifar_cli.errors import CifarError
from cifar_cli.models import resolve_model
from cifar_cli.run_folder import lock_out_dir
from cifar_cli.runtime import Runtime
from cifar_cli.settings import DEFAULTS, TrainSettings
from cifar_cli.training.loop import train
from cifar_cli.training.session import TrainingInterrupted

SETTINGS = TrainSettings(epochs=3, batch_size=16, lr=0.05, seed=2)
CPU = torch.device("cpu")
CLI_SETTINGS = ("--epochs", "3", "--batch-size", "16", "--lr", "0.05", "--seed", "2", "--device", "cpu")
_history = history_without_times


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(out / "last.safetensors").model_state


def _assert_same_run(a: Path, b: Path) -> None:
    assert _history(a) == _history(b)
    wa, wb = _weights(a), _weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def reference(splits: tuple, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run every interrupted one must end up equal to."""
    out = tmp_path_factory.mktemp("reference")
    train(SETTINGS, *splits, out, CPU)
    return out


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_epoch_saves_and_resumes_to_the_same_run(signum: int, splits: tuple, reference: Path,
                                                             tmp_path: Path) -> None:
    with pytest.raises(TrainingInterrupted) as stopped:
        train(SETTINGS, *splits, tmp_path, CPU, observer=SignalAt(signum, epoch=2, step=10))
    assert (stopped.value.signum, stopped.value.epoch, stopped.value.step) == (signum, 2, 11)
    state = load_checkpoint(tmp_path / "last.safetensors").train_state
    assert state["position"]["epoch"] == 2 and state["position"]["batches"] == 11
    train(SETTINGS, *splits, tmp_path, CPU, resume=load_checkpoint(tmp_path / "last.safetensors"))
    _assert_same_run(tmp_path, reference)


def test_a_signal_during_evaluation_stops_it_at_once_and_resumes_to_the_same_run(splits: tuple,
                                                                                 tmp_path: Path) -> None:
    """Under torchrun the launcher kills processes that take long to stop, so a stop that arrives while an
    epoch is being evaluated must not wait for the evaluation: it saves the finished, unjudged epoch."""
    flag = tmp_path / "signal-during-evaluation"
    network = write_network(tmp_path / "evaluated.py", f"""
import os, signal

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc, self.evaluated = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 10), 0

    def forward(self, x):
        if not self.training and len(x) > 3:
            self.evaluated += 1
            if self.evaluated == 1 and os.path.exists({str(flag)!r}):
                os.remove({str(flag)!r})
                os.kill(os.getpid(), signal.SIGINT)
        return self.fc(F.relu(self.conv(x)).mean((2, 3)))
""")
    settings, spec = replace(SETTINGS, epochs=2), resolve_model(network)
    judged_on = (splits[0], splits[0])  # 300 images: evaluated in two batches, so there is a batch to skip
    uninterrupted, stopped_run = tmp_path / "uninterrupted", tmp_path / "stopped"
    train(settings, *judged_on, uninterrupted, CPU, model_spec=spec)
    flag.touch()
    with pytest.raises(TrainingInterrupted) as stopped:
        train(settings, *judged_on, stopped_run, CPU, model_spec=spec)
    steps = -(-len(splits[0]) // settings.batch_size)
    assert (stopped.value.epoch, stopped.value.step) == (1, steps) and not flag.exists()
    assert not (stopped_run / "history.json").exists()  # the epoch was not judged
    position = load_checkpoint(stopped_run / "last.safetensors").train_state["position"]
    assert (position["epoch"], position["batches"]) == (1, steps)
    train(settings, *judged_on, stopped_run, CPU, model_spec=spec,
          resume=load_checkpoint(stopped_run / "last.safetensors"))
    _assert_same_run(stopped_run, uninterrupted)


def _start_cli(tiny_data: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cifar_cli", "train", "--data-dir", str(tiny_data), "--out",
                             str(out), *CLI_SETTINGS, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _wait_for_epoch(out: Path, process: subprocess.Popen, epochs: int = 1) -> None:
    deadline = time.monotonic() + 600  # generous: a loaded CI machine can be many times slower
    while time.monotonic() < deadline and process.poll() is None:
        try:  # last.safetensors is an epoch's final write: history.json, best, then last
            if len(json.loads((out / "history.json").read_text())) >= epochs and (out / "last.safetensors").exists():
                return
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.01)
    raise AssertionError(f"no epoch finished: {process.communicate()}")


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_cli_exits_with_the_signal_code_and_says_how_to_resume(signum: int, code: int, tiny_data: Path,
                                                              reference: Path, tmp_path: Path) -> None:
    process = _start_cli(tiny_data, tmp_path)
    _wait_for_epoch(tmp_path, process)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr
    assert f"Resume with: cifar train --resume {tmp_path / 'last.safetensors'}" in " ".join(stderr.split())
    assert "Traceback" not in stderr
    printed = stderr.split("Resume with: ", 1)[1].strip()  # pasted as printed: it names --data-dir too
    assert shlex.split(printed)[:2] == ["cifar", "train"]
    result = cli(*shlex.split(printed)[1:])
    assert result.exit_code == 0, result.stderr
    _assert_same_run(tmp_path, reference)


def test_kill_9_mid_run_leaves_a_checkpoint_that_resumes(tiny_data: Path, reference: Path, tmp_path: Path) -> None:
    process = _start_cli(tiny_data, tmp_path)
    _wait_for_epoch(tmp_path, process)
    process.kill()
    process.communicate(timeout=60)
    survivor = load_checkpoint(tmp_path / "last.safetensors")  # intact, whatever moment the kill hit
    assert survivor.epoch >= 1
    result = cli("train", "--resume", tmp_path / "last.safetensors", "--data-dir", tiny_data, "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    _assert_same_run(tmp_path, reference)


# Turns non-finite on its 24th training batch: epoch 2, step 5, at 19 steps an epoch.
_POISONED = network_with_event(24, TURN_NON_FINITE)


def test_non_finite_loss_stops_with_epoch_step_and_hint(splits: tuple, tmp_path: Path) -> None:
    spec = resolve_model(write_network(tmp_path / "poisoned.py", _POISONED))
    expected = r"non-finite at epoch 2, step 5; \S*/run/last\.safetensors keeps epoch 1; .*lower --lr"
    with pytest.raises(CifarError, match=expected):
        train(SETTINGS, *splits, tmp_path / "run", CPU, model_spec=spec)
    good = load_checkpoint(tmp_path / "run" / "last.safetensors")
    assert good.epoch == 1 and all(torch.isfinite(t).all() for t in good.model_state.values() if t.is_floating_point())


def test_divergence_before_any_checkpoint_says_none_was_written(splits: tuple, tmp_path: Path) -> None:
    with pytest.raises(CifarError, match="no checkpoint was written yet"):
        train(TrainSettings(epochs=1, batch_size=16, lr=1e6), *splits, tmp_path, CPU)
    assert not (tmp_path / "last.safetensors").exists()


class _DiskFillsAfter:
    """Stands in for a disk that fills up once the given epoch has been saved."""

    def __init__(self, epoch: int, monkeypatch: pytest.MonkeyPatch):
        self.epoch, self.monkeypatch = epoch, monkeypatch

    def epoch_start(self, epoch: int, epochs: int, steps: int, done: int) -> None: ...
    def step(self, step: int, loss: float, acc: float) -> None: ...

    def epoch_end(self, record: object) -> None:
        if record.epoch == self.epoch:
            def full(fd: int) -> None:
                raise OSError(errno.ENOSPC, "No space left on device")

            self.monkeypatch.setattr(os, "fsync", full)


def test_full_disk_while_saving_keeps_the_previous_checkpoint(splits: tuple, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(CifarError, match="No space left on device"):
        train(SETTINGS, *splits, tmp_path, CPU, observer=_DiskFillsAfter(1, monkeypatch))
    assert load_checkpoint(tmp_path / "last.safetensors").epoch == 1
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_two_runs_cannot_share_an_output_folder(tiny_data: Path, tmp_path: Path) -> None:
    with lock_out_dir(tmp_path):
        assert_clean_error(cli("train", "--data-dir", tiny_data, "--out", tmp_path, *CLI_SETTINGS),
                           "in use by another cifar train", f"pid {os.getpid()}")
    assert not (tmp_path / "history.json").exists()
    result = cli("train", "--data-dir", tiny_data, "--out", tmp_path, *CLI_SETTINGS[2:], "--epochs", "1")
    assert result.exit_code == 0, result.stderr


def test_loader_workers_do_not_change_the_batches(splits: tuple) -> None:
    from torch.utils.data import DataLoader

    from cifar_cli.augment import BatchAugmenter, train_pipeline
    def batches(workers: int) -> list[torch.Tensor]:
        plan = EpochBatches(len(splits[0]), 32, seed=9, odds=DEFAULTS.augment_odds)
        plan.set_epoch(3)
        augment = BatchAugmenter(train_pipeline(DEFAULTS.augment_odds))
        loader = DataLoader(AugmentedBatches(splits[0], augment), batch_sampler=plan,
                            collate_fn=lambda b: b, num_workers=workers)
        return [images for images, _ in loader]

    alone, shared = batches(0), batches(2)
    assert len(alone) == len(shared) == 10 and all(torch.equal(a, b) for a, b in zip(alone, shared))


def test_epoch_plan_shares_are_disjoint_and_cover_the_data() -> None:
    shares = []
    for rank in range(3):
        plan = EpochBatches(100, 8, seed=1, rank=rank, world=3, odds=DEFAULTS.augment_odds)
        plan.set_epoch(2)
        shares.append(np.concatenate([indices for _, indices, _ in plan]))
    assert all(len(s) == 33 for s in shares)
    union = np.concatenate(shares)
    assert len(set(union.tolist())) == 99  # disjoint; one image left over, as in DistributedSampler(drop_last)


@pytest.mark.parametrize("second_copy", [{"ema": 0.9}, {"lookahead": 0.95}], ids=["ema", "lookahead"])
def test_a_run_with_a_second_copy_of_the_weights_resumes_to_the_same_run(splits: tuple, tmp_path: Path,
                                                                       second_copy: dict) -> None:
    settings = replace(TrainSettings(epochs=2, batch_size=16, lr=0.05, seed=2, lookahead=0.0), **second_copy)
    train(settings, *splits, tmp_path / "whole", CPU)
    with pytest.raises(TrainingInterrupted):
        train(settings, *splits, tmp_path / "cut", CPU, observer=SignalAt(signal.SIGINT, epoch=1, step=10))
    cut_mid_epoch = load_checkpoint(tmp_path / "cut" / "last.safetensors")
    resumed = train(settings, *splits, tmp_path / "cut", CPU, resume=cut_mid_epoch)
    assert resumed.history[-1].epoch == 2
    _assert_same_run(tmp_path / "cut", tmp_path / "whole")  # the history and the evaluated weights
    whole, cut = (load_checkpoint(tmp_path / run / "last.safetensors") for run in ("whole", "cut"))
    assert all(torch.equal(whole.raw_state[k], cut.raw_state[k]) for k in whole.raw_state)
    # Stopped between two of lookahead's syncs (after step 11), the trained weights had moved on from the slow ones.
    assert not torch.equal(cut_mid_epoch.raw_state["head.2.weight"], cut_mid_epoch.model_state["head.2.weight"])
    # The copy is what was evaluated. An average stays apart from the trained weights; lookahead's last
    # step syncs, so its run ends with both equal.
    assert whole.metrics["test_acc"] == _history(tmp_path / "whole")[-1]["test_acc"]
    ends_equal = torch.equal(whole.raw_state["head.2.weight"], whole.model_state["head.2.weight"])
    assert ends_equal == ("lookahead" in second_copy)
    plain = train(replace(settings, ema=0.0, lookahead=0.0), *splits, tmp_path / "plain", CPU)
    # Lookahead steers training itself (its loss changes); an average only watches.
    assert (plain.history[-1].train_loss == resumed.history[-1].train_loss) == ("ema" in second_copy)


def test_the_device_augmentation_path_resumes_mid_epoch_to_the_same_run(splits: tuple, reference: Path,
                                                                        tmp_path: Path) -> None:
    """The GPU-resident path (here on the CPU) draws every batch from (seed, epoch, batch) like the loader."""
    on_device = Runtime(augment_on="device")
    whole = train(SETTINGS, *splits, tmp_path / "whole", CPU, runtime=on_device)
    with pytest.raises(TrainingInterrupted):
        train(SETTINGS, *splits, tmp_path / "cut", CPU, runtime=on_device,
              observer=SignalAt(signal.SIGTERM, epoch=2, step=10))
    train(SETTINGS, *splits, tmp_path / "cut", CPU, runtime=on_device,
          resume=load_checkpoint(tmp_path / "cut" / "last.safetensors"))
    _assert_same_run(tmp_path / "cut", tmp_path / "whole")
    assert _history(tmp_path / "whole") != _history(reference)  # other random draws: it really ran
    assert whole.history[-1].test_acc > 0.5  # and it learns (10 classes: chance is 0.1)
    assert json.loads((tmp_path / "whole" / "settings.json").read_text())["augment_on"] == "device"


def test_a_run_with_a_whitened_stem_resumes_to_the_same_run(splits: tuple, tmp_path: Path) -> None:
    """A frozen stem has no optimizer state; the resumed run must still be the uninterrupted one."""
    spec = resolve_model(f"{CANDIDATES}:whitened")
    settings = TrainSettings(epochs=2, batch_size=16, lr=0.05, seed=2)
    train(settings, *splits, tmp_path / "whole", CPU, model_spec=spec)
    with pytest.raises(TrainingInterrupted):
        train(settings, *splits, tmp_path / "cut", CPU, model_spec=spec,
              observer=SignalAt(signal.SIGINT, epoch=1, step=10))
    cut_mid_epoch = load_checkpoint(tmp_path / "cut" / "last.safetensors")
    train(settings, *splits, tmp_path / "cut", CPU, model_spec=spec, resume=cut_mid_epoch)
    _assert_same_run(tmp_path / "cut", tmp_path / "whole")


def test_a_mixup_run_resumes_mid_epoch_to_the_same_run(splits: tuple, reference: Path, tmp_path: Path) -> None:
    """--mixup draws each step's blend from (seed, epoch, step): a resumed run blends as the whole one did."""
    mixed = replace(SETTINGS, mixup=0.4)
    whole = train(mixed, *splits, tmp_path / "whole", CPU)
    with pytest.raises(TrainingInterrupted):
        train(mixed, *splits, tmp_path / "cut", CPU, observer=SignalAt(signal.SIGINT, epoch=2, step=10))
    train(mixed, *splits, tmp_path / "cut", CPU, resume=load_checkpoint(tmp_path / "cut" / "last.safetensors"))
    _assert_same_run(tmp_path / "cut", tmp_path / "whole")
    # Blended batches are harder to fit: the same run without mixup ends with a lower training loss.
    assert whole.history[-1].train_loss > _history(reference)[-1]["train_loss"]
    assert whole.history[-1].test_acc > 0.5  # and it still learns (10 classes: chance is 0.1)
