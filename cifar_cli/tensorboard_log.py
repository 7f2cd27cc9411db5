"""`cifar train --tensorboard`: a run's epochs as TensorBoard events in RUN/tensorboard/, so that
`tensorboard --logdir runs` compares runs. docs/tensorboard.md lists the tags.

Each epoch's figures are written at step = the epoch, in history.json's units (accuracy as a fraction),
before the epoch is saved; a session starts its writer with purge_step = the first epoch it writes, so an
epoch a crash made a resumed run judge again is shown once, from the second judging. Only rank 0 is told of
epochs, so only it writes. The tensorboard package (the [tensorboard] extra) is imported when the first
epoch is written; `require` says up front when it is missing.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

from cifar_cli.errors import CifarError
from cifar_cli.extras import require
from cifar_cli.files import what_sits_at
from cifar_cli.records import EpochRecord, EvalResult
from cifar_cli.settings import TrainSettings
from cifar_cli.training.session import Silent

FOLDER = "tensorboard"  # in the run folder
CONFUSION_EVERY = 5  # epochs between pictures of the confusion matrix (the last epoch has one too)
SPLITS = ("train", "test", "held_out")  # as history.json names them: train_loss, test_acc, held_out_acc...
_EVENTS = "events.out.tfevents"  # how the files TensorBoard reads begin


def scalars(record: EpochRecord) -> dict[str, float]:
    """One epoch's scalars by tag: loss/SPLIT and accuracy/SPLIT for each split the record has, lr, seconds.
    The tags group one quantity's splits in one section of TensorBoard's page."""
    values = {}
    for split in SPLITS:
        accuracy, loss = getattr(record, f"{split}_acc"), getattr(record, f"{split}_loss")
        if accuracy is not None:
            values[f"loss/{split}"], values[f"accuracy/{split}"] = loss, accuracy
    values["lr"], values["seconds"] = record.lr, record.seconds
    return values


def hyperparameters(settings: TrainSettings, model: str) -> dict[str, Any]:
    """What the run was asked to do, as TensorBoard's hparams: every setting, and the network's name."""
    return {"model": model, **settings.to_dict()}


def check_folder(out_dir: Path, resuming: bool) -> None:
    """Before a run starts: refuse a tensorboard/ that is a link or not a folder (no file is written through
    a link), and, for a new run, one holding an earlier run's events, which would be shown as this run's."""
    require("tensorboard", "cifar train --tensorboard")
    folder = Path(out_dir) / FOLDER
    mode = what_sits_at(folder)
    if mode is None:
        return
    if not stat.S_ISDIR(mode):
        raise CifarError(f"{folder} is not a folder (a link or a file); cifar-cli writes no file through a link: "
                         "remove it or choose another --out")
    if not resuming and any(p.name.startswith(_EVENTS) for p in folder.iterdir()):
        raise CifarError(f"{folder} holds the TensorBoard events of an earlier run, which would be shown as this "
                         "run's (--overwrite replaces a run's files, not this folder); remove it or choose another "
                         "--out")


class TensorBoardLog(Silent):
    """A training observer that writes each epoch's scalars, every CONFUSION_EVERY epochs (and at the last)
    the confusion matrices, and the run's hyperparameters into `out_dir`/tensorboard/. Use it as a context
    manager: leaving closes the events file."""

    def __init__(self, out_dir: Path, settings: TrainSettings, model: str):
        self.folder, self.settings, self.model = Path(out_dir) / FOLDER, settings, model
        self.writer: Any = None  # opened at the first epoch this session judges
        self.ended: Any = None  # the hparams' session end, written after the last epoch

    def __enter__(self) -> TensorBoardLog:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.writer is not None:
            self.writer.close()

    def epoch_measured(self, record: EpochRecord, results: dict[str, EvalResult]) -> None:
        """Write the epoch's events and flush them, so that a crash after its checkpoint loses none."""
        try:
            if self.writer is None:
                self._open(record)
            for tag, value in scalars(record).items():
                self.writer.add_scalar(tag, value, record.epoch)
            last = record.epoch == self.settings.epochs
            if last or record.epoch % CONFUSION_EVERY == 0:
                self._confusion(record.epoch, results)
            if last:
                self.writer.file_writer.add_summary(self.ended, record.epoch)
            self.writer.flush()
        except OSError as e:
            raise CifarError(f"cannot write the TensorBoard events in {self.folder}: {e.strerror or e}") from None

    def _open(self, first: EpochRecord) -> None:
        """The writer, purging what an earlier session wrote from `first` on, and the hyperparameters with
        this run's loss and accuracy tags as their metrics (TensorBoard shows their last values)."""
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        self.writer = SummaryWriter(str(self.folder), purge_step=first.epoch)
        metrics = {tag: value for tag, value in scalars(first).items() if "/" in tag}
        experiment, started, self.ended = hparams(hyperparameters(self.settings, self.model), metrics)
        for summary in (experiment, started):
            self.writer.file_writer.add_summary(summary, first.epoch)

    def _confusion(self, epoch: int, results: dict[str, EvalResult]) -> None:
        from cifar_cli.report import confusion_image

        for split, result in results.items():
            heading = f"epoch {epoch}: {sum(map(sum, result.confusion)):,} {split.replace('_', '-')} images"
            self.writer.add_image(f"confusion/{split}", confusion_image(result, heading), epoch, dataformats="HWC")
