"""The CUDA path on a real GPU: training and resume with the GPU-resident data, the AMP dtype the card
gets, and checkpoints written on the GPU read on the CPU. (Augmentation parity on the device is in
test_device_augment.py.) Skipped where there is no CUDA device; everything here also runs on the CPU in
other tests as far as torch allows.

GPU kernels (cuDNN's algorithm choice, atomics in backward passes) are not bit-reproducible, so a resumed
run is compared with the uninterrupted one by what it trained on and how well, not bit for bit.
"""

from __future__ import annotations

import json
import signal
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import SignalAt, cli

from cifar_cli.checkpoint import load_checkpoint
from cifar_cli.models import create_model, preset_spec
from cifar_cli.runtime import PRETEND_CAPABILITY, Distributed, Runtime, autocast_dtype
from cifar_cli.settings import TrainSettings
from cifar_cli.training.evaluation import evaluate, resident
from cifar_cli.training.loop import train, train_step
from cifar_cli.training.session import TrainingInterrupted
from cifar_cli.training.trainer import build_trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
SETTINGS = TrainSettings(epochs=3, batch_size=16, lr=0.05, seed=2)


@pytest.fixture(scope="module")
def gpu_run(splits: tuple, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gpu")
    train(SETTINGS, *splits, out, torch.device("cuda"))
    return out


def test_a_gpu_run_trains_on_device_augmented_data_in_the_cards_dtype(gpu_run: Path) -> None:
    written = json.loads((gpu_run / "settings.json").read_text())
    assert written["augment_on"] == "device"
    expected = autocast_dtype("cuda", torch.cuda.get_device_capability(), None)
    assert written["amp"] == (str(expected).removeprefix("torch.") if expected else None)
    history = json.loads((gpu_run / "history.json").read_text())
    assert history[-1]["test_acc"] > 0.5  # 10 classes: chance is 0.1


def test_a_gpu_run_stopped_mid_epoch_resumes_where_it_stopped(splits: tuple, gpu_run: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingInterrupted):
        train(SETTINGS, *splits, tmp_path, torch.device("cuda"), observer=SignalAt(signal.SIGINT, epoch=2, step=10))
    assert load_checkpoint(tmp_path / "last.safetensors").train_state["position"]["batches"] == 11
    resumed = train(SETTINGS, *splits, tmp_path, torch.device("cuda"),
                    resume=load_checkpoint(tmp_path / "last.safetensors"))
    whole = json.loads((gpu_run / "history.json").read_text())
    assert [r.images for r in resumed.history] == [r["images"] for r in whole]
    assert abs(resumed.history[-1].test_acc - whole[-1]["test_acc"]) < 0.1


def test_the_loader_path_still_runs_on_the_gpu(splits: tuple, tmp_path: Path) -> None:
    result = train(SETTINGS, *splits, tmp_path, torch.device("cuda"), runtime=Runtime(augment_on="loader"))
    assert json.loads((tmp_path / "settings.json").read_text())["augment_on"] == "loader"
    assert result.history[-1].test_acc > 0.5


def test_a_checkpoint_written_on_the_gpu_evaluates_on_the_cpu(gpu_run: Path, tiny_data: Path) -> None:
    result = cli("eval", str(gpu_run / "best.safetensors"), "--data-dir", tiny_data, "--device", "cpu", "--json")
    assert result.exit_code == 0, result.stderr
    recorded = load_checkpoint(gpu_run / "best.safetensors").metrics["test_acc"]
    assert abs(json.loads(result.stdout)["accuracy"] - recorded) <= 0.02  # autocast on the GPU, fp32 here


def test_bf16_is_never_chosen_below_ampere() -> None:
    capability = torch.cuda.get_device_capability()
    dtype = Runtime().amp_dtype(torch.device("cuda"))
    assert dtype == (torch.bfloat16 if capability >= (8, 0) else torch.float16 if capability >= (7, 0) else None)


def _sync_warnings(work: Callable[[], object]) -> list[str]:
    """The host-device waits `work` makes, as torch's sync debug mode reports them."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            work()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return [str(w.message) for w in caught if "synchroniz" in str(w.message).lower()]


@pytest.mark.parametrize("pretend", ["", "7.5"])  # the card's dtype, and the T4's fp16 with its loss scaler
def test_training_steps_never_wait_for_the_device(splits: tuple, pretend: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PRETEND_CAPABILITY, pretend)
    cuda = torch.device("cuda")
    trainer = build_trainer(TrainSettings(epochs=1, batch_size=32, mixup=0.2), preset_spec(), splits[0], cuda,
                            Runtime(augment_on="device"), Distributed())
    assert (trainer.amp_dtype == torch.float16) == (pretend == "7.5" or torch.cuda.get_device_capability() < (8, 0))
    assert trainer.optimizer.defaults["fused"] is True
    trainer.plan.set_epoch(1)
    batches = [(images.clone(), labels.clone()) for images, labels in trainer.loader]
    train_step(trainer, *batches[0], 1, 1)  # the first step allocates the scaler's and optimizer's state

    def steps() -> None:
        for step, (images, labels) in enumerate(batches[1:], start=2):
            train_step(trainer, images, labels, 1, step)

    assert _sync_warnings(steps) == []


def test_an_evaluation_waits_for_the_device_once(splits: tuple) -> None:
    cuda = torch.device("cuda")
    model = create_model(preset_spec()).to(cuda, memory_format=torch.channels_last)
    test = resident(splits[1], cuda)
    dtype = Runtime().amp_dtype(cuda)
    waits = _sync_warnings(lambda: evaluate(model, test, cuda, batch_size=16, amp_dtype=dtype))
    assert len(waits) == 1, waits  # the result read back at the end, however many batches
