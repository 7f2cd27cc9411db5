"""plot draws the learning rate beside loss and accuracy; eval --out draws the confusion matrix."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import cli
from PIL import Image


def _history(epochs: int) -> list[dict]:
    peak = max(1, epochs // 4)
    return [{"epoch": e, "train_loss": 2.0 / e, "train_acc": 0.1 + 0.8 * e / epochs, "test_loss": 2.1 / e,
             "test_acc": 0.1 + 0.7 * e / epochs, "lr": 0.1 * min(e / peak, (epochs - e + 1) / (epochs - peak + 1)),
             "seconds": 1.0, "images": 300} for e in range(1, epochs + 1)]


def test_plot_draws_three_panels_loss_accuracy_and_lr(tmp_path: Path) -> None:
    (tmp_path / "history.json").write_text(json.dumps(_history(12)))
    result = cli("plot", tmp_path, "--out", tmp_path / "curves.png")
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    with Image.open(tmp_path / "curves.png") as picture:
        assert picture.format == "PNG" and picture.width > 3 * picture.height  # three panels side by side


def test_eval_out_draws_the_confusion_matrix(tiny_data: Path, tmp_path: Path) -> None:
    result = cli("eval", "--data-dir", tiny_data, "--device", "cpu", "--out", tmp_path / "confusion.png", "--json")
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    assert json.loads(result.stdout)["out"] == str(tmp_path / "confusion.png")
    with Image.open(tmp_path / "confusion.png") as picture:
        assert picture.format == "PNG" and 400 < picture.width < 2000 and 400 < picture.height < 2000
    refused = cli("eval", "--data-dir", tiny_data, "--out", tmp_path / "confusion.jpg")
    assert refused.exit_code == 2 and not (tmp_path / "confusion.jpg").exists()
