"""The training and evaluation loops. They take plain arguments and return values; the CLI prints.

Where to start reading: `train` (at the bottom) is the table of contents. It builds a `Trainer` (the
network, optimizer and batches), then for each epoch runs `train_one_epoch` (whose step is `train_step`)
and `_judge_epoch` (evaluate, keep the best, save). Batches come from `data.EpochBatches` through
`data.AugmentedBatches`; the run folder's files and the stop signals live in `run_folder`; the device,
threads and AMP in `runtime`.

Speed: augmentation runs on uint8 pixels (on CUDA the training set lives on the GPU and is augmented
there, `data.DeviceBatches`; elsewhere Albumentations runs in loader workers), normalisation runs batched
on the device, the network runs channels_last (autocast on CUDA), and the loop never waits on the device
except once per log interval.
Safety: last.safetensors is rewritten atomically after every epoch and on SIGINT/SIGTERM mid-epoch; a
resumed run repeats exactly what the uninterrupted one would have done, because every batch's order,
augmentation and dropout are seeded from (seed, epoch, batch), never from process state.
"""

from __future__ import annotations

import copy
import signal
import time
import warnings
from collections.abc import Callable, Iterable
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from cifar_cli import __version__, device_augment
from cifar_cli.augment import BatchAugmenter, normalize, train_pipeline
from cifar_cli.checkpoint import (
    Checkpoint,
    NonFinite,
    first_non_finite,
    model_from_checkpoint,
    network_spec,
    save_checkpoint,
)
from cifar_cli.data import (
    CLASSES,
    DROPOUT_STREAM,
    MEAN,
    MIXUP_STREAM,
    STD,
    AugmentedBatches,
    DeviceBatches,
    EpochBatches,
    Split,
    batches_in_order,
    derive_seed,
    hold_out,
)
from cifar_cli.errors import CifarError
from cifar_cli.models import ModelSpec, create_model, preset_spec
from cifar_cli.models.spec import check_trainable, user_code
from cifar_cli.optimizer_state import flatten_optimizer
from cifar_cli.records import EpochRecord, EvalResult, TrainResult
from cifar_cli.run_folder import (
    BEST,
    HISTORY,
    LAST,
    Replaced,
    StopSignals,
    claim,
    ensure_writable,
    lock_out_dir,
    recover,
    what_survives,
    write_history,
    write_settings,
)
from cifar_cli.run_state import EpochTotals, RunChoices, RunState, check_data, restore_progress
from cifar_cli.runtime import Distributed, Runtime, compile_errors, memory_format
from cifar_cli.settings import EVAL_BATCH_SIZE, TrainSettings

# With fp16, the loss scaler skips a step whose gradients overflowed; the schedule still moves on, as it
# must for resume to stay exact, and torch's warning about that order is noise here.
warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before", category=UserWarning)
INIT_IMAGES = 5000  # training images a network may set weights from (init_from_data): 4.5M 3x3 patches
LOG_EVERY = 10  # steps between the loop's reads of the device (progress, stop and divergence checks)

# --- evaluation --------------------------------------------------------------------------------------


def to_device(images: torch.Tensor, device: torch.device, mean: tuple[float, ...] = MEAN,
              std: tuple[float, ...] = STD) -> torch.Tensor:
    """uint8 N x 3 x H x W (any layout) -> normalised float on `device`, in the network's memory format."""
    images = images.to(device, non_blocking=True)
    return normalize(images, mean, std).contiguous(memory_format=memory_format(device))


def autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def _logits(model: nn.Module, x: torch.Tensor, tta: bool) -> torch.Tensor:
    logits = model(x).float()
    if tta:  # the network trained on mirrored images too, so the mirror image is a second opinion
        logits = (logits + model(x.flip(3)).float()) / 2
    return logits


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, device: torch.device, batch_size: int = EVAL_BATCH_SIZE,
             classes: tuple[str, ...] = CLASSES, mean: tuple[float, ...] = MEAN, std: tuple[float, ...] = STD,
             amp_dtype: torch.dtype | None = None, tta: bool = False, name: str = "the network",
             stopping: Callable[[], bool] | None = None) -> EvalResult:
    """Loss, accuracy and confusion matrix; with `tta`, logits are averaged over each image and its mirror.

    A non-finite loss is no result (a NaN network "scores" chance accuracy): NonFinite, naming `name`.
    `stopping`, asked before each batch, abandons the evaluation (EvaluationStopped) once it says so.
    """
    was_training = model.training
    model.eval()
    n = len(classes)
    confusion = torch.zeros(n * n, dtype=torch.int64, device=device)
    loss_sum = torch.zeros((), device=device)
    try:
        for images, labels in batches_in_order(split, batch_size):
            if stopping is not None and stopping():
                raise EvaluationStopped
            labels = labels.to(device, non_blocking=True)
            with autocast(device, amp_dtype):
                logits = _logits(model, to_device(images, device, mean, std), tta)
            loss_sum += F.cross_entropy(logits, labels, reduction="sum")
            confusion += torch.bincount(labels * n + logits.argmax(1), minlength=n * n)
    finally:
        model.train(was_training)
    total = max(len(split), 1)
    if not torch.isfinite(loss_sum).item():
        raise NonFinite(f"{name} gives NaN or infinite logits for some of these {len(split):,} images; its "
                        "accuracy would mean nothing")
    matrix = confusion.view(n, n).cpu()
    return EvalResult(loss=loss_sum.item() / total, accuracy=matrix.diag().sum().item() / total,
                      confusion=matrix.tolist(), classes=classes)


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, device: torch.device, mean: tuple[float, ...] = MEAN,
            std: tuple[float, ...] = STD, tta: bool = False, batch_size: int = EVAL_BATCH_SIZE) -> torch.Tensor:
    """Class probabilities (N x classes) for uint8 N x H x W x 3 RGB images."""
    model.eval()
    parts = []
    for start in range(0, len(images), batch_size):
        chunk = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).permute(0, 3, 1, 2)
        parts.append(_logits(model, to_device(chunk, device, mean, std), tta).softmax(1).cpu())
    return torch.cat(parts)


# --- what a run carries from step to step and from session to session ----------------------------------

class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM stopped the run: after writing the resumable `checkpoint`, or (None) without saving,
    when it was replacing a run (--overwrite) and had no checkpoint of its own yet; `kept` says what is left."""

    def __init__(self, signum: int, checkpoint: Path | None, epoch: int, step: int, kept: str = ""):
        super().__init__(f"{signal.Signals(signum).name} at epoch {epoch}, step {step}")
        self.signum, self.checkpoint, self.epoch, self.step, self.kept = signum, checkpoint, epoch, step, kept


class _StopRequested(Exception):
    """Raised inside an epoch when all processes agreed to stop; carries where the epoch had got to."""

    def __init__(self, totals: EpochTotals):
        self.totals = totals


class EvaluationStopped(Exception):
    """A stop signal arrived while an epoch's network was being evaluated: the evaluation is abandoned, so
    that the stop is quick (under torchrun the launcher kills processes that take long to stop)."""


class _Diverged(Exception):
    """Raised inside an epoch when the loss became non-finite; carries the first step it did."""

    def __init__(self, step: int):
        self.step = step


class TrainObserver(Protocol):
    """What the loop reports while it runs; the CLI draws it, tests may ignore it."""

    def epoch_start(self, epoch: int, epochs: int, steps: int, done: int) -> None: ...
    def step(self, step: int, loss: float, acc: float) -> None: ...
    def epoch_end(self, record: EpochRecord) -> None: ...
    def notice(self, message: str) -> None: ...  # something done to the run folder the user must know of


class _Silent:
    def epoch_start(self, epoch: int, epochs: int, steps: int, done: int) -> None: ...
    def step(self, step: int, loss: float, acc: float) -> None: ...
    def epoch_end(self, record: EpochRecord) -> None: ...


# --- building a run ----------------------------------------------------------------------------------

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


def sgd(model: nn.Module, settings: TrainSettings) -> torch.optim.SGD:
    """The training optimizer: Nesterov SGD at the peak lr, weight decay as `param_groups` spreads it."""
    return torch.optim.SGD(param_groups(model, settings.weight_decay), lr=settings.lr,
                           momentum=settings.momentum, nesterov=True)


class ShadowWeights:
    """A second copy of a network's weights and BatchNorm statistics, kept beside the trained one; it is
    what is evaluated and saved, and the trained weights stay in last.safetensors for --resume."""

    def __init__(self, model: nn.Module):
        self.model = copy.deepcopy(model).requires_grad_(False).eval()
        pairs = list(zip(model.state_dict().values(), self.model.state_dict().values()))
        self._sources = [s for s, _ in pairs if s.is_floating_point()]
        self._targets = [t for s, t in pairs if s.is_floating_point()]
        self._counters = [(s, t) for s, t in pairs if not s.is_floating_point()]  # BatchNorm's batch count

    def update(self, steps_done: int) -> None:
        """Called after every optimizer step with the run's step count so far."""
        raise NotImplementedError

    def _pull(self, decay: float) -> None:
        """Move the copy toward the trained weights by 1 - decay."""
        torch._foreach_lerp_(self._targets, self._sources, 1 - decay)
        for source, target in self._counters:
            target.copy_(source)


class WeightAverage(ShadowWeights):
    """An exponential moving average of a network's weights and BatchNorm statistics, after every step.

    The decay warms up as (1 + n) / (10 + n) so the early, random weights are forgotten quickly. It
    depends only on the step count n, so a resumed run averages exactly as an uninterrupted one.
    """

    def __init__(self, model: nn.Module, decay: float):
        super().__init__(model)
        self.decay = decay

    @torch.no_grad()
    def update(self, steps_done: int) -> None:
        self._pull(min(self.decay, (1 + steps_done) / (10 + steps_done)))


class Lookahead(ShadowWeights):
    """Slow weights that the trained ones restart from every SYNC_EVERY steps (airbench's lookahead).

    At each sync the slow weights move toward the trained ones, keeping `decay`**SYNC_EVERY * progress**3
    of themselves, and training goes on from them. So each sync keeps only part of the last few steps'
    progress: late in the run this averages away step noise and slows the descent, while the cube leaves
    the fast early run untouched. The last step always syncs, so a run ends with both copies equal. Like
    WeightAverage, it depends only on the step count.
    """

    SYNC_EVERY = 5

    def __init__(self, model: nn.Module, decay: float, total_steps: int):
        super().__init__(model)
        self.decay, self.total_steps = decay, total_steps

    @torch.no_grad()
    def update(self, steps_done: int) -> None:
        if steps_done % self.SYNC_EVERY and steps_done != self.total_steps:
            return
        self._pull(self.decay ** self.SYNC_EVERY * (steps_done / self.total_steps) ** 3)
        torch._foreach_copy_(self._sources, self._targets)


def shadow_weights(model: nn.Module, settings: TrainSettings, total_steps: int) -> ShadowWeights | None:
    """The run's second copy of the weights, if its settings ask for one (--ema or --lookahead)."""
    if settings.ema:
        return WeightAverage(model, settings.ema)
    if settings.lookahead:
        return Lookahead(model, settings.lookahead, total_steps)
    return None


@dataclass
class Trainer:
    """What a training step needs: the network in its three roles, the optimizer and the batches."""

    settings: TrainSettings
    spec: ModelSpec
    model: nn.Module  # the weights being trained
    ddp_model: nn.Module  # what the step calls: `model`, wrapped for DDP and compiled where asked
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
    compiled: bool = False  # ddp_model is torch.compile'd

    @property
    def steps_per_epoch(self) -> int:
        return self.plan.batches_per_epoch()


Schedule = Callable[[torch.optim.Optimizer, int], torch.optim.lr_scheduler.LRScheduler]


def one_cycle(settings: TrainSettings) -> Schedule:
    """The training schedule: one cycle over all the run's steps, peaking at --lr a quarter of the way in."""
    return lambda optimizer, total_steps: torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=settings.lr, total_steps=total_steps, pct_start=warmup_fraction(total_steps))


def build_trainer(settings: TrainSettings, spec: ModelSpec, train_split: Split, device: torch.device,
                  runtime: Runtime, dist: Distributed, resume: Checkpoint | None, state: RunState,
                  schedule: Schedule | None = None) -> Trainer:
    """The network (fresh, or the checkpoint's), its optimizer and schedule (one-cycle unless given),
    and the epoch's batches."""
    torch.manual_seed(settings.seed)
    model = model_from_checkpoint(resume, raw=True, given=spec) if resume is not None else create_model(spec)
    if resume is None:
        init_from_data(model, train_split)
    model.to(device, memory_format=memory_format(device))
    plan = EpochBatches(len(train_split), settings.batch_size, settings.seed, dist.rank, dist.world,
                        settings.odds_at, settings.epochs)
    check_trainable(spec.name, model, device, plan.per_rank, settings.batch_size)
    total_steps = settings.epochs * plan.batches_per_epoch()
    shadow = shadow_weights(model, settings, total_steps)
    if shadow is not None and resume is not None:
        shadow.model.load_state_dict(model_from_checkpoint(resume, given=spec).state_dict())
    optimizer = sgd(model, settings)
    scheduler = (schedule or one_cycle(settings))(optimizer, total_steps)
    amp_dtype = runtime.amp_dtype(device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    if resume is not None:
        restore_progress(optimizer, scheduler, scaler, resume, state, plan.batches_per_epoch())
    ddp_model: nn.Module = model
    if dist.world > 1:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if runtime.compile:
        ddp_model = torch.compile(ddp_model)
    batches = _batches(train_split, plan, device, runtime, dist)
    return Trainer(settings, spec, model, ddp_model, shadow.model if shadow else model, shadow, optimizer,
                   scheduler, scaler, plan, batches, device, dist, amp_dtype, runtime.compile)


def warmup_fraction(total_steps: int) -> float:
    """The one-cycle warm-up: a quarter of the run. OneCycleLR divides by the warm-up's length in steps
    minus one, so a warm-up of exactly one step (a 4-step run) becomes two."""
    return 0.25 if 0.25 * total_steps != 1 else 2 / total_steps


def _batches(split: Split, plan: EpochBatches, device: torch.device, runtime: Runtime,
             dist: Distributed) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """The epoch's augmented uint8 batches: made on the device (CUDA), or by Albumentations in loader workers.

    Each batch's augmentation odds come with it from the plan, so workers need no word of the schedule."""
    if runtime.augments_on_device(device):
        return DeviceBatches(split, plan, device_augment.augment, device)
    workers = runtime.loader_workers(device, dist)
    return DataLoader(
        AugmentedBatches(split, BatchAugmenter(train_pipeline())),
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


# --- training ----------------------------------------------------------------------------------------

@dataclass
class Blend:
    """A mixup batch: each image is `own` parts itself and 1 - `own` parts image `partner[i]` of the batch."""

    own: float
    partner: torch.Tensor


def draw_blend(t: Trainer, epoch: int, step: int, size: int) -> Blend | None:
    """Whether and how step `step` (from 1) blends its batch of `size`: --mixup's Beta(a, a) weight, at the
    odds the fade leaves (1 before it begins). Seeded by (seed, epoch, rank, step), so a resumed run draws
    the same blends."""
    if not t.settings.mixup:
        return None
    rng = np.random.default_rng(derive_seed(t.settings.seed, epoch, t.dist.rank, step, MIXUP_STREAM))
    if rng.random() >= t.settings.fade_at(t.plan.progress(epoch, step - 1)):
        return None
    own = float(rng.beta(t.settings.mixup, t.settings.mixup))
    return Blend(own, torch.from_numpy(rng.permutation(size)).to(t.device))


def train_step(t: Trainer, images: torch.Tensor, labels: torch.Tensor, epoch: int,
               step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimizer step on one batch; returns the loss, the logits and the labels (of a blend, those of
    the larger part), on the device."""
    torch.manual_seed(derive_seed(t.settings.seed, epoch, t.dist.rank, step, DROPOUT_STREAM))
    x, y = to_device(images, t.device), labels.to(t.device, non_blocking=True)
    blend = draw_blend(t, epoch, step, len(y))
    if blend is not None:
        x = blend.own * x + (1 - blend.own) * x[blend.partner]
    if t.compiled:
        # Compiled: the batch size is a variable, so an epoch's smaller last batch reuses the graph instead
        # of compiling a second one. Only this dimension: compile(dynamic=True) would give the batch and a
        # 32-pixel side one symbol when the batch is 32, and a tail batch would break that equality.
        torch._dynamo.mark_dynamic(x, 0)
    with autocast(t.device, t.amp_dtype), compile_errors(t.compiled):
        logits = t.ddp_model(x).float()
    loss = F.cross_entropy(logits, y, label_smoothing=t.settings.label_smoothing)
    if blend is not None:
        other = y[blend.partner]
        loss = blend.own * loss + (1 - blend.own) * F.cross_entropy(
            logits, other, label_smoothing=t.settings.label_smoothing)
        y = y if blend.own >= 0.5 else other
    t.optimizer.zero_grad(set_to_none=True)
    with user_code(t.spec.name, "its backward pass"):  # the network's gradient hooks run here
        t.scaler.scale(loss).backward()
    t.scaler.step(t.optimizer)
    t.scaler.update()
    t.scheduler.step()
    if t.shadow is not None:
        t.shadow.update((epoch - 1) * t.steps_per_epoch + step)
    return loss, logits, y


def train_one_epoch(t: Trainer, start: EpochTotals, stop: StopSignals, observer: TrainObserver) -> EpochTotals:
    """Train on this process's share of one epoch from `start`; returns the totals of all processes.

    Raises _StopRequested when a stop signal arrived (alone: after this step; in a group: at the next
    log step, where all processes agree), and _Diverged when the loss became non-finite.
    """
    epoch = start.epoch
    t.plan.set_epoch(epoch, start.batches)
    observer.epoch_start(epoch, t.settings.epochs, t.steps_per_epoch, start.batches)
    t.model.train()
    carried = start.share(t.dist.rank, t.dist.world)
    # Running sums stay on the device; reading them is the loop's only wait, once per log interval.
    loss_sum = torch.tensor(carried.loss_sum, device=t.device)
    correct = torch.tensor(carried.correct, device=t.device)
    seen = carried.seen
    first_bad = torch.zeros((), dtype=torch.int64, device=t.device)
    for step, (images, labels) in enumerate(t.loader, start=start.batches + 1):
        loss, logits, y = train_step(t, images, labels, epoch, step)
        loss_sum += loss.detach() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        first_bad = torch.where((first_bad == 0) & ~torch.isfinite(loss), step, first_bad)

        asked_alone = stop.received is not None and t.dist.world == 1
        sync_now = step % LOG_EVERY == 0 or step == t.steps_per_epoch or asked_alone
        if not sync_now:
            continue
        bad, stopping, *sums = _sum_across(t, first_bad > 0, float(stop.received or 0), loss_sum, correct, seen)
        if bad.item():
            raise _Diverged(_first_bad_step(t, first_bad))
        totals = EpochTotals(epoch, step, sums[0].item(), int(sums[1].item()), int(sums[2].item()))
        observer.step(step, totals.loss_sum / totals.seen, totals.correct / totals.seen)
        if stopping.item():
            raise _StopRequested(replace(totals, shares=_gather(t, loss_sum, correct, seen)))
    loss_sum, correct, seen = _sum_across(t, loss_sum, correct, seen)
    return EpochTotals(epoch, t.steps_per_epoch, loss_sum.item(), int(correct.item()), int(seen.item()))


def _sum_across(t: Trainer, *values: torch.Tensor | float) -> list[torch.Tensor]:
    """Element-wise sums over all processes (a no-op alone); every process must call it at the same point."""
    if t.dist.world == 1:
        return [torch.as_tensor(v) for v in values]
    packed = torch.stack([torch.as_tensor(v, device=t.device).double() for v in values])
    torch_dist.all_reduce(packed)
    return list(packed.unbind())


def _gather(t: Trainer, *values: torch.Tensor | float) -> list[list[float]]:
    """Every process's values, in rank order (alone: its own); every process must call it at the same point."""
    mine = torch.stack([torch.as_tensor(v, device=t.device).double() for v in values])
    if t.dist.world == 1:
        return [mine.tolist()]
    parts = [torch.empty_like(mine) for _ in range(t.dist.world)]
    torch_dist.all_gather(parts, mine)
    return [p.tolist() for p in parts]


def _first_bad_step(t: Trainer, first_bad: torch.Tensor) -> int:
    """The first step at which any process saw a non-finite loss (each knows only its own)."""
    step = first_bad.clone() if first_bad.item() else torch.tensor(2**62, device=t.device)
    if t.dist.world > 1:
        torch_dist.all_reduce(step, op=torch_dist.ReduceOp.MIN)
    return int(step.item())


def _judge_epoch(t: Trainer, state: RunState, totals: EpochTotals, test_split: Split | None,
                 val_split: Split | None, out_dir: Path, seconds: float, stop: StopSignals) -> EpochRecord:
    """Evaluate the epoch's weights, keep the best, save history.json, best and last.safetensors (rank 0 only).

    Raises NonFinite, before anything is written, when the weights, BatchNorm statistics or optimizer state
    became non-finite although the training loss stayed finite, or the evaluation loss is not finite;
    EvaluationStopped, before anything is written, when a stop signal arrives during the evaluation."""
    tensors = {**t.model.state_dict(), **{f"saved {k}": v for k, v in t.eval_model.state_dict().items()},
               **{f"optimizer {k}": v for k, v in flatten_optimizer(t.optimizer)[0].items()}}
    if (bad := first_non_finite(tensors)) is not None:
        raise NonFinite(f"{bad} became NaN or infinite")

    def measured(split: Split | None) -> EvalResult | None:
        return None if split is None else evaluate(t.eval_model, split, t.device, amp_dtype=t.amp_dtype,
                                                   tta=t.settings.tta, name=f"epoch {totals.epoch}'s network",
                                                   stopping=lambda: stop.received is not None)

    test, held = measured(test_split), measured(val_split)
    record = EpochRecord(
        epoch=totals.epoch, train_loss=totals.loss_sum / totals.seen, train_acc=totals.correct / totals.seen,
        test_loss=test.loss if test else None, test_acc=test.accuracy if test else None,
        lr=t.optimizer.param_groups[0]["lr"], seconds=seconds, images=totals.seen,
        val_loss=held.loss if held else None, val_acc=held.accuracy if held else None)
    state.history.append(record)
    state.position = None
    # In this order, so that a write failing part-way (a full disk) never leaves best.safetensors ahead of
    # history.json, nor last.safetensors, which --resume reads, claiming a best epoch best.safetensors lacks:
    # resuming from the previous last.safetensors redoes this epoch and writes all three again.
    write_history(out_dir / HISTORY, state.history)
    if record.score > state.best_acc:
        state.best_epoch, state.best_acc = record.epoch, record.score
        save_checkpoint(out_dir / BEST, Checkpoint(t.spec, t.eval_model.state_dict(), epoch=record.epoch,
                                                   metrics=record.metrics()))
    _save_last(t, state, out_dir)
    return record


def _save_last(t: Trainer, state: RunState, out_dir: Path) -> None:
    """last.safetensors: the weights after the last finished epoch (or at a mid-epoch stop) and the
    optimizer, schedule and run state that --resume continues from."""
    optimizer_tensors, state.optimizer = flatten_optimizer(t.optimizer)
    state.scheduler, state.scaler = t.scheduler.state_dict(), t.scaler.state_dict()
    epoch = len(state.history)
    save_checkpoint(out_dir / LAST, Checkpoint(
        t.spec, t.eval_model.state_dict(), epoch=epoch,
        metrics=state.history[-1].metrics() if state.history else {},
        raw_state=t.model.state_dict() if t.shadow is not None else {},
        optimizer_tensors=optimizer_tensors, train_state=state.to_json()))


def _notice(observer: TrainObserver, message: str | None) -> None:
    if message and hasattr(observer, "notice"):  # observers that predate notices draw progress only
        observer.notice(message)


def _prepare_out_dir(stack: ExitStack, out_dir: Path, t: Trainer, sizes: dict[str, int], continuing: bool,
                     overwrite: bool, observer: TrainObserver) -> Replaced | None:
    """Rank 0 owns the run folder: locked for this run, writable, with settings.json saying what it does.
    Returns the run that --overwrite set aside, put back on any way out until `drop` is called."""
    stack.enter_context(lock_out_dir(out_dir))
    ensure_writable(out_dir)
    _notice(observer, recover(out_dir))
    replaced = claim(out_dir, continuing, overwrite)
    if replaced is not None:
        stack.callback(lambda: replaced.pending and replaced.put_back())
        _notice(observer, f"--overwrite: the run that was in {out_dir} is kept in {replaced.folder} until this "
                "run saves its first checkpoint (at the end of its first epoch), then deleted; it is put back if "
                "this run stops before then")
    write_settings(out_dir, {"settings": t.settings.to_dict(), "model": t.spec.to_dict(), "data": sizes,
                             "device": str(t.device), "processes": t.dist.world,
                             "amp": str(t.amp_dtype).removeprefix("torch.") if t.amp_dtype else None,
                             "augment_on": "device" if isinstance(t.loader, DeviceBatches) else "loader",
                             "torch": torch.__version__, "cifar_cli": __version__})
    return replaced


def _stopped(stop: StopSignals, t: Trainer, state: RunState, at: EpochTotals, out_dir: Path,
             replaced: Replaced | None) -> TrainingInterrupted:
    """Save where a stopped epoch had got to; but a run replacing another (--overwrite) that has no
    checkpoint of its own yet puts the old run back instead, as promised."""
    signum, epoch = stop.received or signal.SIGTERM, at.epoch
    if replaced is not None and replaced.pending:
        return TrainingInterrupted(signum, None, epoch, at.batches,
                                   f"nothing of this run was saved; {replaced.put_back()}")
    if t.dist.main:
        state.position = at
        _save_last(t, state, out_dir)
    return TrainingInterrupted(signum, out_dir / LAST, epoch, at.batches)


def _diverged(state: RunState, out_dir: Path, epoch: int, first_epoch: int, resume: Checkpoint | None,
              replaced: Replaced | None) -> str:
    """What a diverged run leaves, naming only files that exist now."""
    if replaced is not None and replaced.pending:
        return f"nothing of this run was saved; {replaced.put_back()}"
    saved = len(state.history) if epoch > first_epoch else None
    return what_survives(out_dir, saved, resume.source if resume is not None else None)


def train(
    settings: TrainSettings,
    train_split: Split,
    test_split: Split | None,
    out_dir: Path,
    device: torch.device,
    model_spec: ModelSpec | None = None,
    runtime: Runtime | None = None,
    resume: Checkpoint | None = None,
    observer: TrainObserver | None = None,
    dist: Distributed | None = None,
    overwrite: bool = False,
) -> TrainResult:
    """Train from scratch or from `resume`; writes last/best checkpoints, history.json and settings.json.

    `test_split` None leaves the test set out: the held-out slice alone judges the epochs, and the weights
    are the same as with it (evaluation draws no random numbers). Refuses an `out_dir` that holds another
    run unless `overwrite`. Raises TrainingInterrupted after saving, on SIGINT/SIGTERM; CifarError on bad
    input or divergence.
    """
    settings.validate(len(train_split))
    if test_split is None and not settings.val_split:
        raise CifarError("train() needs a test split or a held-out slice (settings.val_split) to judge epochs by")
    runtime, dist, out_dir = runtime or Runtime(), dist or Distributed(), Path(out_dir)
    observer = observer if (observer is not None and dist.main) else _Silent()
    state = RunState.resume(resume, settings) if resume is not None else RunState(settings)
    spec = network_spec(resume, model_spec) if resume is not None else model_spec or preset_spec()
    whole_set = train_split
    train_split, val_split = hold_out(train_split, settings.val_split) if settings.val_split else (train_split, None)
    state.data = check_data(state.data, {"train": whole_set, "held_out": val_split, "test": test_split})
    if len(state.history) >= settings.epochs:
        raise CifarError(f"this run already finished its {settings.epochs} epoch{'s' * (settings.epochs != 1)}; "
                         "there is nothing to resume")
    runtime.configure(device, dist)
    t = build_trainer(settings, spec, train_split, device, runtime, dist, resume, state)
    state.check_position(t.steps_per_epoch, dist.world)
    state.choices = RunChoices(test_split is not None, "device" if isinstance(t.loader, DeviceBatches) else "loader",
                               runtime.amp)

    with ExitStack() as stack:
        if dist.main:
            sizes = {"train": len(train_split), "held_out": settings.val_split,
                     "test": len(test_split) if test_split is not None else 0, "fingerprints": state.data}
            continuing = resume is not None and resume.source is not None and (
                resume.source.resolve() == (out_dir / LAST).resolve())
            replaced = _prepare_out_dir(stack, out_dir, t, sizes, continuing, overwrite, observer)
        else:
            replaced = None
        stop = stack.enter_context(StopSignals())
        first_epoch = len(state.history) + 1
        for epoch in range(first_epoch, settings.epochs + 1):
            started = time.perf_counter()
            try:
                totals = train_one_epoch(t, state.start_of(epoch), stop, observer)
            except _StopRequested as at:
                interrupted = _stopped(stop, t, state, at.totals, out_dir, replaced)
                _sum_across(t, 0.0)  # the others wait for the save: torchrun stops them all when one exits
                raise interrupted from None
            except _Diverged as bad:
                raise CifarError(f"training diverged: the loss became non-finite at epoch {epoch}, step "
                                 f"{bad.step}; {_diverged(state, out_dir, epoch, first_epoch, resume, replaced)}; "
                                 f"try a lower --lr (now {settings.lr})") from None
            if dist.main:
                try:
                    record = _judge_epoch(t, state, totals, test_split, val_split, out_dir,
                                          time.perf_counter() - started, stop)
                except EvaluationStopped:  # saved as a finished, unjudged epoch: a resume judges it first
                    interrupted = _stopped(stop, t, state, totals, out_dir, replaced)
                    _sum_across(t, float(stop.received or signal.SIGTERM))  # the others are waiting to hear it
                    raise interrupted from None
                except NonFinite as bad:
                    raise CifarError(f"training diverged at epoch {epoch}: {bad}; "
                                     f"{_diverged(state, out_dir, epoch, first_epoch, resume, replaced)}; "
                                     f"try a lower --lr (now {settings.lr})") from None
                observer.epoch_end(record)
                if replaced is not None and replaced.pending:
                    replaced.drop()  # this run has its first checkpoint: the one it replaces goes
            if _sum_across(t, float(stop.received or 0))[0].item() and epoch < settings.epochs:
                raise TrainingInterrupted(stop.received or signal.SIGTERM, out_dir / LAST, epoch + 1, 0)
    return TrainResult(state.history, out_dir, state.best_epoch, state.best_acc)
