"""`cifar COMMAND --help` shows every word of its help: nothing read as markup and dropped, defaults as
`[default: X]`, and train's options grouped in panels."""

from __future__ import annotations

import re

import pytest
from conftest import cli
from typer import rich_utils

from cifar_cli.cli import app

COMMANDS = [c.name for c in app.registered_commands]


def _help(monkeypatch: pytest.MonkeyPatch, *command: str) -> str:
    """The help as one line of words, on a terminal wide enough for no option's text to wrap."""
    monkeypatch.setattr(rich_utils, "MAX_WIDTH", 1000)
    result = cli(*command, "--help")
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.stdout).split())


@pytest.mark.parametrize("command", COMMANDS)
def test_help_loses_no_words(monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    shown = _help(monkeypatch, command)
    assert not re.search(r" [.,](\s|$)", shown), shown  # what a swallowed `[...]` leaves behind
    assert "(default" not in shown and "[default: (" not in shown, shown
    assert "[default: ]" not in shown


def test_defaults_that_are_sentences_are_shown_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "its last.safetensors). [default: the one shipped with cifar-cli]" in _help(monkeypatch, "eval")
    assert "PNG file to write. [default: curves.png next to history.json]" in _help(monkeypatch, "plot")
    train = _help(monkeypatch, "train")
    assert "Epochs to train. [default: 40]" in train
    assert "[default: $CIFAR_DATA_DIR or ~/.cache/cifar-cli]" in train


def test_train_groups_its_options_in_panels(monkeypatch: pytest.MonkeyPatch) -> None:
    shown = _help(monkeypatch, "train")
    panels = ["Schedule", "Regularisation", "Augmentation", "Data and evaluation", "Hardware", "Run folder and output"]
    at = [shown.find(f" {panel} ") for panel in panels]
    assert -1 not in at and at == sorted(at), at
    assert shown.find("--lr") > at[0] and shown.find("--mixup") > at[1] and shown.find("--cutout-p") > at[2]
    assert shown.find("--val-split") > at[3] and shown.find("--device") > at[4] and shown.find("--resume") > at[5]
