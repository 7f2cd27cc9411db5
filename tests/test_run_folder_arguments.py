"""A run folder wherever a checkpoint is taken: its best.safetensors to judge, its last.safetensors to resume,
and a line on stderr saying which file was used."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import TRAIN_ARGS, assert_clean_error, cli, network_with_event, write_network


def _picture(tmp_path: Path) -> Path:
    picture = tmp_path / "boat.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(picture)
    return picture


def test_each_judging_command_takes_a_run_folder_as_its_best_checkpoint(trained_run: Path, tiny_data: Path,
                                                                         tmp_path: Path) -> None:
    best = str(trained_run / "best.safetensors")
    picture = _picture(tmp_path)
    commands = {
        "eval": ("eval", trained_run, "--data-dir", tiny_data),
        "predict": ("predict", picture, "--checkpoint", trained_run),
        "mistakes": ("mistakes", trained_run, "--data-dir", tiny_data, "--out", tmp_path / "m.png", "-n", "2"),
        "gradcam": ("gradcam", picture, "-c", trained_run, "--out", tmp_path / "g.png"),
    }
    for name, args in commands.items():
        result = cli(*args, "--device", "cpu", "--json")
        assert result.exit_code == 0, (name, result.stdout, result.stderr, result.exception)
        assert json.loads(result.stdout)["checkpoint"] == best, name  # stdout stays pure JSON
        assert f"using {best}" in " ".join(result.stderr.split()), (name, result.stderr)


def test_eval_of_the_images_a_run_trained_on_reads_its_last_checkpoint(trained_run: Path, tiny_data: Path) -> None:
    result = cli("eval", trained_run, "--images", "train", "--data-dir", tiny_data, "--device", "cpu", "--json")
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    assert json.loads(result.stdout)["checkpoint"] == str(trained_run / "last.safetensors")


def test_a_run_without_a_best_checkpoint_is_judged_by_its_last_saying_so(trained_run: Path, tiny_data: Path,
                                                                         tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "best.safetensors").unlink()
    result = cli("eval", run, "--data-dir", tiny_data, "--device", "cpu", "--json")
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    assert json.loads(result.stdout)["checkpoint"] == str(run / "last.safetensors")
    assert "it has no best.safetensors" in " ".join(result.stderr.split())


def test_train_resumes_a_run_folder_from_its_last_checkpoint(tiny_data: Path, tmp_path: Path) -> None:
    stops = write_network(tmp_path / "stops.py", network_with_event(25, "os.kill(os.getpid(), signal.SIGINT)"))
    run = tmp_path / "run"
    args = ("--data-dir", tiny_data, "--model", stops, "--device", "cpu")
    stopped = cli("train", "--out", run, "--epochs", "2", "--batch-size", "16", *args)
    assert stopped.exit_code == 130, stopped.stderr
    result = cli("train", "--resume", run, *args)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    assert f"using {run / 'last.safetensors'}" in " ".join(result.stderr.split())
    assert [r["epoch"] for r in json.loads((run / "history.json").read_text())] == [1, 2]


def test_a_folder_without_the_file_is_one_line_naming_what_is_there(trained_run: Path, tiny_data: Path,
                                                                    tmp_path: Path) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "history.json").write_text("[]")
    assert_clean_error(cli("eval", folder, "--device", "cpu"), "without best.safetensors or last.safetensors",
                       "it holds history.json")
    assert_clean_error(cli("train", "--resume", folder, "--data-dir", tiny_data, *TRAIN_ARGS),
                       "without last.safetensors", "it holds history.json")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_clean_error(cli("predict", _picture(tmp_path), "-c", empty), "it holds nothing")
