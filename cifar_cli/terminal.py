"""What reaches the terminal: two consoles, and the one way text from a user or a file is shown.

Rich reads `[...]` as markup and `:name:` as an emoji code, and a terminal acts on escape codes and starts
a new line at a newline; a path, layer or class name must do none of that. The consoles never replace
emoji codes, and every piece of outside text goes through `literal` (or, in text printed without markup,
`visible`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.markup import escape


def console(stderr: bool = False) -> Console:
    """A console that prints our markup and nothing else: no emoji codes, no guessing at highlights."""
    return Console(stderr=stderr, highlight=False, emoji=False)


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """'1 epoch', '2 epochs', '1,000 images', '0 dilated convolutions': every count with its noun is said here."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"


def visible(value: object) -> str:
    """The text with every character that is not printable (newline, carriage return, tab, escape, other
    control and format characters) written as its Python escape, so it shows instead of acting."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(value))


def literal(value: object, keep_lines: bool = False) -> str:
    """Outside text for a string that Rich reads as markup: shown as written, on the line it is on. With
    `keep_lines`, text of several lines (a library's table) keeps its line breaks, each line shown so."""
    if keep_lines:
        return "\n".join(escape(visible(line)) for line in str(value).split("\n"))
    return escape(visible(value))


@contextlib.contextmanager
def progress_bar(console: Console, description: str, total: int | None,
                 enabled: bool) -> Iterator[Callable[[int], None]]:
    """A transient bar on `console` while a long step runs (a spinner where the step cannot count), and the
    hook the step calls with how much of `total` is done. Drawn only when `enabled` and the console is a
    terminal: piped output and --json get nothing. The one progress display every long step but training's
    epochs uses (those draw cli/train.py's RichTrainObserver)."""
    if not (enabled and console.is_terminal):
        yield lambda done: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [SpinnerColumn(), TextColumn("{task.description}")]
    if total is not None:
        columns += [BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda done: bar.update(task, completed=done)
