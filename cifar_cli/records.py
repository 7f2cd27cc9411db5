"""What the loops return: plain dataclasses, free of torch, that the face prints and history.json holds."""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

from cifar_cli import schema
from cifar_cli.data import CLASSES

_LARGEST = 1e38  # a loss, lr or time beyond float32's range is not one a run measured
# The names earlier versions gave the held-out figures in histories and checkpoints: read, never written.
_EARLIER_NAMES = {"val_loss": "held_out_loss", "val_acc": "held_out_acc"}


def current_names(figures: dict[str, Any]) -> dict[str, Any]:
    """A history row's or a checkpoint's figures under today's names (held-out ones were once `val_*`)."""
    return {_EARLIER_NAMES.get(k, k) if _EARLIER_NAMES.get(k) not in figures else k: v for k, v in figures.items()}


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
                         "precision": hits / predicted if predicted else None})  # never predicted: undefined
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {"loss": self.loss, "accuracy": self.accuracy, "per_class": self.per_class,
                "confusion": self.confusion, "classes": list(self.classes)}


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    train_acc: float
    test_loss: float | None  # None when the run left the test set out (--no-test)
    test_acc: float | None
    lr: float
    seconds: float
    images: int  # training images seen this epoch, all processes together
    held_out_loss: float | None = None  # on the held-out slice, when --val-split is given
    held_out_acc: float | None = None

    @classmethod
    def from_dict(cls, row: Any) -> EpochRecord:
        """A history.json row; ValueError (schema.Invalid, naming the field) unless every field is there with
        its kind of value in its range: accuracies in [0, 1], losses, times and the lr finite and >= 0."""
        row = current_names(schema.mapping(row, "a history row"))
        names = [f.name for f in fields(cls)]
        if unknown := sorted(set(row) - set(names)):
            raise schema.Invalid(unknown[0][:40], "is not a history field")
        if missing := [f.name for f in fields(cls) if f.default is MISSING and f.name not in row]:
            raise schema.Invalid(missing[0], "is missing from a history row")
        checked: dict[str, Any] = {}
        for name in names:
            value = row.get(name)
            if name in ("epoch", "images"):
                checked[name] = schema.whole(value, name, 1 if name == "epoch" else 0)
            elif value is None and name.startswith(("held_out_", "test_")):
                checked[name] = None
            else:
                checked[name] = schema.number(value, name, 0.0, 1.0 if name.endswith("_acc") else _LARGEST)
        record = cls(**checked)
        if (record.test_acc is None) != (record.test_loss is None) or (record.held_out_acc is None) != (
                record.held_out_loss is None):
            raise ValueError("a history row has an accuracy without its loss, or a loss without its accuracy")
        if record.test_acc is None and record.held_out_acc is None:
            raise ValueError("a history row has neither a test nor a held-out accuracy")
        return record

    @property
    def score(self) -> float:
        """What picks the best epoch: held-out accuracy when there is a held-out slice, else test accuracy."""
        return self.test_acc if self.held_out_acc is None else self.held_out_acc

    def metrics(self) -> dict[str, float]:
        """The figures a checkpoint of this epoch carries in its metadata."""
        keys = ("test_acc", "test_loss", "held_out_acc", "held_out_loss", "train_acc", "train_loss")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


@dataclass(frozen=True)
class Headline:
    """The accuracy a run is summed up by: test accuracy when every epoch measured the test set, else
    held-out accuracy (a --no-test run, which always has a held-out slice)."""

    key: str  # the EpochRecord field: "test_acc" or "held_out_acc"
    name: str  # what a person reads: "test" or "held-out"

    def of(self, record: EpochRecord) -> float:
        return getattr(record, self.key)


def headline(history: list[EpochRecord]) -> Headline:
    """ValueError unless every epoch has a test accuracy, or every epoch a held-out one."""
    for key, name in (("test_acc", "test"), ("held_out_acc", "held-out")):
        if all(getattr(r, key) is not None for r in history):
            return Headline(key, name)
    raise ValueError("the history's epochs do not all have a test or all have a held-out accuracy")


def history_from_rows(rows: Any) -> list[EpochRecord]:
    """history.json's rows (or a checkpoint's copy of them) as records; TypeError or ValueError unless each
    row is well formed and the epochs share a headline accuracy."""
    history = [EpochRecord.from_dict(row) for row in rows]
    headline(history)
    return history


def chosen_epoch(history: list[EpochRecord]) -> EpochRecord:
    """The epoch best.safetensors holds. With held-out images, the one with the highest held-out accuracy
    (the first of equals); without, the last: an epoch chosen for its test accuracy would make that test
    figure an optimistic one, so the test set never chooses."""
    if history[-1].held_out_acc is None:
        return history[-1]
    return max(history, key=lambda r: r.held_out_acc)  # max keeps the first of equals


@dataclass
class TrainResult:
    history: list[EpochRecord]
    out_dir: Path

    @property
    def best(self) -> EpochRecord:
        return chosen_epoch(self.history)

    @property
    def best_epoch(self) -> int:
        return self.best.epoch

    @property
    def best_by(self) -> str | None:
        """held_out_acc where held-out images chose the best epoch; None where best is the last epoch."""
        return "held_out_acc" if self.history[-1].held_out_acc is not None else None

    def to_dict(self) -> dict[str, Any]:
        best = self.best
        return {"history": [asdict(r) for r in self.history], "out_dir": str(self.out_dir),
                "best_epoch": best.epoch, "best_acc": best.score, "best_by": self.best_by,
                "last": str(self.out_dir / "last.safetensors"), "best": str(self.out_dir / "best.safetensors")}
