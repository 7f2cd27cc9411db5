"""A run between sessions: what a resumable checkpoint carries besides its tensors, checked field by field
as it is read, and the one decision of what a resumed run is (its settings and choices, any option given
over them, the network it builds).

Everything here came from a file a hostile person may have written: each field is checked against its
kind and range (cifar_cli.schema) before anything uses it, and any problem is one line naming the file and
the field.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from cifar_cli import schema
from cifar_cli.checkpoint import Checkpoint
from cifar_cli.data import Split, describe_identity, identify, same_images
from cifar_cli.errors import CifarError
from cifar_cli.optimizer_state import match_layouts, unflatten_optimizer
from cifar_cli.records import EpochRecord, history_from_rows
from cifar_cli.settings import TrainSettings
from cifar_cli.terminal import counted

SPLITS = ("train", "held_out", "test")  # every set of images a run uses, each fingerprinted (data.identify)
MAX_PROCESSES = 65_536


def named(checkpoint: Checkpoint) -> str:
    return str(checkpoint.source or "the checkpoint")


def recorded_settings(checkpoint: Checkpoint) -> TrainSettings | None:
    """The settings a checkpoint's training state records, checked as the command line checks them (a
    CifarError when they are damaged); None for a file without them (weights only)."""
    settings = TrainSettings.from_dict((checkpoint.train_state or {}).get("settings"))
    if settings is not None:
        settings.validate()
    return settings


def settings_of(checkpoint: Checkpoint) -> TrainSettings:
    """The settings of the run that wrote a resumable checkpoint, checked as the command line checks them."""
    try:
        settings = recorded_settings(checkpoint)
    except CifarError as e:
        raise CifarError(f"{named(checkpoint)}: the training state's settings are damaged ({e}); it cannot be "
                         "resumed") from None
    if settings is None:
        raise CifarError(f"{named(checkpoint)} cannot be resumed: it holds weights only (a best.safetensors?) "
                         "or no valid training state; resume from last.safetensors")
    return settings


def left_test_out(history: list[EpochRecord]) -> bool:
    """Whether a run whose checkpoint predates RunChoices left the test set out (--no-test): every epoch it
    finished has a held-out figure and no test figure. (One stopped inside its first epoch cannot say, and
    counts as not.)"""
    return bool(history) and all(r.test_acc is None and r.held_out_acc is not None for r in history)


@dataclass
class EpochTotals:
    """How far an epoch has got: batches done, and the sums behind its training loss and accuracy."""

    epoch: int
    batches: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    shares: list[list[float]] = field(default_factory=list)  # at a stop: each process's [loss_sum, correct, seen]

    def share(self, rank: int, world: int) -> EpochTotals:
        """What process `rank` carries into a resumed epoch: its own sums, so the epoch adds up exactly as
        the uninterrupted one would have (a checkpoint without shares: rank 0 carries the totals)."""
        if len(self.shares) == world:
            loss_sum, correct, seen = self.shares[rank]
            return EpochTotals(self.epoch, self.batches, loss_sum, int(correct), int(seen))
        return self if rank == 0 else EpochTotals(self.epoch, self.batches)

    @classmethod
    def from_dict(cls, data: Any, epoch: int) -> EpochTotals:
        """A stop inside epoch `epoch` as a checkpoint recorded it; schema.Invalid naming the field otherwise."""
        data = schema.mapping(data, "position")
        if unknown := sorted(set(data) - {f.name for f in fields(cls)}):
            raise schema.Invalid(f"position.{unknown[0][:40]}", "is not a field")
        at = cls(schema.whole(data.get("epoch"), "position.epoch", epoch, epoch),
                 schema.whole(data.get("batches"), "position.batches", 1),
                 schema.number(data.get("loss_sum"), "position.loss_sum", 0.0, 1e38),
                 schema.whole(data.get("correct", 0), "position.correct"),
                 schema.whole(data.get("seen", 0), "position.seen"))
        if at.correct > at.seen:
            raise schema.Invalid("position.correct", "exceeds position.seen")
        shares = data.get("shares", [])
        if not isinstance(shares, list) or len(shares) > MAX_PROCESSES:
            raise schema.Invalid("position.shares", "is not a list of one share per process")
        for i, share in enumerate(shares):
            if not (isinstance(share, list) and len(share) == 3):
                raise schema.Invalid(f"position.shares[{i}]", "is not [loss_sum, correct, seen]")
            loss, correct, seen = (schema.number(v, f"position.shares[{i}]", 0.0, 1e38) for v in share)
            if correct > seen or correct != int(correct) or seen != int(seen):
                raise schema.Invalid(f"position.shares[{i}]", "has impossible counts")
            at.shares.append([loss, correct, seen])
        return at


@dataclass(frozen=True)
class RunChoices:
    """What a run began with, besides its TrainSettings, that changes its result; a resumed run keeps them
    unless an option is given over one. The device, loader workers and torch.compile are the machine's:
    they change its speed, not its result, so each session chooses them afresh."""

    test: bool = True  # whether each epoch is judged on the test set too (--test/--no-test)
    augment_on: str = "loader"  # where training images are augmented, as resolved: "device" or "loader"
    amp: bool | None = None  # --amp/--no-amp as given; None: what the GPU can (no effect on the CPU)

    @classmethod
    def from_dict(cls, data: Any) -> RunChoices:
        data = schema.mapping(data, "choices")
        if set(data) != {f.name for f in fields(cls)}:
            raise schema.Invalid("choices", f"has fields {sorted(map(str, data))[:4]}, not test, augment_on, amp")
        if not isinstance(data["test"], bool):
            raise schema.Invalid("choices.test", "is not true or false")
        if data["augment_on"] not in ("device", "loader"):
            raise schema.Invalid("choices.augment_on", "is neither device nor loader")
        if data["amp"] is not None and not isinstance(data["amp"], bool):
            raise schema.Invalid("choices.amp", "is not true, false or null")
        return cls(data["test"], data["augment_on"], data["amp"])


def _fingerprint(data: Any, name: str) -> dict[str, Any]:
    data = schema.mapping(data, name)
    if not set(data) <= {"images", "sha256", "hashed"}:
        raise schema.Invalid(name, "has fields other than images, sha256 and hashed")
    schema.whole(data.get("images"), f"{name}.images", 1)
    sha = schema.text(data.get("sha256"), f"{name}.sha256", 64)
    if len(sha) != 64 or not all(c in "0123456789abcdef" for c in sha):
        raise schema.Invalid(f"{name}.sha256", "is not a SHA-256 in hex")
    if data.get("hashed", "every image") != "every image":
        raise schema.Invalid(f"{name}.hashed", "is not 'every image'")
    return data


def fingerprints(data: Any) -> dict[str, dict[str, Any]]:
    """The run's fingerprint of each set of images it used. Checkpoints written before every split was
    fingerprinted hold the training set's alone, sampled, as `data` itself (or nothing at all)."""
    data = schema.mapping(data, "data")
    if not data:
        return {}
    if "sha256" in data:  # the training set's, from before the test and held-out sets had one
        return {"train": _fingerprint(data, "data")}
    if not set(data) <= set(SPLITS):
        raise schema.Invalid("data", f"names sets of images other than {', '.join(SPLITS)}")
    return {name: _fingerprint(value, f"data.{name}") for name, value in data.items()}


@dataclass
class RunState:
    """Everything a resumable checkpoint carries besides the weights and the optimizer's tensors."""

    settings: TrainSettings
    history: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    best_acc: float = -1.0
    position: EpochTotals | None = None  # set when a run stopped mid-epoch
    scheduler: dict[str, Any] = field(default_factory=dict)
    scaler: dict[str, Any] = field(default_factory=dict)  # fp16 loss scale, on cards that train in fp16
    optimizer: dict[str, Any] | None = None  # the optimizer's JSON half (param groups, scalars)
    data: dict[str, dict[str, Any]] = field(default_factory=dict)  # each split's fingerprint (data.identify)
    choices: RunChoices | None = None  # None: a checkpoint from before they were recorded

    KEYS = ("settings", "scheduler", "scaler", "history", "best_epoch", "best_acc", "position", "optimizer", "data",
            "choices")

    def start_of(self, epoch: int) -> EpochTotals:
        """Where `epoch` begins: where a run stopped inside it, else its first batch."""
        return self.position if self.position and self.position.epoch == epoch else EpochTotals(epoch)

    def steps_done(self, steps_per_epoch: int) -> int:
        """This process's optimizer steps so far: where the schedule stands."""
        return len(self.history) * steps_per_epoch + (self.position.batches if self.position else 0)

    def to_json(self) -> dict[str, Any]:
        return {"settings": self.settings.to_dict(), "scheduler": self.scheduler, "scaler": self.scaler,
                "history": [asdict(r) for r in self.history], "best_epoch": self.best_epoch,
                "best_acc": self.best_acc, "position": asdict(self.position) if self.position else None,
                "optimizer": self.optimizer, "data": self.data,
                "choices": asdict(self.choices) if self.choices else None}

    @classmethod
    def resume(cls, checkpoint: Checkpoint, settings: TrainSettings | None = None) -> RunState:
        """The run state a checkpoint holds, every field checked; with `settings`, refuses any that differ
        from the run's (a resumed run repeats exactly what the uninterrupted one would have done)."""
        stored = settings_of(checkpoint)  # refuses weights-only checkpoints
        state = checkpoint.train_state
        if unknown := sorted(set(state) - set(cls.KEYS)):
            raise CifarError(f"{named(checkpoint)}: the training state is incomplete or of another kind (it has "
                             f"{unknown[0][:40]!r}); it cannot be resumed")
        try:
            history = history_from_rows(state.get("history", []))
        except (TypeError, ValueError) as e:
            raise CifarError(f"{named(checkpoint)}: the training history is damaged ({e}); it cannot be resumed"
                             ) from None
        try:
            run = cls._checked(stored, history, state)
        except schema.Invalid as e:
            raise CifarError(f"{named(checkpoint)}: the training state is damaged ({e}); it cannot be resumed"
                             ) from None
        if settings is not None and (changed := stored.differences(settings)):
            raise CifarError("a resumed run keeps its settings; these differ from the checkpoint's: "
                             + ", ".join(changed))
        return run

    @classmethod
    def _checked(cls, settings: TrainSettings, history: list[EpochRecord], state: dict[str, Any]) -> RunState:
        epochs = len(history)
        if epochs > settings.epochs:
            raise schema.Invalid("history", f"has {epochs} epochs of a {settings.epochs}-epoch run")
        best_epoch = schema.whole(state.get("best_epoch", 0), "best_epoch", 1 if history else 0, epochs)
        best_acc = schema.number(state.get("best_acc", -1.0), "best_acc", -1.0, 1.0)
        expected = history[best_epoch - 1].score if history else -1.0
        if best_acc != expected or (history and expected != max(r.score for r in history)):
            raise schema.Invalid("best_acc", f"is {best_acc}, not the best epoch's figure")
        position = state.get("position")
        position = EpochTotals.from_dict(position, epochs + 1) if position is not None else None
        if position is not None and epochs == settings.epochs:
            raise schema.Invalid("position", "lies past the run's last epoch")
        parts = {key: schema.mapping(state.get(key, {}), key) for key in ("scheduler", "scaler")}
        optimizer = schema.mapping(state.get("optimizer"), "optimizer")
        choices = state.get("choices")
        return cls(settings, history, best_epoch, float(best_acc), position, parts["scheduler"], parts["scaler"],
                   optimizer, fingerprints(state.get("data", {})),
                   RunChoices.from_dict(choices) if choices is not None else None)

    def check_position(self, steps_per_epoch: int, world: int) -> None:
        """A mid-epoch stop lies inside the epoch (a forged position would end it with nothing seen), and
        continues with as many processes as it stopped with (each carries its own share)."""
        p = self.position
        if p is not None and not 0 < p.batches <= steps_per_epoch:
            raise CifarError("the checkpoint's training state is damaged (it stopped at batch "
                             f"{p.batches} of {steps_per_epoch}); it cannot be resumed")
        if p is not None and p.shares and len(p.shares) != world:
            raise CifarError(f"this run stopped mid-epoch with {counted(len(p.shares), 'process', 'processes')}; "
                             "resume it with as many "
                             f"(torchrun --nproc_per_node={len(p.shares)}), not {world}")


# The scheduler's fields that move as the run goes on; every other one is fixed by the settings, so a
# checkpoint's must equal those of the schedule this run builds.
_SCHEDULE_PROGRESS = ("last_epoch", "_step_count", "_last_lr", "_is_initial", "_get_lr_called_within_step")


@dataclass(frozen=True)
class Resume:
    """A run going on from a resumable checkpoint: the file (its weights, optimizer tensors and where it
    was read from) and the run state it carries, read and checked once."""

    checkpoint: Checkpoint
    state: RunState

    @classmethod
    def read(cls, checkpoint: Checkpoint, settings: TrainSettings) -> Resume:
        """The checkpoint's run, refused unless its settings are `settings` (RunState.resume)."""
        return cls(checkpoint, RunState.resume(checkpoint, settings))

    def restore_progress(self, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: torch.amp.GradScaler,
                         steps_per_epoch: int) -> None:
        """Load the optimizer, schedule and loss scale the checkpoint saved, each checked against those this
        run built from its settings: what may differ is only how far they have got, and that must be where
        the run's history and position say it is."""
        state = self.state
        try:
            optimizer.load_state_dict(unflatten_optimizer(self.checkpoint.optimizer_tensors, state.optimizer,
                                                          optimizer))
            match_layouts(optimizer)
            scheduler.load_state_dict(_schedule(state.scheduler, scheduler.state_dict(),
                                                state.steps_done(steps_per_epoch)))
            if state.scaler and scaler.is_enabled():
                scaler.load_state_dict(_loss_scale(state.scaler, scaler.state_dict()))
        except schema.Invalid as e:
            raise CifarError(f"{named(self.checkpoint)}: the training state is damaged ({e}); it cannot be "
                             "resumed") from None


def _schedule(saved: dict[str, Any], fresh: dict[str, Any], steps_done: int) -> dict[str, Any]:
    fresh = schema.jsonable(fresh)
    for key, value in fresh.items():
        if key not in _SCHEDULE_PROGRESS and saved.get(key, value) != value:
            raise schema.Invalid(f"scheduler.{key}", "differs from the schedule of the run's settings")
    checked = schema.like({k: saved.get(k, v) for k, v in fresh.items()}, fresh, "scheduler")
    if checked.get("last_epoch", steps_done) != steps_done:
        raise schema.Invalid("scheduler.last_epoch", f"is {checked['last_epoch']}, but the run has taken "
                                                     f"{steps_done} steps")
    for i, lr in enumerate(checked.get("_last_lr", [])):
        schema.number(lr, f"scheduler._last_lr[{i}]", 0.0, 1e6)
    return checked


def _loss_scale(saved: dict[str, Any], fresh: dict[str, Any]) -> dict[str, Any]:
    checked = schema.like(saved, schema.jsonable(fresh), "scaler")
    schema.number(checked["scale"], "scaler.scale", 2.0**-126, 2.0**127)
    schema.number(checked["growth_factor"], "scaler.growth_factor", 1.0, 1e3)
    schema.number(checked["backoff_factor"], "scaler.backoff_factor", 1e-3, 1.0)
    schema.whole(checked["growth_interval"], "scaler.growth_interval", 1)
    schema.whole(checked["_growth_tracker"], "scaler._growth_tracker", 0)
    return checked


def check_data(recorded: dict[str, dict[str, Any]], splits: dict[str, Split | None]) -> dict[str, dict[str, Any]]:
    """A resumed run must see the images it started on: its schedule and batches depend on the training set,
    and its best epoch is picked by the held-out or test figures of every epoch, which must be of the same
    images. Returns the fingerprints to record (one not used this session is kept as it was)."""
    found = dict(recorded)
    for name, split in splits.items():
        if split is None:
            continue
        if name in recorded and not same_images(recorded[name], split):
            what = name.replace("_", "-") if name != "train" else "training"
            raise CifarError(f"this run trained on other data ({describe_identity(recorded[name], what)}); this "
                             f"--data-dir holds {len(split):,} (fingerprint {identify(split)['sha256'][:12]}); "
                             "resume with the run's data")
        found[name] = identify(split)
    return found
