"""Long steps show progress on a terminal's stderr, and nothing where stderr is not one or under --json."""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch
from conftest import cli
from rich.console import Console
from torch import nn

from cifar_cli.data import load_split
from cifar_cli.explain import find_mistakes
from cifar_cli.terminal import progress_bar
from cifar_cli.training.evaluation import evaluate

CPU = torch.device("cpu")


def _network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))


def test_evaluation_and_the_search_for_mistakes_report_each_batch(tiny_data: Path) -> None:
    split = load_split(tiny_data, train=False)
    for run in (lambda hook: evaluate(_network(), split, CPU, batch_size=32, progress=hook),
                lambda hook: find_mistakes(_network(), split, CPU, progress=hook)):
        told: list[int] = []
        run(told.append)
        assert told == sorted(told) and told[-1] == len(split), told


def test_the_bar_draws_on_a_terminal_only() -> None:
    def drawn(terminal: bool, enabled: bool) -> str:
        shown = io.StringIO()
        with progress_bar(Console(file=shown, force_terminal=terminal, width=100), "judging", 10, enabled) as hook:
            hook(5)
        return shown.getvalue()

    assert "judging" in drawn(terminal=True, enabled=True)
    assert drawn(terminal=False, enabled=True) == "" and drawn(terminal=True, enabled=False) == ""


def test_eval_writes_nothing_to_a_stderr_that_is_not_a_terminal(tiny_data: Path) -> None:
    for extra in ([], ["--json"]):
        result = cli("eval", "--data-dir", tiny_data, "--device", "cpu", *extra)
        assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
        assert result.stderr == ""
    assert json.loads(result.stdout)["images"] == 100
