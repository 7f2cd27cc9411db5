"""A run's progress as people watch it (`cifar train`, and `cifar_cli.train` in a notebook): a live bar per
epoch, then one line each. Rich draws it in a terminal and in Jupyter alike."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from cifar_cli.terminal import literal


class RichTrainObserver:
    """Draws the engine's progress: a live bar per epoch, then one summary line."""

    def __init__(self, console: Console, enabled: bool = True):
        from cifar_cli.report import epoch_line

        self.console, self.epoch_line = console, epoch_line
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=console, transient=True, disable=not enabled,
        )
        self.task = None
        self.epochs = 0

    def __enter__(self) -> RichTrainObserver:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def stage(self, description: str) -> None:
        """A step before the first epoch (building the network), shown until the first epoch starts."""
        self.task = self.progress.add_task(literal(description), total=None, stats="")

    def epoch_start(self, epoch: int, epochs: int, steps: int, done: int) -> None:
        self.epochs = epochs
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(f"epoch {epoch}/{epochs}", total=steps, completed=done, stats="")

    def step(self, step: int, loss: float, acc: float) -> None:
        self.progress.update(self.task, completed=step, stats=f"loss {loss:.4f} acc {100 * acc:5.2f}%")

    def epoch_end(self, record: Any) -> None:
        self.progress.console.print(self.epoch_line(record, self.epochs), soft_wrap=True)

    def notice(self, message: str) -> None:
        self.progress.console.print(literal(message), soft_wrap=True)
