"""Where a run executes: the AMP dtype each card gets, fp16 steps with a loss scaler, GPUs per process."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch
from conftest import write_cifar

from cifar_cli.data import load_split
from cifar_cli.errors import CifarError
from cifar_cli.models import preset_spec
from cifar_cli.runtime import Distributed, Runtime, autocast_dtype, resolve_device
from cifar_cli.settings import TrainSettings
from cifar_cli.training.loop import train, train_step
from cifar_cli.training.trainer import build_trainer


@pytest.mark.parametrize("capability, amp, dtype", [
    ((9, 0), None, torch.bfloat16),  # H100
    ((8, 0), True, torch.bfloat16),  # A100
    ((8, 6), None, torch.bfloat16),  # RTX 30xx
    ((7, 5), None, torch.float16),  # T4, RTX 20xx: bf16 is only emulated there, cuDNN has no bf16 convolutions
    ((7, 5), True, torch.float16),  # --amp never forces what the card lacks
    ((7, 0), None, torch.float16),  # V100
    ((6, 1), None, None),  # Pascal: fp32
    ((6, 1), True, None),
    ((9, 0), False, None),  # --no-amp
])
def test_the_autocast_dtype_is_what_the_card_can_do(capability: tuple[int, int], amp: bool | None,
                                                     dtype: torch.dtype | None) -> None:
    assert autocast_dtype("cuda", capability, amp) == dtype


@pytest.mark.parametrize("device", ["cpu", "mps"])
def test_no_autocast_off_cuda(device: str) -> None:
    assert autocast_dtype(device, None, True) is None and autocast_dtype(device, None, None) is None


def _fp16_trainer(tiny_data: Path, init_scale: float) -> object:
    settings = TrainSettings(epochs=1, batch_size=32, lr=0.05)
    cpu = torch.device("cpu")
    trainer = build_trainer(settings, preset_spec(), load_split(tiny_data, train=True), cpu, Runtime(),
                            Distributed())
    return dataclasses.replace(trainer, amp_dtype=torch.float16,
                               scaler=torch.amp.GradScaler("cpu", init_scale=init_scale))


def test_fp16_steps_train_through_the_loss_scaler(tiny_data: Path) -> None:
    """The step T4-class cards take (fp16 autocast + GradScaler), run on the CPU where torch allows it."""
    trainer = _fp16_trainer(tiny_data, init_scale=2.0**10)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.plan.set_epoch(1)
    losses = [train_step(trainer, images, labels, 1, step)[0].item()
              for step, (images, labels) in enumerate(trainer.loader, start=1)]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    assert not torch.equal(before["c1.1.body.0.0.weight"], trainer.model.state_dict()["c1.1.body.0.0.weight"])


def test_an_overflowing_fp16_step_is_skipped_not_written_into_the_weights(tiny_data: Path) -> None:
    trainer = _fp16_trainer(tiny_data, init_scale=2.0**60)  # the scaled gradients overflow fp16 at once
    before = {k: v.clone() for k, v in trainer.model.state_dict().items() if v.is_floating_point()}
    trainer.plan.set_epoch(1)
    images, labels = next(iter(trainer.loader))
    train_step(trainer, images, labels, 1, 1)
    after = trainer.model.state_dict()
    assert trainer.scaler.get_scale() == 2.0**59  # backed off
    assert all(torch.isfinite(after[k]).all() for k in before)
    assert torch.equal(before["c1.0.0.weight"], after["c1.0.0.weight"])  # the step was skipped


def test_more_processes_than_gpus_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two ranks on one GPU would share it silently; a machine with one GPU stands in for the real thing."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(CifarError, match="LOCAL_RANK 1 has no GPU of its own: this machine has 1"):
        resolve_device("cuda")


@pytest.mark.skipif(shutil.which("c++") is None, reason="torch.compile on the CPU needs a C++ compiler")
def test_compile_builds_one_graph_for_a_run_whose_last_batch_is_smaller(tmp_path: Path) -> None:
    """350 images in batches of 128: 128, 128, then 94. A graph compiled for 128 only would compile again
    for 94 in every run (and resume). (On the CPU, inductor also compiles again when the last batch falls
    on the other side of its 4096-value reduction threshold, batch x height x width: 64 and 256 images
    here. The default batch of 128 with 50,000 images leaves 80, on the same side.)"""
    from torch._dynamo.utils import counters

    root = write_cifar(tmp_path / "data", per_batch=70)
    splits = load_split(root, train=True), load_split(root, train=False)
    torch._dynamo.reset()
    counters.clear()
    train(TrainSettings(epochs=2, batch_size=128, lr=0.05), *splits, tmp_path / "run", torch.device("cpu"),
          runtime=Runtime(compile=True))
    assert counters["stats"]["unique_graphs"] == 1
    torch._dynamo.reset()
