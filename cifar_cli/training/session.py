"""One session of a run in its folder (rank 0 writes): the folder claimed for it (`prepare_out_dir`), each
epoch judged and saved (`judge_epoch`), and what a stop or a divergence leaves (`stopped`, `what_is_left`).

Safety: last.safetensors is rewritten atomically after every epoch and on SIGINT/SIGTERM mid-epoch, so a
resumed run goes on from where this one got to.
"""

from __future__ import annotations

import signal
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from cifar_cli import __version__
from cifar_cli.checkpoint import Checkpoint, NonFinite, first_non_finite, save_checkpoint
from cifar_cli.data import Split
from cifar_cli.optimizer_state import flatten_optimizer
from cifar_cli.records import EpochRecord, EvalResult, chosen_epoch
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
from cifar_cli.run_state import EpochTotals, RunState
from cifar_cli.training.evaluation import DeviceSplit, evaluate
from cifar_cli.training.trainer import Trainer


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM stopped the run: after writing the resumable `checkpoint`, or (None) without saving,
    when it was replacing a run (--overwrite) and had no checkpoint of its own yet; `kept` says what is left."""

    def __init__(self, signum: int, checkpoint: Path | None, epoch: int, step: int, kept: str = ""):
        super().__init__(f"{signal.Signals(signum).name} at epoch {epoch}, step {step}")
        self.signum, self.checkpoint, self.epoch, self.step, self.kept = signum, checkpoint, epoch, step, kept


class TrainObserver(Protocol):
    """What the loop reports while it runs; the CLI draws it, tests may ignore it. `notice`, `stage` and
    `epoch_measured` are optional: the loop asks an observer whether it has them."""

    def epoch_start(self, epoch: int, epochs: int, steps: int, done: int) -> None: ...
    def step(self, step: int, loss: float, acc: float) -> None: ...
    def epoch_end(self, record: EpochRecord) -> None: ...
    def notice(self, message: str) -> None: ...  # something done to the run folder the user must know of
    # An epoch judged, before any of it is saved (a crash then makes a resume judge it again), with what
    # each split's evaluation found ("test", "held_out"): the confusion matrices the record leaves out.
    def epoch_measured(self, record: EpochRecord, results: dict[str, EvalResult]) -> None: ...


class Silent:
    """The observer of a run nobody watches (and of every process but rank 0)."""

    def epoch_start(self, epoch: int, epochs: int, steps: int, done: int) -> None: ...
    def step(self, step: int, loss: float, acc: float) -> None: ...
    def epoch_end(self, record: EpochRecord) -> None: ...


class Observers:
    """Several observers told the same things in turn (the progress people watch, a TensorBoard log), each
    what it listens to."""

    def __init__(self, *observers: object):
        self.observers = [o for o in observers if o is not None]

    def _tell(self, event: str, *args: object) -> None:
        for observer in self.observers:
            if hasattr(observer, event):
                getattr(observer, event)(*args)

    def stage(self, description: str) -> None:
        self._tell("stage", description)

    def epoch_start(self, epoch: int, epochs: int, steps: int, done: int) -> None:
        self._tell("epoch_start", epoch, epochs, steps, done)

    def step(self, step: int, loss: float, acc: float) -> None:
        self._tell("step", step, loss, acc)

    def epoch_measured(self, record: EpochRecord, results: dict[str, EvalResult]) -> None:
        self._tell("epoch_measured", record, results)

    def epoch_end(self, record: EpochRecord) -> None:
        self._tell("epoch_end", record)

    def notice(self, message: str) -> None:
        self._tell("notice", message)


@dataclass
class Session:
    """What the loop carries from epoch to epoch besides the trainer: the run's state, its folder, the stop
    signals (listening once entered) and what this session must put back or name if it ends early."""

    trainer: Trainer
    state: RunState
    out_dir: Path
    observer: TrainObserver
    resumed_from: Path | None  # the checkpoint file the run went on from, if any
    first_epoch: int  # the first epoch this session trains
    replaced: Replaced | None = None  # the run --overwrite set aside, until this one saves its first checkpoint
    stop: StopSignals = field(default_factory=StopSignals)


def judge_epoch(session: Session, totals: EpochTotals, test_split: Split | DeviceSplit | None,
                held_out: Split | DeviceSplit | None, seconds: float) -> EpochRecord:
    """Evaluate the epoch's weights, keep the best, save history.json, best and last.safetensors (rank 0 only).

    Raises NonFinite, before anything is written, when the weights, BatchNorm statistics or optimizer state
    became non-finite although the training loss stayed finite, or the evaluation loss is not finite;
    EvaluationStopped, before anything is written, when a stop signal arrives during the evaluation."""
    trainer, state, out_dir = session.trainer, session.state, session.out_dir
    tensors = {**trainer.model.state_dict(),
               **{f"saved {k}": v for k, v in trainer.eval_model.state_dict().items()},
               **{f"optimizer {k}": v for k, v in flatten_optimizer(trainer.optimizer)[0].items()}}
    if (bad := first_non_finite(tensors)) is not None:
        raise NonFinite(f"{bad} became NaN or infinite")

    def measured(split: Split | DeviceSplit | None) -> EvalResult | None:
        return None if split is None else evaluate(
            trainer.eval_model, split, trainer.device, amp_dtype=trainer.amp_dtype, tta=trainer.settings.tta,
            name=f"epoch {totals.epoch}'s network", stopping=lambda: session.stop.received is not None)

    test, held = measured(test_split), measured(held_out)
    record = EpochRecord(
        epoch=totals.epoch, train_loss=totals.loss_sum / totals.seen, train_acc=totals.correct / totals.seen,
        test_loss=test.loss if test else None, test_acc=test.accuracy if test else None,
        lr=trainer.optimizer.param_groups[0]["lr"], seconds=seconds, images=totals.seen,
        held_out_loss=held.loss if held else None, held_out_acc=held.accuracy if held else None)
    if hasattr(session.observer, "epoch_measured"):
        results = {name: result for name, result in (("test", test), ("held_out", held)) if result is not None}
        session.observer.epoch_measured(record, results)
    state.history.append(record)
    state.position = None
    # In this order, so that a write failing part-way (a full disk) never leaves best.safetensors ahead of
    # history.json, nor last.safetensors, which --resume reads, claiming a best epoch best.safetensors lacks:
    # resuming from the previous last.safetensors redoes this epoch and writes all three again.
    write_history(out_dir / HISTORY, state.history)
    if record.score > state.best_acc:
        state.best_epoch, state.best_acc = record.epoch, record.score
    if chosen_epoch(state.history) is record:
        save_checkpoint(out_dir / BEST, Checkpoint(trainer.spec, trainer.eval_model.state_dict(),
                                                   epoch=record.epoch, metrics=record.metrics()))
    save_last(trainer, state, out_dir)
    return record


def save_last(trainer: Trainer, state: RunState, out_dir: Path) -> None:
    """last.safetensors: the weights after the last finished epoch (or at a mid-epoch stop) and the
    optimizer, schedule and run state that --resume continues from."""
    optimizer_tensors, state.optimizer = flatten_optimizer(trainer.optimizer)
    state.scheduler, state.scaler = trainer.scheduler.state_dict(), trainer.scaler.state_dict()
    epoch = len(state.history)
    save_checkpoint(out_dir / LAST, Checkpoint(
        trainer.spec, trainer.eval_model.state_dict(), epoch=epoch,
        metrics=state.history[-1].metrics() if state.history else {},
        raw_state=trainer.model.state_dict() if trainer.shadow is not None else {},
        optimizer_tensors=optimizer_tensors, train_state=state.to_json()))


def _notice(observer: TrainObserver, message: str | None) -> None:
    if message and hasattr(observer, "notice"):  # observers that predate notices draw progress only
        observer.notice(message)


def prepare_out_dir(stack: ExitStack, session: Session, test_images: int, overwrite: bool) -> Replaced | None:
    """Rank 0 owns the run folder: locked for this run, writable, with settings.json saying what it does.
    Returns the run that --overwrite set aside, put back on any way out until `drop` is called."""
    trainer, out_dir, observer = session.trainer, session.out_dir, session.observer
    continuing = session.resumed_from is not None and (
        session.resumed_from.resolve() == (out_dir / LAST).resolve())
    stack.enter_context(lock_out_dir(out_dir))
    ensure_writable(out_dir)
    _notice(observer, recover(out_dir))
    replaced = claim(out_dir, continuing, overwrite)
    if replaced is not None:
        stack.callback(lambda: replaced.pending and replaced.put_back())
        _notice(observer, f"--overwrite: the run that was in {out_dir} is kept in {replaced.folder} until this "
                "run saves its first checkpoint (at the end of its first epoch), then deleted; it is put back if "
                "this run stops before then")
    sizes = {"train": trainer.plan.size, "held_out": trainer.settings.val_split, "test": test_images,
             "fingerprints": session.state.data}
    write_settings(out_dir, {"settings": trainer.settings.to_dict(), "model": trainer.spec.to_dict(),
                             "data": sizes, "device": str(trainer.device), "processes": trainer.dist.world,
                             "amp": str(trainer.amp_dtype).removeprefix("torch.") if trainer.amp_dtype else None,
                             "augment_on": trainer.augment_on, "torch": torch.__version__, "cifar_cli": __version__})
    return replaced


def stopped(session: Session, at: EpochTotals) -> TrainingInterrupted:
    """Save where a stopped epoch had got to; but a run replacing another (--overwrite) that has no
    checkpoint of its own yet puts the old run back instead, as promised."""
    signum, epoch, replaced = session.stop.received or signal.SIGTERM, at.epoch, session.replaced
    if replaced is not None and replaced.pending:
        return TrainingInterrupted(signum, None, epoch, at.batches,
                                   f"nothing of this run was saved; {replaced.put_back()}")
    if session.trainer.dist.main:
        session.state.position = at
        save_last(session.trainer, session.state, session.out_dir)
    return TrainingInterrupted(signum, session.out_dir / LAST, epoch, at.batches)


def what_is_left(session: Session, epoch: int) -> str:
    """What a run that diverged in `epoch` leaves, naming only files that exist now."""
    if session.replaced is not None and session.replaced.pending:
        return f"nothing of this run was saved; {session.replaced.put_back()}"
    saved = len(session.state.history) if epoch > session.first_epoch else None
    return what_survives(session.out_dir, saved, session.resumed_from)
