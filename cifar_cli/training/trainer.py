"""Building a run: the network (fresh, or a checkpoint's), its optimizer and one-cycle schedule, any shadow
weights, and the epoch's augmented batches, gathered in a `Trainer` that the loop steps.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from cifar_cli import device_augment
from cifar_cli.augment import BatchAugmenter, train_pipeline
from cifar_cli.checkpoint import Checkpoint, model_from_checkpoint
from cifar_cli.data import AugmentedBatches, DeviceBatches, EpochBatches, Split
from cifar_cli.models import ModelSpec, create_model
from cifar_cli.models.spec import check_trainable
from cifar_cli.run_state import Resume, named
from cifar_cli.runtime import Distributed, Runtime, memory_format
from cifar_cli.settings import TrainSettings
from cifar_cli.training.evaluation import to_device
from cifar_cli.training.shadows import ShadowWeights, shadow_weights

INIT_IMAGES = 5000  # training images a network may set weights from (init_from_data): 4.5M 3x3 patches


@dataclass
class Trainer:
    """What a training step needs: the network in its three roles, the optimizer and the batches."""

    settings: TrainSettings
    spec: ModelSpec
    model: nn.Module  # the weights being trained
    step_model: nn.Module  # what the step calls: `model` itself, or wrapped for DDP and/or compiled
    eval_model: nn.Module  # what is evaluated and saved: the average or slow weights if any, else `model`
    shadow: ShadowWeights | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler  # scales fp16 losses; a no-op in every other dtype
    plan: EpochBatches
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]]  # augmented uint8 batches: DeviceBatches or a DataLoader
    device: torch.device
    dist: Distributed
    amp_dtype: torch.dtype | None
    compiled: bool = False  # step_model is torch.compile'd

    @property
    def steps_per_epoch(self) -> int:
        return self.plan.batches_per_epoch()

    @property
    def augment_on(self) -> str:
        """Where the training images are augmented: "device" or "loader" (RunChoices.augment_on)."""
        return "device" if isinstance(self.loader, DeviceBatches) else "loader"


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay shrinks conv and linear weights only; on BatchNorm and biases it only hurts."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def init_from_data(model: nn.Module, split: Split) -> None:
    """A network that sets weights from the data (a whitened stem) gets the first INIT_IMAGES training
    images, un-augmented and normalised, through its `init_from_images`, before the first step."""
    init = getattr(model, "init_from_images", None)
    if callable(init):
        init(to_device(torch.from_numpy(split.images[:INIT_IMAGES]).permute(0, 3, 1, 2), torch.device("cpu")))


def sgd(model: nn.Module, settings: TrainSettings, device: torch.device | None = None) -> torch.optim.SGD:
    """The training optimizer: Nesterov SGD at the peak lr, weight decay as `param_groups` spreads it.

    On CUDA the fused kernel: the fp16 loss scaler hands it the scale and the overflow flag on the device,
    where a plain step would read the flag back to the host every step. Elsewhere torch's default."""
    fused = True if device is not None and device.type == "cuda" else None
    return torch.optim.SGD(param_groups(model, settings.weight_decay), lr=settings.lr,
                           momentum=settings.momentum, nesterov=True, fused=fused)


Schedule = Callable[[torch.optim.Optimizer, int], torch.optim.lr_scheduler.LRScheduler]


def one_cycle(settings: TrainSettings) -> Schedule:
    """The training schedule: one cycle over all the run's steps, peaking at --lr a quarter of the way in."""
    return lambda optimizer, total_steps: torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=settings.lr, total_steps=total_steps, pct_start=warmup_fraction(total_steps))


def warmup_fraction(total_steps: int) -> float:
    """The one-cycle warm-up: a quarter of the run. OneCycleLR divides by the warm-up's length in steps
    minus one, so a warm-up of exactly one step (a 4-step run) becomes two."""
    return 0.25 if 0.25 * total_steps != 1 else 2 / total_steps


def build_trainer(settings: TrainSettings, spec: ModelSpec, train_split: Split, device: torch.device,
                  runtime: Runtime, dist: Distributed, resume: Resume | None = None,
                  schedule: Schedule | None = None, start_from: Checkpoint | None = None) -> Trainer:
    """The network (fresh, or that of the checkpoint `resume` goes on from, with its optimizer and schedule
    where they had got to; or fresh with the weights of `start_from`, --init-from), its optimizer and
    schedule (one-cycle unless given), and the epoch's batches."""
    torch.manual_seed(settings.seed)
    if resume is None:
        model = create_model(spec)
        if start_from is None:
            init_from_data(model, train_split)
        else:  # its weights, checked to fit; built aside, so the run's random stream is a fresh run's
            with torch.random.fork_rng(devices=[]):
                model.load_state_dict(model_from_checkpoint(start_from, named(start_from), given=spec).state_dict())
    else:
        model = model_from_checkpoint(resume.checkpoint, raw=True, given=spec)
    model.to(device, memory_format=memory_format(device))
    plan = EpochBatches(len(train_split), dist.batch_share(settings.batch_size), settings.seed, dist.rank, dist.world,
                        odds=settings.augment_odds, fade=settings.aug_fade, epochs=settings.epochs)
    check_trainable(spec.name, model, device, plan.per_rank, plan.batch_size)
    total_steps = settings.epochs * plan.batches_per_epoch()
    shadow = shadow_weights(model, settings, total_steps)
    if shadow is not None and resume is not None:
        shadow.model.load_state_dict(model_from_checkpoint(resume.checkpoint, given=spec).state_dict())
    optimizer = sgd(model, settings, device)
    scheduler = (schedule or one_cycle(settings))(optimizer, total_steps)
    amp_dtype = runtime.amp_dtype(device, dist)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    if resume is not None:
        resume.restore_progress(optimizer, scheduler, scaler, plan.batches_per_epoch())
    step_model = _step_model(model, device, dist, runtime.compile)
    batches = _batches(train_split, plan, device, runtime, dist)
    return Trainer(settings, spec, model, step_model, shadow.model if shadow else model, shadow, optimizer,
                   scheduler, scaler, plan, batches, device, dist, amp_dtype, runtime.compile)


def _step_model(model: nn.Module, device: torch.device, dist: Distributed, compile_it: bool) -> nn.Module:
    """What a training step calls: `model`, wrapped for DDP in a group of processes, compiled if asked."""
    step_model: nn.Module = model
    if dist.world > 1:
        step_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if compile_it:
        step_model = torch.compile(step_model)
    return step_model


def _batches(split: Split, plan: EpochBatches, device: torch.device, runtime: Runtime,
             dist: Distributed) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """The epoch's augmented uint8 batches: made on the device (CUDA), or by Albumentations in loader workers.

    Each batch's augmentation odds come with it from the plan, so workers need no word of the schedule."""
    if runtime.augments_on_device(device):
        return DeviceBatches(split, plan, device_augment.augment_chunk, device)
    workers = runtime.loader_workers(device, dist)
    return DataLoader(
        AugmentedBatches(split, BatchAugmenter(train_pipeline(plan.odds))),
        batch_sampler=plan,
        collate_fn=_whole_batch,
        num_workers=workers,
        worker_init_fn=_worker_ignores_sigint if workers else None,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
    )


def _whole_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return batch  # AugmentedBatches already returns whole batches


def _worker_ignores_sigint(worker_id: int) -> None:
    # Ctrl-C reaches the whole process group; the main process decides when to stop, workers keep feeding.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
