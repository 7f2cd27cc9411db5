"""The training and evaluation loops. They take plain arguments and return values; the CLI prints."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, get_worker_info

from cifar_cli.augment import PipelineTransform, eval_pipeline, train_pipeline
from cifar_cli.checkpoint import (
    Checkpoint,
    flatten_optimizer,
    model_state,
    save_checkpoint,
    unflatten_optimizer,
    write_atomic,
)
from cifar_cli.data import CLASSES, MEAN, STD, AugmentedDataset, Split
from cifar_cli.errors import CifarError
from cifar_cli.models import NetConfig, build_model

DEVICES = ("auto", "cuda", "cpu", "mps")


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA, then MPS, then CPU; an explicit choice that is not available is an error."""
    name = name.lower()
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps and mps.is_available())
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CifarError("--device cuda: CUDA is not available on this machine (try --device auto or cpu)")
    if name == "mps" and not has_mps:
        raise CifarError("--device mps: Apple MPS is not available on this machine (try --device auto or cpu)")
    if name not in DEVICES:
        raise CifarError(f"--device {name}: choose one of {', '.join(DEVICES)}")
    return torch.device(name)


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from (run seed, epoch, ...), so each epoch's randomness stands alone."""
    return int(np.random.SeedSequence(list(parts)).generate_state(2, dtype=np.uint32).view(np.uint64)[0] >> 1)


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

    def validate(self) -> None:
        if self.epochs < 1:
            raise CifarError(f"--epochs must be at least 1, not {self.epochs}")
        if self.batch_size < 1:
            raise CifarError(f"--batch-size must be at least 1, not {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise CifarError(f"--lr must be a positive number, not {self.lr}")
        if self.seed < 0:
            raise CifarError(f"--seed must be >= 0, not {self.seed}")


def settings_of(checkpoint: Checkpoint) -> TrainSettings:
    """The settings of the run that wrote a resumable checkpoint."""
    state = checkpoint.train_state or {}
    try:
        return TrainSettings(**state["settings"])
    except (KeyError, TypeError):
        raise CifarError("this checkpoint cannot be resumed: it holds weights only (a best.safetensors?) "
                         "or no valid training state; resume from last.safetensors") from None


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


@dataclass
class TrainResult:
    history: list[EpochRecord]
    out_dir: Path
    best_epoch: int
    best_acc: float
    interrupted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"history": [asdict(r) for r in self.history], "out_dir": str(self.out_dir),
                "best_epoch": self.best_epoch, "best_acc": self.best_acc,
                "last": str(self.out_dir / "last.safetensors"), "best": str(self.out_dir / "best.safetensors")}


class TrainObserver(Protocol):
    """What the loop reports while it runs; the CLI draws it, tests may ignore it."""

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None: ...
    def step(self, step: int, loss: float, acc: float) -> None: ...
    def epoch_end(self, record: EpochRecord) -> None: ...


class _Silent:
    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None: ...
    def step(self, step: int, loss: float, acc: float) -> None: ...
    def epoch_end(self, record: EpochRecord) -> None: ...


def _seed_worker(worker_id: int) -> None:
    """Each loader worker draws its own augmentations, from the seed torch gave it for this epoch."""
    info = get_worker_info()
    info.dataset.transform.reseed(info.seed)


def make_loader(split: Split, transform: Callable, batch_size: int, workers: int, device: torch.device,
                shuffle: bool = False, generator: torch.Generator | None = None) -> DataLoader:
    return DataLoader(
        AugmentedDataset(split, transform),
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=workers,
        worker_init_fn=_seed_worker if workers > 0 else None,
        pin_memory=device.type == "cuda",
    )


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, device: torch.device, batch_size: int = 512, workers: int = 0,
             classes: tuple[str, ...] = CLASSES, mean: tuple[float, ...] = MEAN,
             std: tuple[float, ...] = STD) -> EvalResult:
    model.eval()
    n = len(classes)
    confusion = torch.zeros(n * n, dtype=torch.int64, device=device)
    loss_sum = torch.zeros((), device=device)
    loader = make_loader(split, PipelineTransform(eval_pipeline(mean, std)), batch_size, workers, device)
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        logits = model(images)
        loss_sum += F.cross_entropy(logits, labels, reduction="sum")
        confusion += torch.bincount(labels * n + logits.argmax(1), minlength=n * n)
    total = max(len(split), 1)
    matrix = confusion.view(n, n).cpu()
    return EvalResult(loss=loss_sum.item() / total, accuracy=matrix.diag().sum().item() / total,
                      confusion=matrix.tolist(), classes=classes)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay shrinks conv and linear weights only; on BatchNorm and biases it only hurts."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


@dataclass
class _Run:
    """The state a resumable checkpoint carries besides the weights."""

    settings: dict[str, Any]
    scheduler: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_acc: float = -1.0


def train(
    settings: TrainSettings,
    train_split: Split,
    test_split: Split,
    out_dir: Path,
    device: torch.device,
    model_config: NetConfig | None = None,
    workers: int = 0,
    resume: Checkpoint | None = None,
    observer: TrainObserver | None = None,
    log_every: int = 10,
) -> TrainResult:
    """Train from scratch or from `resume`; writes last/best checkpoints and history.json to `out_dir`.

    Every epoch reseeds torch, the shuffle and the augmentations from (seed, epoch), so a resumed run
    repeats exactly what the uninterrupted one would have done (on CPU, with the same worker count).
    """
    settings.validate()
    observer = observer or _Silent()
    out_dir = Path(out_dir)
    ensure_writable(out_dir)
    if resume is not None:
        settings_of(resume)  # refuses weights-only checkpoints
        state = dict(resume.train_state)
        optimizer_meta = state.pop("optimizer", None)
        try:
            run = _Run(**state)
        except TypeError:
            raise CifarError("the checkpoint's training state is incomplete; it cannot be resumed") from None
        if run.settings != asdict(settings):
            raise CifarError("a resumed run keeps its settings; these differ from the checkpoint's: "
                             + ", ".join(k for k, v in asdict(settings).items() if run.settings.get(k) != v))
        model_config = resume.config
    else:
        run = _Run(settings=asdict(settings))
    model_config = model_config or NetConfig()

    torch.manual_seed(settings.seed)
    model = build_model(model_config)
    if resume is not None:
        model.load_state_dict(resume.model_state)
    model.to(device)

    steps_per_epoch = math.ceil(len(train_split) / settings.batch_size)
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
    history = [EpochRecord(**r) for r in run.history]
    transform = PipelineTransform(train_pipeline())

    for epoch in range(len(history) + 1, settings.epochs + 1):
        started = time.perf_counter()
        epoch_seed = derive_seed(settings.seed, epoch)
        torch.manual_seed(epoch_seed)
        transform.reseed(epoch_seed)  # used as is when workers == 0; workers reseed from the generator
        generator = torch.Generator().manual_seed(epoch_seed)
        loader = make_loader(train_split, transform, settings.batch_size, workers, device,
                             shuffle=True, generator=generator)
        observer.epoch_start(epoch, settings.epochs, len(loader))

        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        seen = 0
        for step, (images, labels) in enumerate(loader, 1):
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            logits = model(images)
            loss = F.cross_entropy(logits, labels, label_smoothing=settings.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach() * len(labels)
            correct += (logits.argmax(1) == labels).sum()
            seen += len(labels)
            if step % log_every == 0 or step == len(loader):  # the only host syncs in the loop
                observer.step(step, loss_sum.item() / seen, correct.item() / seen)
        if not math.isfinite(loss_sum.item()):
            raise CifarError(f"the loss became non-finite in epoch {epoch}; try a lower --lr")

        result = evaluate(model, test_split, device, workers=workers)
        record = EpochRecord(epoch=epoch, train_loss=loss_sum.item() / seen, train_acc=correct.item() / seen,
                             test_loss=result.loss, test_acc=result.accuracy,
                             lr=optimizer.param_groups[0]["lr"], seconds=time.perf_counter() - started)
        history.append(record)
        run.history = [asdict(r) for r in history]
        run.scheduler = scheduler.state_dict()
        metrics = {"test_acc": record.test_acc, "test_loss": record.test_loss,
                   "train_acc": record.train_acc, "train_loss": record.train_loss}
        if record.test_acc > run.best_acc:
            run.best_epoch, run.best_acc = epoch, record.test_acc
            save_checkpoint(out_dir / "best.safetensors",
                            Checkpoint(model_config, model_state(model), epoch=epoch, metrics=metrics))
        opt_tensors, opt_meta = flatten_optimizer(optimizer)
        save_checkpoint(out_dir / "last.safetensors", Checkpoint(
            model_config, model_state(model), epoch=epoch, metrics=metrics,
            optimizer_tensors=opt_tensors, train_state={**asdict(run), "optimizer": opt_meta}))
        write_history(out_dir / "history.json", history)
        observer.epoch_end(record)

    return TrainResult(history=history, out_dir=out_dir, best_epoch=run.best_epoch, best_acc=run.best_acc)


def write_history(path: Path, history: list[EpochRecord]) -> None:
    try:
        write_atomic(path, (json.dumps([asdict(r) for r in history], indent=1) + "\n").encode())
    except OSError as e:
        raise CifarError(f"cannot write {path}: {e.strerror or e}") from None


def ensure_writable(out_dir: Path) -> None:
    """Fail before an hour of training, not after it, if results cannot be saved."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise CifarError(f"--out {out_dir} is not writable: {e.strerror or e}") from None
