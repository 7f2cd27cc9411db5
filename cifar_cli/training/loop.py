"""The training loop: `train` is the table of contents. It builds a `Trainer` (training.trainer), then for
each epoch runs `train_one_epoch` (whose step is `train_step`) and judges the epoch (evaluate, keep the best,
save: training.session). Stop signals and the run folder's files live in `run_folder`; the device, threads,
AMP and the collectives all processes call together in `runtime`.

The loop never waits on the device except once per log interval. A resumed run repeats exactly what the
uninterrupted one would have done, because every batch's order, augmentation, blend and dropout are seeded
from (seed, epoch, batch), never from process state.
"""

from __future__ import annotations

import signal
import time
import warnings
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cifar_cli.checkpoint import Checkpoint, NonFinite, network_spec
from cifar_cli.data import DROPOUT_STREAM, MIXUP_STREAM, Split, derive_seed, hold_out
from cifar_cli.errors import CifarError
from cifar_cli.models import ModelSpec, preset_spec
from cifar_cli.models.spec import user_code
from cifar_cli.records import TrainResult
from cifar_cli.run_folder import LAST, StopSignals
from cifar_cli.run_state import EpochTotals, Resume, RunChoices, RunState, check_data
from cifar_cli.runtime import (
    Distributed,
    Runtime,
    compile_errors,
    gather_across,
    memory_format,
    min_across,
    out_of_memory,
    sum_across,
)
from cifar_cli.settings import TrainSettings
from cifar_cli.training.evaluation import DeviceSplit, EvaluationStopped, autocast, resident, to_device
from cifar_cli.training.session import (
    Session,
    Silent,
    TrainingInterrupted,
    TrainObserver,
    judge_epoch,
    prepare_out_dir,
    stopped,
    what_is_left,
)
from cifar_cli.training.trainer import Trainer, build_trainer

# With fp16, the loss scaler skips a step whose gradients overflowed; the schedule still moves on, as it
# must for resume to stay exact, and torch's warning about that order is noise here.
warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before", category=UserWarning)
LOG_EVERY = 10  # steps between the loop's reads of the device (progress, stop and divergence checks)


class _StopRequested(Exception):
    """Raised inside an epoch when all processes agreed to stop; carries where the epoch had got to."""

    def __init__(self, totals: EpochTotals):
        self.totals = totals


class _OutOfMemory(Exception):
    """Raised inside an epoch when the device ran out of memory; carries where the epoch had got to before
    the step that failed (None in a group of processes, which cannot agree on a save with one of them gone)."""

    def __init__(self, totals: EpochTotals | None):
        self.totals = totals


class _Diverged(Exception):
    """Raised inside an epoch when the loss became non-finite; carries the first step it did."""

    def __init__(self, step: int):
        self.step = step


@dataclass
class Blend:
    """A mixup batch: each image is `own` parts itself and 1 - `own` parts image `partner[i]` of the batch."""

    own: float
    partner: torch.Tensor


def draw_blend(trainer: Trainer, epoch: int, step: int, size: int) -> Blend | None:
    """Whether and how step `step` (from 1) blends its batch of `size`: --mixup's Beta(a, a) weight, at the
    odds the fade leaves (1 before it begins). Seeded by (seed, epoch, rank, step), so a resumed run draws
    the same blends."""
    if not trainer.settings.mixup:
        return None
    rng = np.random.default_rng(derive_seed(trainer.settings.seed, epoch, trainer.dist.rank, step, MIXUP_STREAM))
    if rng.random() >= trainer.plan.augmentation_left(epoch, step - 1):
        return None
    own = float(rng.beta(trainer.settings.mixup, trainer.settings.mixup))
    partner = torch.from_numpy(rng.permutation(size))
    if trainer.device.type == "cuda":  # pinned, the copy does not wait for the device to catch up
        partner = partner.pin_memory()
    return Blend(own, partner.to(trainer.device, non_blocking=True))


def train_step(trainer: Trainer, images: torch.Tensor, labels: torch.Tensor, epoch: int,
               step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimizer step on one batch; returns the loss, the logits and the labels (of a blend, those of
    the larger part), on the device."""
    settings, device = trainer.settings, trainer.device
    torch.manual_seed(derive_seed(settings.seed, epoch, trainer.dist.rank, step, DROPOUT_STREAM))
    x, y = to_device(images, device), labels.to(device, non_blocking=True)
    blend = draw_blend(trainer, epoch, step, len(y))
    if blend is not None:
        x = (blend.own * x + (1 - blend.own) * x[blend.partner]).contiguous(memory_format=memory_format(device))
    if trainer.compiled:
        # Compiled: the batch size is a variable, so an epoch's smaller last batch reuses the graph instead
        # of compiling a second one. Only this dimension: compile(dynamic=True) would give the batch and a
        # 32-pixel side one symbol when the batch is 32, and a tail batch would break that equality.
        torch._dynamo.mark_dynamic(x, 0)
    with autocast(device, trainer.amp_dtype), compile_errors(trainer.compiled):
        logits = trainer.step_model(x).float()
    loss = F.cross_entropy(logits, y, label_smoothing=settings.label_smoothing)
    if blend is not None:
        other = y[blend.partner]
        loss = blend.own * loss + (1 - blend.own) * F.cross_entropy(
            logits, other, label_smoothing=settings.label_smoothing)
        y = y if blend.own >= 0.5 else other
    trainer.optimizer.zero_grad(set_to_none=True)
    with user_code(trainer.spec.name, "its backward pass"):  # the network's gradient hooks run here
        trainer.scaler.scale(loss).backward()
    trainer.scaler.step(trainer.optimizer)
    trainer.scaler.update()
    trainer.scheduler.step()
    if trainer.shadow is not None:
        trainer.shadow.update((epoch - 1) * trainer.steps_per_epoch + step)
    return loss, logits, y


def train_one_epoch(trainer: Trainer, start: EpochTotals, stop: StopSignals,
                    observer: TrainObserver) -> EpochTotals:
    """Train on this process's share of one epoch from `start`; returns the totals of all processes.

    Raises _StopRequested when a stop signal arrived (alone: after this step; in a group: at the next
    log step, where all processes agree), _Diverged when the loss became non-finite, _OutOfMemory when the
    device ran out of memory.
    """
    epoch, dist, device = start.epoch, trainer.dist, trainer.device
    trainer.plan.set_epoch(epoch, start.batches)
    observer.epoch_start(epoch, trainer.settings.epochs, trainer.steps_per_epoch, start.batches)
    trainer.model.train()
    carried = start.share(dist.rank, dist.world)
    # Running sums stay on the device; reading them is the loop's only wait, once per log interval.
    loss_sum = torch.tensor(carried.loss_sum, device=device)
    correct = torch.tensor(carried.correct, device=device)
    seen = carried.seen
    first_bad = torch.zeros((), dtype=torch.int64, device=device)
    done, ran_out = start.batches, False
    try:
        for step, (images, labels) in enumerate(trainer.loader, start=start.batches + 1):
            loss, logits, y = train_step(trainer, images, labels, epoch, step)
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
            first_bad = torch.where((first_bad == 0) & ~torch.isfinite(loss), step, first_bad)
            done = step
            asked_alone = stop.received is not None and dist.world == 1
            if step % LOG_EVERY == 0 or step == trainer.steps_per_epoch or asked_alone:
                _log_step(trainer, observer, EpochTotals(epoch, step), stop, first_bad, loss_sum, correct, seen)
    except torch.OutOfMemoryError:
        ran_out = True  # raised below, once the error's traceback (which holds the step's tensors) is gone
    if ran_out:
        alone = dist.world == 1 and not first_bad.item()
        raise _OutOfMemory(EpochTotals(epoch, done, loss_sum.item(), int(correct.item()), seen) if alone else None)
    loss_sum, correct, seen = sum_across(dist, device, loss_sum, correct, seen)
    return EpochTotals(epoch, trainer.steps_per_epoch, loss_sum.item(), int(correct.item()), int(seen.item()))


def _log_step(trainer: Trainer, observer: TrainObserver, at: EpochTotals, stop: StopSignals,
              first_bad: torch.Tensor, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int) -> None:
    """A log step, the loop's one wait on the device: all processes add up their sums, report progress, and
    stop together if any saw a non-finite loss (_Diverged) or a stop signal (_StopRequested)."""
    dist, device = trainer.dist, trainer.device
    bad, stopping, *sums = sum_across(dist, device, first_bad > 0, float(stop.received or 0), loss_sum,
                                      correct, seen)
    if bad.item():
        raise _Diverged(_first_bad_step(trainer, first_bad))
    totals = EpochTotals(at.epoch, at.batches, sums[0].item(), int(sums[1].item()), int(sums[2].item()))
    observer.step(at.batches, totals.loss_sum / totals.seen, totals.correct / totals.seen)
    if stopping.item():
        raise _StopRequested(replace(totals, shares=gather_across(dist, device, loss_sum, correct, seen)))


def _first_bad_step(trainer: Trainer, first_bad: torch.Tensor) -> int:
    """The first step at which any process saw a non-finite loss (each knows only its own)."""
    step = first_bad.clone() if first_bad.item() else torch.tensor(2**62, device=trainer.device)
    return int(min_across(trainer.dist, step).item())


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
    start_from: Checkpoint | None = None,
) -> TrainResult:
    """Train from scratch (from the weights of `start_from`, if given, with a fresh optimizer and schedule) or
    from the checkpoint `resume`; writes last/best checkpoints, history.json and
    settings.json.

    `test_split` None leaves the test set out: the held-out slice alone judges the epochs, and the weights
    are the same as with it (evaluation draws no random numbers). Refuses an `out_dir` that holds another
    run unless `overwrite`. Raises TrainingInterrupted after saving, on SIGINT/SIGTERM; CifarError on bad
    input or divergence.
    """
    settings.validate(len(train_split))
    if test_split is None and not settings.val_split:
        raise CifarError("train() needs a test split or a held-out slice (settings.val_split) to judge epochs by")
    runtime, dist, out_dir = runtime or Runtime(), dist or Distributed(), Path(out_dir)
    dist.batch_share(settings.batch_size)  # refused before anything starts if it does not divide
    observer = observer if (observer is not None and dist.main) else Silent()
    resumed = Resume.read(resume, settings) if resume is not None else None
    state = resumed.state if resumed is not None else RunState(settings)
    spec = network_spec(resume, model_spec) if resume is not None else model_spec or preset_spec()
    learn_from, held_out = hold_out(train_split, settings.val_split) if settings.val_split else (train_split, None)
    state.data = check_data(state.data, {"train": train_split, "held_out": held_out, "test": test_split})
    if len(state.history) >= settings.epochs:
        raise CifarError(f"this run already finished its {settings.epochs} epoch{'s' * (settings.epochs != 1)}; "
                         "there is nothing to resume")
    runtime.configure(device, dist)
    if hasattr(observer, "stage"):  # building can take seconds: a whitened stem fits itself to the images
        observer.stage("preparing the network")
    trainer = build_trainer(settings, spec, learn_from, device, runtime, dist, resumed,
                            start_from=start_from if resume is None else None)
    state.check_position(trainer.steps_per_epoch, dist.world)
    state.choices = RunChoices(test_split is not None, trainer.augment_on, runtime.amp)

    session = Session(trainer, state, out_dir, observer, resume.source if resume is not None else None,
                      first_epoch=len(state.history) + 1)
    with ExitStack() as stack:
        if dist.main:
            session.replaced = prepare_out_dir(stack, session, len(test_split) if test_split is not None else 0,
                                               overwrite)
        stack.enter_context(session.stop)
        # Only rank 0 evaluates; on CUDA its splits stay on the card for the whole run.
        judged = [resident(split, device) if dist.main else split for split in (test_split, held_out)]
        for epoch in range(session.first_epoch, settings.epochs + 1):
            _run_epoch(session, epoch, *judged)
    return TrainResult(state.history, out_dir)


def _run_epoch(session: Session, epoch: int, test_split: Split | DeviceSplit | None,
               held_out: Split | DeviceSplit | None) -> None:
    """Train epoch `epoch`, judge it (rank 0), and stop after it if a signal asked (all processes agree)."""
    trainer, stop, settings = session.trainer, session.stop, session.trainer.settings
    started = time.perf_counter()
    try:
        totals = train_one_epoch(trainer, session.state.start_of(epoch), stop, session.observer)
    except _StopRequested as at:
        interrupted = stopped(session, at.totals)
        # The others wait for the save: torchrun stops them all when one exits.
        sum_across(trainer.dist, trainer.device, 0.0)
        raise interrupted from None
    except _Diverged as bad:
        raise CifarError(f"training diverged: the loss became non-finite at epoch {epoch}, step {bad.step}; "
                         f"{what_is_left(session, epoch)}; try a lower --lr (now {settings.lr})") from None
    except _OutOfMemory as at:
        raise _ran_out_of_memory(session, epoch, at.totals) from None
    if trainer.dist.main:
        _judge(session, totals, test_split, held_out, time.perf_counter() - started)
    if sum_across(trainer.dist, trainer.device, float(stop.received or 0))[0].item() and epoch < settings.epochs:
        raise TrainingInterrupted(stop.received or signal.SIGTERM, session.out_dir / LAST, epoch + 1, 0)


def _ran_out_of_memory(session: Session, epoch: int, at: EpochTotals | None) -> CifarError:
    """The one line for a run whose device ran out of memory, after saving where it had got to if it can
    (alone: the steps before the one that failed, or a finished epoch not yet judged)."""
    trainer = session.trainer
    if at is None:
        kept = what_is_left(session, epoch)
    else:
        saved = stopped(session, at)
        kept = saved.kept if saved.checkpoint is None else (
            f"saved {saved.checkpoint} at epoch {at.epoch}, step {at.batches}, which --resume continues from")
    return out_of_memory(trainer.device, f" at epoch {epoch} with --batch-size {trainer.settings.batch_size}; {kept}")


def _judge(session: Session, totals: EpochTotals, test_split: Split | DeviceSplit | None,
           held_out: Split | DeviceSplit | None, seconds: float) -> None:
    """Rank 0: judge and save the epoch, then let go of the run --overwrite replaced. A stop during the
    evaluation saves the epoch unjudged (a resume judges it first) and tells the waiting processes; so does
    running out of memory, which then says so in one line."""
    epoch, trainer = totals.epoch, session.trainer
    try:
        record = judge_epoch(session, totals, test_split, held_out, seconds)
    except EvaluationStopped:
        interrupted = stopped(session, totals)
        sum_across(trainer.dist, trainer.device, float(session.stop.received or signal.SIGTERM))  # they wait
        raise interrupted from None
    except NonFinite as bad:
        raise CifarError(f"training diverged at epoch {epoch}: {bad}; {what_is_left(session, epoch)}; "
                         f"try a lower --lr (now {trainer.settings.lr})") from None
    except torch.OutOfMemoryError:
        record = None  # the epoch is saved unjudged below, once the error's traceback is gone
    if record is None:
        raise _ran_out_of_memory(session, epoch, totals)
    session.observer.epoch_end(record)
    if session.replaced is not None and session.replaced.pending:
        session.replaced.drop()  # this run has its first checkpoint: the one it replaces goes
