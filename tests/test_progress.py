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
SMALL = """
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 10)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))
"""


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


def test_train_tells_its_observer_while_it_builds_the_network(splits: tuple, tmp_path: Path) -> None:
    from conftest import write_network

    from cifar_cli.models import choose_network
    from cifar_cli.settings import TrainSettings
    from cifar_cli.training.loop import train

    class Watcher:
        def __init__(self) -> None:
            self.seen: list[str] = []

        def stage(self, description: str) -> None:
            self.seen.append(f"stage {description}")

        def epoch_start(self, epoch: int, epochs: int, steps: int, done: int) -> None:
            self.seen.append("epoch")

        def step(self, step: int, loss: float, acc: float) -> None: ...
        def epoch_end(self, record: object) -> None: ...

    network = write_network(tmp_path / "small.py", SMALL)
    watcher = Watcher()
    train(TrainSettings(epochs=1, batch_size=64, lr=0.05), *splits, tmp_path / "run", CPU,
          model_spec=choose_network(network), observer=watcher)
    assert watcher.seen[:2] == ["stage preparing the network", "epoch"]
