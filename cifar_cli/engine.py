"""The training and evaluation loops. They take plain arguments and return values; the CLI prints.

Speed: augmentation runs on uint8 pixels in loader workers, normalisation runs batched on the device,
the network runs channels_last (bf16 autocast on CUDA), and the loop never waits on the device except
once per log interval.
Safety: last.safetensors is rewritten atomically after every epoch and on SIGINT/SIGTERM mid-epoch; a
resumed run repeats exactly what the uninterrupted one would have done, because every batch's order,
augmentation and dropout are seeded from (seed, epoch, batch), never from process state.
"""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from cifar_cli.augment import BatchAugmenter, normalize, train_pipeline
from cifar_cli.checkpoint import (
    Checkpoint,
    flatten_optimizer,
    model_from_checkpoint,
    save_checkpoint,
    unflatten_optimizer,
    write_atomic,
)
from cifar_cli.data import (
    CLASSES,
    MEAN,
    STD,
    AugmentedBatches,
    EpochBatches,
    Split,
    batches_in_order,
    derive_seed,
    hold_out,
)
from cifar_cli.errors import CifarError
from cifar_cli.models import NetConfig, build_model

DEVICES = ("auto", "cuda", "cpu", "mps")


# --- devices and processes -------------------------------------------------------------------------

@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 when run alone)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Distributed:
    """Join the process group torchrun describes in the environment; alone, do nothing."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    if not torch_dist.is_initialized():
        torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(rank=torch_dist.get_rank(), world=torch_dist.get_world_size(),
                       local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                       local_world=int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def shutdown_distributed() -> None:
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA, then MPS, then CPU; an explicit choice that is not available is an error.

    Under torchrun each process takes the GPU of its LOCAL_RANK.
    """
    name = name.lower()
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps and mps.is_available())
    if name not in DEVICES:
        raise CifarError(f"--device {name}: choose one of {', '.join(DEVICES)}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise CifarError("--device cuda: CUDA is not available on this machine (try --device auto or cpu)")
    if name == "mps" and not has_mps:
        raise CifarError("--device mps: Apple MPS is not available on this machine (try --device auto or cpu)")
    if name == "cuda":
        index = int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device(name)


@dataclass(frozen=True)
class Runtime:
    """How a run executes; none of it changes the result on the CPU."""

    workers: int | None = None  # None: 0 on the CPU (the cores train), else up to 8 per GPU
    amp: bool | None = None  # None: bf16 autocast where CUDA supports it
    compile: bool = False

    def loader_workers(self, device: torch.device, dist: Distributed) -> int:
        if self.workers is not None:
            return self.workers
        return 0 if device.type == "cpu" else min(8, max(1, (os.cpu_count() or 2) // dist.local_world - 1))

    def autocast(self, device: torch.device) -> bool:
        if self.amp is not None:
            return self.amp and device.type == "cuda"
        return device.type == "cuda" and torch.cuda.is_bf16_supported()


def _memory_format(device: torch.device) -> torch.memory_format:
    # channels_last: 1.4x faster training steps on the CPU (oneDNN), and what tensor cores want on CUDA.
    return torch.channels_last if device.type in ("cpu", "cuda") else torch.contiguous_format


# --- settings, results, events -----------------------------------------------------------------------

@dataclass(frozen=True)
class TrainSettings:
    """Everything that decides the result of a run (device and worker count do not)."""

    epochs: int = 40
    batch_size: int = 128
    lr: float = 0.1  # peak of the one-cycle schedule
    momentum: float = 0.9
    weight_decay: float = 5e-4  # on conv/linear weights only, not BatchNorm or biases
    label_smoothing: float = 0.1
    seed: int = 0
    val_split: int = 0  # training images held out to judge settings by (0: train on all 50,000)
    ema: float = 0.0  # per-step decay of a weight average that is evaluated and saved instead (0: off)
    tta: bool = True  # evaluate on each image and its mirror image, averaging the logits (+0.4 pt held-out)

    def validate(self, train_size: int | None = None) -> None:
        """Refuse impossible settings; `train_size` also bounds the held-out slice."""
        if self.epochs < 1:
            raise CifarError(f"--epochs must be at least 1, not {self.epochs}")
        if self.batch_size < 1:
            raise CifarError(f"--batch-size must be at least 1, not {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise CifarError(f"--lr must be a positive number, not {self.lr}")
        if self.seed < 0:
            raise CifarError(f"--seed must be >= 0, not {self.seed}")
        if self.val_split < 0 or (train_size is not None and self.val_split >= train_size):
            bound = f" and below the {train_size:,} training images" if train_size is not None else ""
            raise CifarError(f"--val-split must be >= 0{bound}, not {self.val_split}")
        if not 0 <= self.ema < 1:
            raise CifarError(f"--ema must be a decay in [0, 1) (0 turns it off), not {self.ema}")


def _well_typed(settings: TrainSettings) -> bool:
    """Every field holds its kind of value (ints stay ints; a float field also takes an int; flags are bools)."""
    for f in fields(settings):
        value, default = getattr(settings, f.name), f.default
        wanted = bool if isinstance(default, bool) else (int, float) if isinstance(default, float) else int
        if isinstance(value, bool) != (wanted is bool) or not isinstance(value, wanted):
            return False
    return True


def settings_of(checkpoint: Checkpoint) -> TrainSettings:
    """The settings of the run that wrote a resumable checkpoint."""
    state = checkpoint.train_state or {}
    try:
        settings = TrainSettings(**state["settings"])
    except (KeyError, TypeError):
        settings = None
    if settings is None or not _well_typed(settings):
        raise CifarError("this checkpoint cannot be resumed: it holds weights only (a best.safetensors?) "
                         "or no valid training state; resume from last.safetensors")
    return settings


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    classes: tuple[str, ...] = CLASSES

    @property
    def per_class(self) -> list[dict[str, Any]]:
        rows = []
        for i, name in enumerate(self.classes):
            total = sum(self.confusion[i])
            predicted = sum(r[i] for r in self.confusion)
            hits = self.confusion[i][i]
            rows.append({"class": name, "count": total, "correct": hits,
                         "accuracy": hits / total if total else 0.0,
                         "precision": hits / predicted if predicted else 0.0})
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {"loss": self.loss, "accuracy": self.accuracy, "per_class": self.per_class,
                "confusion": self.confusion, "classes": list(self.classes)}


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    train_acc: float
    test_loss: float
    test_acc: float
    lr: float
    seconds: float
    images: int  # training images seen this epoch, all processes together
    val_loss: float | None = None  # on the held-out slice, when --val-split is given
    val_acc: float | None = None

    @property
    def score(self) -> float:
        """What picks the best epoch: held-out accuracy when there is a held-out slice, else test accuracy."""
        return self.test_acc if self.val_acc is None else self.val_acc


@dataclass
class TrainResult:
    history: list[EpochRecord]
    out_dir: Path
    best_epoch: int
    best_acc: float  # the best epoch's score (val_acc with --val-split, else test_acc)

    @property
    def best_by(self) -> str:
        return "val_acc" if self.history and self.history[-1].val_acc is not None else "test_acc"

    def to_dict(self) -> dict[str, Any]:
        return {"history": [asdict(r) for r in self.history], "out_dir": str(self.out_dir),
                "best_epoch": self.best_epoch, "best_acc": self.best_acc, "best_by": self.best_by,
                "last": str(self.out_dir / "last.safetensors"), "best": str(self.out_dir / "best.safetensors")}


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM stopped the run after a resumable checkpoint was written."""

    def __init__(self, signum: int, checkpoint: Path, epoch: int, step: int):
        super().__init__(f"{signal.Signals(signum).name} at epoch {epoch}, step {step}")
        self.signum, self.checkpoint, self.epoch, self.step = signum, checkpoint, epoch, step


class TrainObserver(Protocol):
    """What the loop reports while it runs; the CLI draws it, tests may ignore it."""

    def epoch_start(self, epoch: int, epochs: int, steps: int, done: int) -> None: ...
    def step(self, step: int, loss: float, acc: float) -> None: ...
    def epoch_end(self, record: EpochRecord) -> None: ...


class _Silent:
    def epoch_start(self, epoch: int, epochs: int, steps: int, done: int) -> None: ...
    def step(self, step: int, loss: float, acc: float) -> None: ...
    def epoch_end(self, record: EpochRecord) -> None: ...


# --- evaluation --------------------------------------------------------------------------------------

def _to_device(images: torch.Tensor, device: torch.device, mean: tuple[float, ...],
               std: tuple[float, ...]) -> torch.Tensor:
    """uint8 N x 3 x H x W (any layout) -> normalised float on `device`, in the network's memory format."""
    images = images.to(device, non_blocking=True)
    return normalize(images, mean, std).contiguous(memory_format=_memory_format(device))


def _logits(model: nn.Module, x: torch.Tensor, tta: bool) -> torch.Tensor:
    logits = model(x).float()
    if tta:  # the network trained on mirrored images too, so the mirror image is a second opinion
        logits = (logits + model(x.flip(3)).float()) / 2
    return logits


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, device: torch.device, batch_size: int = 1000,
             classes: tuple[str, ...] = CLASSES, mean: tuple[float, ...] = MEAN, std: tuple[float, ...] = STD,
             amp: bool = False, tta: bool = False) -> EvalResult:
    """Loss, accuracy and confusion matrix; with `tta`, logits are averaged over each image and its mirror."""
    was_training = model.training
    model.eval()
    n = len(classes)
    confusion = torch.zeros(n * n, dtype=torch.int64, device=device)
    loss_sum = torch.zeros((), device=device)
    for images, labels in batches_in_order(split, batch_size):
        labels = labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = _logits(model, _to_device(images, device, mean, std), tta)
        loss_sum += F.cross_entropy(logits, labels, reduction="sum")
        confusion += torch.bincount(labels * n + logits.argmax(1), minlength=n * n)
    model.train(was_training)
    total = max(len(split), 1)
    matrix = confusion.view(n, n).cpu()
    return EvalResult(loss=loss_sum.item() / total, accuracy=matrix.diag().sum().item() / total,
                      confusion=matrix.tolist(), classes=classes)


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, device: torch.device, mean: tuple[float, ...] = MEAN,
            std: tuple[float, ...] = STD, tta: bool = False) -> torch.Tensor:
    """Class probabilities (N x classes) for uint8 N x H x W x 3 RGB images."""
    model.eval()
    x = _to_device(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2), device, mean, std)
    return _logits(model, x, tta).softmax(1).cpu()


# --- training ----------------------------------------------------------------------------------------

def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay shrinks conv and linear weights only; on BatchNorm and biases it only hurts."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


class WeightAverage:
    """An exponential moving average of a network's weights and BatchNorm statistics, after every step.

    The decay warms up as (1 + n) / (10 + n) so the early, random weights are forgotten quickly. It
    depends only on the step count n, so a resumed run averages exactly as an uninterrupted one.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).requires_grad_(False).eval()
        sources, targets = list(model.state_dict().values()), list(self.model.state_dict().values())
        pairs = list(zip(sources, targets))
        self._sources = [s for s, _ in pairs if s.is_floating_point()]
        self._targets = [t for s, t in pairs if s.is_floating_point()]
        self._counters = [(s, t) for s, t in pairs if not s.is_floating_point()]  # BatchNorm's batch count

    @torch.no_grad()
    def update(self, steps_done: int) -> None:
        decay = min(self.decay, (1 + steps_done) / (10 + steps_done))
        torch._foreach_lerp_(self._targets, self._sources, 1 - decay)
        for source, target in self._counters:
            target.copy_(source)


@dataclass
class _Run:
    """The state a resumable checkpoint carries besides the weights and the optimizer."""

    settings: dict[str, Any]
    scheduler: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_acc: float = -1.0
    # Set when stopped mid-epoch: {"epoch", "batches", "loss_sum", "correct", "seen"}.
    position: dict[str, Any] | None = None


class _StopSignals:
    """Turns SIGINT/SIGTERM into a request to stop after the current step; a second SIGINT stops at once."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: object) -> None:
        self.received = signum
        signal.signal(signal.SIGINT, signal.default_int_handler)  # impatient second Ctrl-C: quit now

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


@contextmanager
def lock_out_dir(out_dir: Path) -> Iterator[None]:
    """One run per output folder: a second `cifar train --out` the same folder is refused, not interleaved."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; runs are trusted not to share a folder
        yield
        return
    path = out_dir / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            raise CifarError(f"--out {out_dir} is in use by another cifar train (pid {holder}); "
                             "wait for it or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield  # the kernel drops the lock if this process dies, even by kill -9
    finally:
        os.close(fd)


def _worker_ignores_sigint(worker_id: int) -> None:
    # Ctrl-C reaches the whole process group; the main process decides when to stop, workers keep feeding.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _sum_across(dist: Distributed, device: torch.device, *values: torch.Tensor | float) -> list[torch.Tensor]:
    """Element-wise sums over all processes (a no-op alone); every process must call it at the same point."""
    if dist.world == 1:
        return [torch.as_tensor(v) for v in values]
    packed = torch.stack([torch.as_tensor(v, device=device).double() for v in values])
    torch_dist.all_reduce(packed)
    return list(packed.unbind())


def train(
    settings: TrainSettings,
    train_split: Split,
    test_split: Split,
    out_dir: Path,
    device: torch.device,
    model_config: NetConfig | None = None,
    runtime: Runtime | None = None,
    resume: Checkpoint | None = None,
    observer: TrainObserver | None = None,
    dist: Distributed | None = None,
    log_every: int = 10,
) -> TrainResult:
    """Train from scratch or from `resume`; writes last/best checkpoints and history.json to `out_dir`.

    Raises TrainingInterrupted after saving, on SIGINT/SIGTERM; CifarError on bad input or divergence.
    """
    settings.validate(len(train_split))
    runtime, dist = runtime or Runtime(), dist or Distributed()
    observer = observer if (observer is not None and dist.main) else _Silent()
    out_dir = Path(out_dir)

    run, optimizer_meta = _Run(settings=asdict(settings)), None
    train_split, val_split = hold_out(train_split, settings.val_split) if settings.val_split else (train_split, None)
    if resume is not None:
        stored = asdict(settings_of(resume))  # refuses weights-only checkpoints
        state = dict(resume.train_state)
        optimizer_meta = state.pop("optimizer", None)
        try:
            run = _Run(**state)
        except TypeError:
            raise CifarError("the checkpoint's training state is incomplete; it cannot be resumed") from None
        if stored != asdict(settings):
            raise CifarError("a resumed run keeps its settings; these differ from the checkpoint's: "
                             + ", ".join(k for k, v in asdict(settings).items() if stored[k] != v))
        model_config = resume.config
    model_config = model_config or NetConfig()

    workers = runtime.loader_workers(device, dist)
    if device.type == "cpu":  # share the cores between processes and loader workers, never oversubscribe
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // dist.local_world - workers))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    amp = runtime.autocast(device)
    memory_format = _memory_format(device)

    torch.manual_seed(settings.seed)
    model = model_from_checkpoint(resume, raw=True) if resume is not None else build_model(model_config)
    model.to(device, memory_format=memory_format)
    average = WeightAverage(model, settings.ema) if settings.ema else None
    if average is not None and resume is not None:
        average.model.load_state_dict(model_from_checkpoint(resume).state_dict())
    judged = average.model if average is not None else model  # the weights that are evaluated and saved
    plan = EpochBatches(len(train_split), settings.batch_size, settings.seed, dist.rank, dist.world)
    steps_per_epoch = plan.batches_per_epoch()
    optimizer = torch.optim.SGD(_param_groups(model, settings.weight_decay), lr=settings.lr,
                                momentum=settings.momentum, nesterov=True)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=settings.lr, total_steps=settings.epochs * steps_per_epoch, pct_start=0.25)
    if resume is not None:
        try:
            optimizer.load_state_dict(unflatten_optimizer(resume.optimizer_tensors, optimizer_meta))
            scheduler.load_state_dict(run.scheduler)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise CifarError(f"the checkpoint's optimizer state does not fit this run: {e}") from None
    net: nn.Module = model
    if dist.world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if runtime.compile:
        net = torch.compile(net)

    try:
        history = [EpochRecord(**r) for r in run.history]
    except TypeError:
        raise CifarError("the checkpoint's training history is damaged; it cannot be resumed") from None
    loader = DataLoader(
        AugmentedBatches(train_split, BatchAugmenter(train_pipeline())),
        batch_sampler=plan,
        collate_fn=_whole_batch,
        num_workers=workers,
        worker_init_fn=_worker_ignores_sigint if workers else None,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
    )

    def save_last(epoch: int, position: dict[str, Any] | None, metrics: dict[str, Any]) -> None:
        run.history, run.scheduler, run.position = [asdict(r) for r in history], scheduler.state_dict(), position
        opt_tensors, opt_meta = flatten_optimizer(optimizer)
        save_checkpoint(out_dir / "last.safetensors", Checkpoint(
            model_config, judged.state_dict(), epoch=epoch, metrics=metrics,
            raw_state=model.state_dict() if average is not None else {},
            optimizer_tensors=opt_tensors, train_state={**asdict(run), "optimizer": opt_meta}))

    with ExitStack() as stack:
        if dist.main:
            ensure_writable(out_dir)
            stack.enter_context(lock_out_dir(out_dir))
        stop = stack.enter_context(_StopSignals())

        for epoch in range(len(history) + 1, settings.epochs + 1):
            started = time.perf_counter()
            position = run.position if run.position and run.position["epoch"] == epoch else None
            start = position["batches"] if position else 0
            plan.set_epoch(epoch, start)
            observer.epoch_start(epoch, settings.epochs, steps_per_epoch, start)
            model.train()
            # Running sums stay on the device; reading them is the loop's only wait, once per log interval.
            loss_sum = torch.tensor(position["loss_sum"] if position else 0.0, device=device)
            correct = torch.tensor(position["correct"] if position else 0, device=device)
            seen = position["seen"] if position else 0
            first_bad = torch.zeros((), dtype=torch.int64, device=device)

            step = start
            for images, labels in loader:
                step += 1
                torch.manual_seed(derive_seed(settings.seed, epoch, dist.rank, step, 1))  # dropout
                x, y = _to_device(images, device, MEAN, STD), labels.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    logits = net(x).float()
                loss = F.cross_entropy(logits, y, label_smoothing=settings.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                if average is not None:
                    average.update((epoch - 1) * steps_per_epoch + step)
                loss_sum += loss.detach() * len(y)
                correct += (logits.argmax(1) == y).sum()
                seen += len(y)
                first_bad = torch.where((first_bad == 0) & ~torch.isfinite(loss), step, first_bad)

                # Alone, a signal is acted on after this step; in a group, all processes agree at a log step.
                if step % log_every and step != steps_per_epoch and (stop.received is None or dist.world > 1):
                    continue
                bad, stopping = _sum_across(dist, device, first_bad, float(stop.received or 0))
                if bad.item():
                    raise CifarError(
                        f"training diverged: the loss became non-finite at epoch {epoch}, step {int(bad.item())}; "
                        f"last.safetensors keeps the last good state; try a lower --lr (now {settings.lr})")
                observer.step(step, loss_sum.item() / seen, correct.item() / seen)
                if stopping.item():
                    if dist.main:
                        save_last(epoch - 1, {"epoch": epoch, "batches": step, "loss_sum": loss_sum.item(),
                                              "correct": int(correct.item()), "seen": seen},
                                  _metrics(history[-1]) if history else {})
                    raise TrainingInterrupted(stop.received or signal.SIGTERM, out_dir / "last.safetensors",
                                              epoch, step)

            loss_total, correct_total, seen_total = _sum_across(dist, device, loss_sum, correct, float(seen))
            if dist.main:
                result = evaluate(judged, test_split, device, amp=amp, tta=settings.tta)
                held = evaluate(judged, val_split, device, amp=amp, tta=settings.tta) if val_split else None
                record = EpochRecord(
                    epoch=epoch, train_loss=loss_total.item() / seen_total.item(),
                    train_acc=correct_total.item() / seen_total.item(), test_loss=result.loss,
                    test_acc=result.accuracy, lr=optimizer.param_groups[0]["lr"],
                    seconds=time.perf_counter() - started, images=int(seen_total.item()),
                    val_loss=held.loss if held else None, val_acc=held.accuracy if held else None)
                history.append(record)
                if record.score > run.best_acc:
                    run.best_epoch, run.best_acc = epoch, record.score
                    save_checkpoint(out_dir / "best.safetensors", Checkpoint(
                        model_config, judged.state_dict(), epoch=epoch, metrics=_metrics(record)))
                save_last(epoch, None, _metrics(record))
                write_history(out_dir / "history.json", history)
                observer.epoch_end(record)
            if _sum_across(dist, device, float(stop.received or 0))[0].item() and epoch < settings.epochs:
                raise TrainingInterrupted(stop.received or signal.SIGTERM, out_dir / "last.safetensors",
                                          epoch + 1, 0)

    return TrainResult(history=history, out_dir=out_dir, best_epoch=run.best_epoch, best_acc=run.best_acc)


def _whole_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return batch  # AugmentedBatches already returns whole batches


def _metrics(record: EpochRecord) -> dict[str, float]:
    keys = ("test_acc", "test_loss", "val_acc", "val_loss", "train_acc", "train_loss")
    return {k: getattr(record, k) for k in keys if getattr(record, k) is not None}


def write_history(path: Path, history: list[EpochRecord]) -> None:
    try:
        write_atomic(path, (json.dumps([asdict(r) for r in history], indent=1) + "\n").encode())
    except OSError as e:
        raise CifarError(f"cannot write {path}: {e.strerror or e}") from None


def read_history(path: Path) -> list[EpochRecord]:
    """A run's history.json (or the run folder holding it) as records."""
    path = Path(path)
    if path.is_dir():
        path = path / "history.json"
    try:
        rows = json.loads(path.read_text())
        return [EpochRecord(**row) for row in rows]
    except FileNotFoundError:
        raise CifarError(f"history not found: {path}") from None
    except OSError as e:
        raise CifarError(f"cannot read {path}: {e.strerror or e}") from None
    except (ValueError, TypeError):
        raise CifarError(f"{path} is not a cifar train history.json") from None


def ensure_writable(out_dir: Path) -> None:
    """Fail before an hour of training, not after it, if results cannot be saved."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise CifarError(f"--out {out_dir} is not writable: {e.strerror or e}") from None
