"""The images a --val-split run holds out have one name, held-out, in every output; histories that called
them `val_*` are still read."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import TRAIN_ARGS, cli

from cifar_cli.checkpoint import load_checkpoint
from cifar_cli.records import chosen_epoch, history_from_rows


def _row(epoch: int, held: float, test: float | None, prefix: str = "held_out") -> dict:
    return {"epoch": epoch, "train_loss": 1.0, "train_acc": 0.5, "test_loss": None if test is None else 1.0,
            "test_acc": test, "lr": 0.1 / epoch, "seconds": 1.0, "images": 10, f"{prefix}_loss": 1.0,
            f"{prefix}_acc": held}


def test_a_history_that_called_them_val_is_still_read(tmp_path: Path) -> None:
    rows = [_row(1, 0.4, 0.5, "val"), _row(2, 0.6, 0.55, "val"), _row(3, 0.5, 0.6, "val")]
    (tmp_path / "history.json").write_text(json.dumps(rows))
    result = cli("plot", tmp_path, "--json")
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    summary = json.loads(result.stdout)
    assert summary["final_held_out_acc"] == 0.5 and summary["best_epoch"] == 2
    assert not any(key.startswith("val") or "_val_" in key for key in summary)
    assert (tmp_path / "curves.png").stat().st_size > 10_000


def test_without_held_out_images_the_test_set_never_chooses_the_best_epoch(tiny_data: Path, tmp_path: Path) -> None:
    result = cli("train", "--epochs", "2", "--data-dir", tiny_data, "--out", tmp_path, *TRAIN_ARGS)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    footer = " ".join(result.stdout.split())
    assert "no held-out images" in footer and "the result is the last epoch" in footer
    assert load_checkpoint(tmp_path / "best.safetensors").epoch == 2
    drawn = json.loads(cli("plot", tmp_path, "--json").stdout)
    assert (drawn["best_by"], drawn["best_epoch"]) == (None, 2)


def test_plot_and_train_choose_the_same_best_epoch_by_held_out_images(tmp_path: Path) -> None:
    rows = [_row(1, 0.4, 0.5), _row(2, 0.6, 0.55), _row(3, 0.5, 0.6)]  # test accuracy would choose epoch 3
    (tmp_path / "history.json").write_text(json.dumps(rows))
    summary = json.loads(cli("plot", tmp_path, "--json").stdout)
    assert (summary["best_by"], summary["best_epoch"], summary["best_acc"]) == ("held_out_acc", 2, 0.6)
    assert chosen_epoch(history_from_rows(rows)).epoch == 2  # what train writes to best.safetensors
