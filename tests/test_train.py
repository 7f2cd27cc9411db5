"""Training and evaluation end to end: it learns, it is reproducible, it resumes exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TRAIN_ARGS, assert_clean_error, cli, history_without_times

from cifar_cli.checkpoint import load_checkpoint
from cifar_cli.data import load_split
from cifar_cli.settings import DEFAULTS, TrainSettings
from cifar_cli.training.loop import train

RESULT_KEYS = {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds", "images", "held_out_loss",
               "held_out_acc"}


def _history(out: Path) -> list[dict]:
    return json.loads((out / "history.json").read_text())


def test_a_short_run_really_learns(trained_run: Path) -> None:
    history = _history(trained_run)
    assert [r["epoch"] for r in history] == [1, 2, 3, 4, 5, 6]
    assert all(set(r) == RESULT_KEYS for r in history)
    assert history[-1]["train_loss"] < 0.8 * history[0]["train_loss"]
    assert history[-1]["test_acc"] >= 0.6  # chance is 0.1
    visible = {p.name for p in trained_run.iterdir() if not p.name.startswith(".")}
    assert visible == {"best.safetensors", "last.safetensors", "history.json", "settings.json"}


def test_checkpoint_metadata_describes_the_run(trained_run: Path) -> None:
    history = _history(trained_run)
    best = load_checkpoint(trained_run / "best.safetensors")
    best_record = history[-1]  # no held-out images to choose an epoch by: the last, never the test set's pick
    assert best.epoch == best_record["epoch"] and best.metrics["test_acc"] == best_record["test_acc"]
    assert best.train_state is None and not best.optimizer_tensors  # weights only
    last = load_checkpoint(trained_run / "last.safetensors")
    assert last.epoch == 6 and last.train_state["history"] == history
    assert last.optimizer_tensors  # momentum buffers, for --resume


def test_eval_rebuilds_the_model_from_the_file_alone(trained_run: Path, tiny_data: Path) -> None:
    result = cli("eval", trained_run / "best.safetensors", "--data-dir", tiny_data, "--device", "cpu", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    best_record = max(_history(trained_run), key=lambda r: r["test_acc"])
    assert report["accuracy"] == pytest.approx(best_record["test_acc"])
    assert report["images"] == 100 and len(report["per_class"]) == 10
    assert sum(map(sum, report["confusion"])) == 100
    assert sum(row[i] for i, row in enumerate(report["confusion"])) == round(100 * report["accuracy"])

    table = cli("eval", trained_run / "best.safetensors", "--data-dir", tiny_data, "--device", "cpu")
    assert table.exit_code == 0
    assert f"{100 * report['accuracy']:.2f}%" in table.stdout
    assert "Confusion matrix" in table.stdout and "airplane" in table.stdout


def test_same_seed_same_history_other_seed_differs(tiny_data: Path, tmp_path: Path) -> None:
    runs = {}
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        result = cli("train", "--epochs", "2", "--data-dir", tiny_data, "--out", tmp_path / name, "--seed", seed,
                     *TRAIN_ARGS)
        assert result.exit_code == 0, result.stderr
        runs[name] = history_without_times(tmp_path / name)
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["c"]


class _CrashAfter:
    """Stands in for a machine that dies once the given epoch's checkpoint is written."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def epoch_start(self, epoch: int, epochs: int, steps: int, done: int) -> None: ...
    def step(self, step: int, loss: float, acc: float) -> None: ...

    def epoch_end(self, record: object) -> None:
        if record.epoch == self.epoch:
            raise RuntimeError("power cut")


def test_resume_reaches_the_same_result_as_an_uninterrupted_run(tiny_data: Path, tmp_path: Path) -> None:
    train_split, test_split = load_split(tiny_data, train=True), load_split(tiny_data, train=False)
    settings = TrainSettings(epochs=3, batch_size=32, lr=0.05, seed=5)
    cpu = torch.device("cpu")
    train(settings, train_split, test_split, tmp_path / "whole", cpu)
    with pytest.raises(RuntimeError, match="power cut"):
        train(settings, train_split, test_split, tmp_path / "cut", cpu, observer=_CrashAfter(1))
    assert len(_history(tmp_path / "cut")) == 1

    result = cli("train", "--resume", tmp_path / "cut" / "last.safetensors", "--data-dir", tiny_data,
                 "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    assert history_without_times(tmp_path / "cut") == history_without_times(tmp_path / "whole")
    whole = load_checkpoint(tmp_path / "whole" / "last.safetensors").model_state
    resumed = load_checkpoint(tmp_path / "cut" / "last.safetensors").model_state
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_resume_refuses_weights_only_and_changed_settings(trained_run: Path, tiny_data: Path) -> None:
    assert_clean_error(cli("train", "--resume", trained_run / "best.safetensors", "--data-dir", tiny_data),
                       "resume from last.safetensors")
    assert_clean_error(cli("train", "--resume", trained_run / "last.safetensors", "--data-dir", tiny_data,
                           "--epochs", "9", "--out", trained_run.parent / "elsewhere"),
                       "keeps its settings", "epochs")


def test_bad_train_options_fail_cleanly(tiny_data: Path, tmp_path: Path) -> None:
    assert_clean_error(cli("train", "--epochs", "0", "--data-dir", tiny_data), "--epochs must be at least 1")
    assert_clean_error(cli("train", "--epochs", "-3", "--data-dir", tiny_data), "--epochs")
    assert_clean_error(cli("train", "--lr", "0", "--data-dir", tiny_data), "--lr")
    assert_clean_error(cli("train", "--label-smoothing", "1", "--data-dir", tiny_data), "--label-smoothing")
    assert_clean_error(cli("train", "--weight-decay", "-0.1", "--data-dir", tiny_data), "--weight-decay")
    assert_clean_error(cli("train", "--lookahead", "1", "--data-dir", tiny_data), "--lookahead must be a decay")
    for flag in ("--affine-p", "--cutout-p", "--tone-p"):
        assert_clean_error(cli("train", flag, "1.5", "--data-dir", tiny_data), flag, "probability")
    assert_clean_error(cli("train", "--aug-fade", "-0.1", "--data-dir", tiny_data), "--aug-fade", "fraction")
    assert_clean_error(cli("train", "--mixup", "-1", "--data-dir", tiny_data), "--mixup", "Beta concentration")
    assert_clean_error(cli("train", "--lookahead", "0.95", "--ema", "0.999", "--data-dir", tiny_data),
                       "--ema and --lookahead", "choose one")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert_clean_error(cli("train", "--epochs", "1", "--data-dir", tiny_data, "--out", blocker / "run"),
                       "not writable")
    assert_clean_error(cli("train", "--data-dir", tmp_path / "nowhere", "--out", tmp_path / "o"),
                       "CIFAR-10 not found", "--download", str(tmp_path / "nowhere"))


def test_a_weight_average_replaces_the_default_lookahead(tiny_data: Path, tmp_path: Path) -> None:
    """Lookahead is on by default; --ema alone asks for the other second copy, and gets it instead."""
    result = cli("train", "--epochs", "1", "--ema", "0.9", "--data-dir", tiny_data, "--out", tmp_path / "run",
                 *TRAIN_ARGS)
    assert result.exit_code == 0, result.stderr
    saved = json.loads((tmp_path / "run" / "settings.json").read_text())["settings"]
    assert (saved["ema"], saved["lookahead"]) == (0.9, 0.0)


def test_a_run_saved_before_lookahead_was_a_default_resumes_without_it() -> None:
    saved_then = {k: v for k, v in TrainSettings(lookahead=0.0).to_dict().items() if k != "lookahead"}
    assert TrainSettings.from_dict(saved_then) == TrainSettings(lookahead=0.0)


def test_the_augmentations_odds_are_a_run_setting(tiny_data: Path, tmp_path: Path) -> None:
    """--affine-p/--cutout-p/--tone-p (and --aug-fade) change what the network is fed (so its weights), are
    saved with the run, and a resumed run keeps them."""
    def weights(name: str, *odds: str) -> dict:
        result = cli("train", "--epochs", "1", "--data-dir", tiny_data, "--out", tmp_path / name, *TRAIN_ARGS, *odds)
        assert result.exit_code == 0, result.stderr
        return load_checkpoint(tmp_path / name / "last.safetensors").model_state

    plain, light = weights("plain"), weights("light", "--affine-p", "0", "--cutout-p", "0.25", "--tone-p", "0")
    faded = weights("faded", "--aug-fade", "1")
    assert any(not torch.equal(plain[k], light[k]) for k in plain)
    assert any(not torch.equal(plain[k], faded[k]) for k in plain)
    saved = json.loads((tmp_path / "light" / "settings.json").read_text())["settings"]
    assert (saved["affine_p"], saved["cutout_p"], saved["tone_p"]) == (0.0, 0.25, 0.0)
    assert saved["aug_fade"] == DEFAULTS.aug_fade
    assert json.loads((tmp_path / "faded" / "settings.json").read_text())["settings"]["aug_fade"] == 1.0
    for option, value, name in (("--cutout-p", "0.5", "cutout_p"), ("--aug-fade", "0.2", "aug_fade")):
        assert_clean_error(cli("train", "--resume", tmp_path / "light" / "last.safetensors", option, value,
                               "--data-dir", tiny_data, "--out", tmp_path / "other"), "keeps its settings", name)


def test_a_run_saved_before_the_augmentations_odds_were_settings_resumes_with_the_odds_it_had() -> None:
    odds = ("affine_p", "cutout_p", "tone_p", "aug_fade")
    saved_then = {k: v for k, v in TrainSettings().to_dict().items() if k not in odds}
    assert TrainSettings.from_dict(saved_then).augment_odds == (0.5, 0.5, 0.5)
    assert TrainSettings.from_dict(saved_then).aug_fade == 0.0


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda_fails_cleanly(tiny_data: Path, tmp_path: Path) -> None:
    assert_clean_error(cli("train", "--device", "cuda", "--data-dir", tiny_data, "--out", tmp_path),
                       "CUDA is not available")
    assert not any(tmp_path.iterdir())


def test_loader_workers_change_speed_not_results(tiny_data: Path, tmp_path: Path) -> None:
    """The README's promise: --workers is a speed option; on the CPU the result is the same."""
    for workers in ("0", "1"):
        result = cli("train", "--epochs", "2", "--workers", workers, "--data-dir", tiny_data,
                     "--out", tmp_path / workers, "--seed", "6", *TRAIN_ARGS)
        assert result.exit_code == 0, result.stderr
    assert history_without_times(tmp_path / "0") == history_without_times(tmp_path / "1")
    alone, fed = (load_checkpoint(tmp_path / w / "last.safetensors").model_state for w in ("0", "1"))
    assert all(torch.equal(alone[k], fed[k]) for k in alone)
