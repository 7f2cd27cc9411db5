"""What the GPU path decides, tested on the CPU as far as torch allows: the dtype every process autocasts in
(and the switch that imitates a T4), the fused optimizer step, the global batch, evaluation without waits,
the memory format of what a resume restores, and what running out of memory leaves. (On a real card:
test_cuda.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_clean_error, cli, history_without_times, write_network

from cifar_cli.checkpoint import load_checkpoint
from cifar_cli.data import load_split
from cifar_cli.errors import CifarError
from cifar_cli.models import create_model, preset_spec
from cifar_cli.optimizer_state import flatten_optimizer, unflatten_optimizer
from cifar_cli.run_state import Resume, settings_of
from cifar_cli.runtime import (
    PRETEND_CAPABILITY,
    Distributed,
    Runtime,
    autocast_dtype,
    capability_in_use,
    cuda_missing,
    eval_batch_size,
    once_per_machine,
    weakest_capability,
)
from cifar_cli.settings import TrainSettings
from cifar_cli.training.evaluation import evaluate, predict
from cifar_cli.training.loop import train, train_step
from cifar_cli.training.trainer import build_trainer, sgd

SMALL = preset_spec("cifarnet-ds")


def test_pretending_compute_capability_7_5_gives_a_newer_card_a_t4s_fp16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PRETEND_CAPABILITY, "7.5")
    assert capability_in_use((9, 0)) == (7, 5)
    assert autocast_dtype("cuda", capability_in_use((9, 0)), None) == torch.float16
    assert capability_in_use((6, 1)) == (6, 1)  # never more than the card has


def test_a_malformed_pretended_capability_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PRETEND_CAPABILITY, "turing")
    with pytest.raises(CifarError, match=PRETEND_CAPABILITY):
        capability_in_use((9, 0))


def test_without_the_switch_the_card_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PRETEND_CAPABILITY, raising=False)
    assert capability_in_use((9, 0)) == (9, 0)
    assert weakest_capability(Distributed(), torch.device("cpu")) is None  # no card, no collective


def test_cuda_not_available_names_the_build_and_the_driver_it_needs() -> None:
    line = cuda_missing("13.0")
    assert "CUDA 13.0" in line and "580" in line and "docs/gpu.md" in line and "\n" not in line
    assert "CPU-only" in cuda_missing(None)


def test_the_fused_step_is_chosen_on_cuda_and_a_cpu_run_resumes_under_it() -> None:
    settings = TrainSettings(epochs=1, batch_size=32)
    model = create_model(SMALL)
    on_cpu, on_cuda = sgd(model, settings, torch.device("cpu")), sgd(model, settings, torch.device("cuda"))
    assert on_cuda.defaults["fused"] is True and not on_cpu.defaults["fused"]
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    on_cpu.step()
    tensors, meta = flatten_optimizer(on_cpu)
    restored = unflatten_optimizer(tensors, json.loads(json.dumps(meta)), on_cuda)
    assert all(group["fused"] is True for group in restored["param_groups"])


def test_the_batch_is_the_whole_steps_split_among_processes(splits: tuple, tmp_path: Path) -> None:
    assert Distributed(world=4).batch_share(64) == 16 and Distributed().batch_share(63) == 63
    with pytest.raises(CifarError, match="--batch-size 30 .* multiple of 4"):
        train(TrainSettings(epochs=1, batch_size=30), *splits, tmp_path / "run", torch.device("cpu"),
              dist=Distributed(rank=0, world=4))
    assert not (tmp_path / "run").exists()


def test_once_per_machine_alone_does_the_work_and_raises_its_error() -> None:
    done: list[int] = []
    once_per_machine(Distributed(), lambda: done.append(1))
    assert done == [1]
    with pytest.raises(CifarError, match="offline"):
        once_per_machine(Distributed(), lambda: (_ for _ in ()).throw(CifarError("offline")))


def test_evaluation_counts_the_confusion_matrix_as_predictions_say(splits: tuple) -> None:
    test = splits[1]
    model = create_model(SMALL).eval()
    result = evaluate(model, test, torch.device("cpu"), batch_size=32)
    predicted = predict(model, test.images, torch.device("cpu"), batch_size=32).argmax(1).numpy()
    expected = np.zeros((10, 10), dtype=int)
    np.add.at(expected, (test.labels, predicted), 1)
    assert result.confusion == expected.tolist()
    assert result.accuracy == pytest.approx(float((predicted == test.labels).mean()))
    assert eval_batch_size(torch.device("cpu")) == 256 and eval_batch_size(torch.device("cuda")) == 2048


def test_mixup_keeps_the_batch_in_the_networks_memory_format(tiny_data: Path) -> None:
    settings = TrainSettings(epochs=1, batch_size=32, mixup=1.0)
    trainer = build_trainer(settings, SMALL, load_split(tiny_data, train=True), torch.device("cpu"), Runtime(),
                            Distributed())
    layouts = []
    trainer.model.register_forward_pre_hook(
        lambda module, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    trainer.plan.set_epoch(1)
    for step, (images, labels) in enumerate(trainer.loader, start=1):
        train_step(trainer, images, labels, 1, step)
    assert layouts and all(layouts)


def test_momentum_buffers_resume_in_their_weights_memory_format(tiny_data: Path, tmp_path: Path) -> None:
    done = cli("train", "--model", "cifarnet-ds", "--epochs", "1", "--batch-size", "64", "--seed", "3",
               "--data-dir", tiny_data, "--out", tmp_path, "--device", "cpu")
    assert done.exit_code == 0, done.stderr
    checkpoint = load_checkpoint(tmp_path / "last.safetensors")
    settings = settings_of(checkpoint)
    trainer = build_trainer(settings, SMALL, load_split(tiny_data, train=True), torch.device("cpu"), Runtime(),
                            Distributed(), Resume.read(checkpoint, settings))
    params = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    assert any(p.dim() == 4 and not p.is_contiguous() for p in params)  # channels_last weights are there
    for p in params:
        assert trainer.optimizer.state[p]["momentum_buffer"].stride() == p.stride()


# Raises the error CUDA raises when the card's memory is full, on its 14th training batch (epoch 2, step 4 at
# 10 steps an epoch), once: a flag file says it already did, so the resumed run goes on.
_RUNS_OUT = """
import os

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc, self.batches = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 10), 0

    def forward(self, x):
        if self.training and len(x) > 3:
            self.batches += 1
            if self.batches == 14 and not os.path.exists(os.environ["OOM_FLAG"]):
                open(os.environ["OOM_FLAG"], "w").close()
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if not self.training and len(x) > 16 and os.environ.get("OOM_IN_EVAL"):  # not the checks on a few
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
        return self.fc(F.relu(self.conv(x)).mean((2, 3)))
"""


def test_running_out_of_memory_mid_epoch_saves_says_one_line_and_resumes(
        tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = write_network(tmp_path / "big.py", _RUNS_OUT)
    common = ("--model", spec, "--epochs", "3", "--batch-size", "32", "--seed", "2", "--data-dir", str(tiny_data),
              "--device", "cpu")
    monkeypatch.setenv("OOM_FLAG", str(tmp_path / "already"))
    (tmp_path / "already").touch()
    whole = cli("train", *common, "--out", tmp_path / "whole")
    assert whole.exit_code == 0, whole.stderr
    (tmp_path / "already").unlink()

    cut = cli("train", *common, "--out", tmp_path / "cut")
    assert_clean_error(cut, "ran out of memory at epoch 2", "smaller --batch-size",
                       str(tmp_path / "cut" / "last.safetensors"))
    assert len(cut.stderr.strip().splitlines()) == 1, cut.stderr
    position = load_checkpoint(tmp_path / "cut" / "last.safetensors").train_state["position"]
    assert (position["epoch"], position["batches"]) == (2, 3)  # the steps before the one that failed

    resumed = cli("train", "--resume", tmp_path / "cut" / "last.safetensors", "--model", spec,
                  "--data-dir", tiny_data, "--device", "cpu")
    assert resumed.exit_code == 0, resumed.stderr
    assert history_without_times(tmp_path / "cut") == history_without_times(tmp_path / "whole")

    monkeypatch.setenv("OOM_IN_EVAL", "1")
    evaluated = cli("eval", tmp_path / "cut" / "best.safetensors", "--model", spec, "--data-dir", tiny_data,
                    "--device", "cpu")
    assert_clean_error(evaluated, "ran out of memory", "smaller --batch-size")
    assert len(evaluated.stderr.strip().splitlines()) == 1, evaluated.stderr
