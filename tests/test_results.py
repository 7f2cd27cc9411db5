"""Judging and using a trained network: the held-out slice, flip TTA, predict, curves, the shipped checkpoint."""

from __future__ import annotations

import json
import re
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import NO_REAL_DATA, REAL_DATA, TRAIN_ARGS, SignalAt, assert_clean_error, cli
from PIL import Image

import cifar_cli.checkpoint as checkpoint_module
from cifar_cli.checkpoint import PACKAGED_CHECKPOINT, load_checkpoint, model_from_checkpoint
from cifar_cli.data import CLASSES, Split, hold_out, load_split
from cifar_cli.records import EpochRecord
from cifar_cli.rules import check_rules
from cifar_cli.run_folder import write_history
from cifar_cli.settings import DEFAULT_MODEL, TrainSettings
from cifar_cli.training.evaluation import evaluate, predict
from cifar_cli.training.loop import train
from cifar_cli.training.session import TrainingInterrupted

CPU = torch.device("cpu")
README = Path(__file__).parents[1] / "README.md"


def test_held_out_slice_is_fixed_disjoint_and_picks_the_best_epoch(tiny_data: Path, tmp_path: Path) -> None:
    split = load_split(tiny_data, train=True)
    rest, held = hold_out(split, 50)
    again_rest, again_held = hold_out(split, 50)
    assert len(rest) == 250 and len(held) == 50
    assert np.array_equal(held.images, again_held.images) and np.array_equal(rest.labels, again_rest.labels)
    every = {image.tobytes() for image in split.images}
    held_bytes, rest_bytes = {image.tobytes() for image in held.images}, {image.tobytes() for image in rest.images}
    assert not held_bytes & rest_bytes and held_bytes | rest_bytes == every

    result = cli("train", "--epochs", "3", "--val-split", "50", "--data-dir", tiny_data, "--out", tmp_path,
                 "--seed", "1", "--json", *TRAIN_ARGS)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    history = report["history"]
    assert all(r["images"] == 250 and 0 <= r["held_out_acc"] <= 1 for r in history)
    best = max(history, key=lambda r: r["held_out_acc"])  # the first of equals, as training keeps the first
    assert (report["best_by"], report["best_epoch"]) == ("held_out_acc", best["epoch"])
    assert load_checkpoint(tmp_path / "best.safetensors").epoch == best["epoch"]
    assert "250 train / 50 held-out" in " ".join(result.stderr.split())

    assert_clean_error(cli("train", "--val-split", "300", "--data-dir", tiny_data, "--out", tmp_path / "x"),
                       "--val-split", "300")


def test_no_test_leaves_the_test_set_unread_and_the_weights_unchanged(tiny_data: Path, tmp_path: Path) -> None:
    """A tuning run with --no-test never reads the test set and reports no test figure, yet trains the same
    weights as with it: the held-out images alone judge the epochs."""
    blind = tmp_path / "blind"
    shutil.copytree(tiny_data, blind)
    (blind / "cifar-10-batches-py" / "test_batch").unlink()  # a test set it cannot have peeked at
    common = ("train", "--epochs", "2", "--val-split", "50", "--seed", "1", "--json", *TRAIN_ARGS)
    seen = cli(*common, "--data-dir", tiny_data, "--out", tmp_path / "seen")
    unseen = cli(*common, "--no-test", "--data-dir", blind, "--out", tmp_path / "unseen")
    assert seen.exit_code == 0 and unseen.exit_code == 0, (seen.stderr, unseen.stderr)

    report = json.loads(unseen.stdout)
    assert all(r["test_acc"] is None and r["test_loss"] is None and 0 <= r["held_out_acc"] <= 1
               for r in report["history"])
    assert "test set left out" in " ".join(unseen.stderr.split())
    assert [r["held_out_acc"] for r in report["history"]] == [
        r["held_out_acc"] for r in json.loads(seen.stdout)["history"]]
    for name in ("last.safetensors", "best.safetensors"):
        theirs, ours = (load_checkpoint(tmp_path / run / name) for run in ("seen", "unseen"))
        assert theirs.epoch == ours.epoch and "test_acc" not in ours.metrics
        assert all(torch.equal(theirs.model_state[k], v) for k, v in ours.model_state.items())

    drawn = cli("plot", tmp_path / "unseen", "--json")
    assert drawn.exit_code == 0, drawn.stderr
    summary = json.loads(drawn.stdout)
    assert (summary["best_by"], summary["final_test_acc"]) == ("held_out_acc", None)
    assert summary["best_acc"] == max(r["held_out_acc"] for r in report["history"])
    assert "final held-out accuracy" in " ".join(cli("plot", tmp_path / "unseen").stdout.split())

    assert_clean_error(cli("train", "--no-test", "--data-dir", tiny_data, "--out", tmp_path / "x"),
                       "--no-test needs --val-split")


def test_a_run_begun_without_the_test_set_resumes_without_it(tiny_data: Path, tmp_path: Path) -> None:
    """Resumed by hand after a crash (no --no-test typed), a tuning run must not start reading the test set."""
    blind = tmp_path / "blind"
    shutil.copytree(tiny_data, blind)
    (blind / "cifar-10-batches-py" / "test_batch").unlink()
    settings = TrainSettings(epochs=3, batch_size=16, lr=0.05, val_split=50)
    with pytest.raises(TrainingInterrupted):
        train(settings, load_split(blind, train=True), None, tmp_path / "run", CPU,
              observer=SignalAt(signal.SIGINT, epoch=2, step=10))
    shutil.copytree(tmp_path / "run", tmp_path / "told")
    resumed = cli("train", "--resume", tmp_path / "run" / "last.safetensors", "--data-dir", blind, "--json")
    assert resumed.exit_code == 0, resumed.stderr
    assert [r["test_acc"] for r in json.loads(resumed.stdout)["history"]] == [None] * 3
    assert "test set left out" in " ".join(resumed.stderr.split())

    told = cli("train", "--resume", tmp_path / "told" / "last.safetensors", "--test", "--data-dir", tiny_data,
               "--json")  # asked for, the test set is read from the resumed epoch on
    assert told.exit_code == 0, told.stderr
    assert [r["test_acc"] is None for r in json.loads(told.stdout)["history"]] == [True, False, False]


def _model(run: Path) -> torch.nn.Module:
    return model_from_checkpoint(load_checkpoint(run / "best.safetensors"))


def test_flip_tta_treats_an_image_and_its_mirror_alike(trained_run: Path, tiny_data: Path) -> None:
    model, test = _model(trained_run), load_split(tiny_data, train=False)
    mirrored = np.ascontiguousarray(test.images[:, :, ::-1])
    with_tta = predict(model, test.images, CPU, tta=True)
    assert torch.allclose(with_tta, predict(model, mirrored, CPU, tta=True), atol=1e-6)
    assert not torch.allclose(with_tta, predict(model, test.images, CPU, tta=False), atol=1e-3)
    # evaluate() and predict() agree on what TTA decides.
    accuracy = (with_tta.argmax(1).numpy() == test.labels).mean()
    assert evaluate(model, test, CPU, tta=True).accuracy == pytest.approx(accuracy)


def test_eval_batch_size_changes_speed_not_results(trained_run: Path, tiny_data: Path) -> None:
    """--batch-size's help promises it: the same checkpoint scores the same in batches of 7 and of the default."""
    runs = [json.loads(cli("eval", trained_run / "best.safetensors", "--data-dir", tiny_data, "--device", "cpu",
                           "--json", *size).stdout) for size in ((), ("--batch-size", "7"))]
    assert runs[0]["accuracy"] == runs[1]["accuracy"] and runs[0]["confusion"] == runs[1]["confusion"]
    assert runs[0]["loss"] == pytest.approx(runs[1]["loss"], rel=1e-5)


def test_predict_reads_image_files_like_the_dataset(trained_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    test = load_split(tiny_data, train=False)
    files = []
    for i in range(12):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(test.images[i]).save(files[-1])
    result = cli("predict", *files, "--checkpoint", trained_run / "best.safetensors", "--device", "cpu", "--json")
    assert result.exit_code == 0, result.stderr
    predictions = json.loads(result.stdout)["predictions"]
    assert [p["image"] for p in predictions] == [str(f) for f in files]
    for p in predictions:
        probabilities = [t["probability"] for t in p["top"]]
        assert len(p["top"]) == 3 and probabilities == sorted(probabilities, reverse=True)
        assert 0 < sum(probabilities) <= 1 + 1e-6 and all(t["class"] in CLASSES for t in p["top"])
    top1 = np.array([CLASSES.index(p["top"][0]["class"]) for p in predictions])
    first = Split(test.images[:12], test.labels[:12])
    expected = evaluate(_model(trained_run), first, CPU, tta=TrainSettings().tta).accuracy
    assert (top1 == first.labels).mean() == pytest.approx(expected)

    table = cli("predict", files[0], "-k", "2", "--checkpoint", trained_run / "best.safetensors", "--no-tta")
    assert table.exit_code == 0 and str(files[0]) in table.stdout and len(re.findall(r"\d%", table.stdout)) == 2
    assert_clean_error(cli("predict", tmp_path / "nope.png", "--checkpoint", trained_run / "best.safetensors"),
                       "image not found")


def test_without_a_packaged_checkpoint_eval_and_predict_say_so(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpoint_module, "PACKAGED_CHECKPOINT", tmp_path / "gone.safetensors")
    assert_clean_error(cli("eval"), "packaged one is missing")
    assert_clean_error(cli("predict", tmp_path / "x.png"), "packaged one is missing")


def test_eval_judges_the_training_images_when_asked(trained_run: Path, tiny_data: Path) -> None:
    # How closely a network fits the images it learned from, beside the test figure, tells a student
    # whether it lacks capacity or regularisation: the training images, as they are, not augmented.
    def report(*options: str) -> dict:
        result = cli("eval", trained_run / "last.safetensors", "--data-dir", tiny_data, "--device", "cpu",
                     "--json", *options)
        assert result.exit_code == 0, result.stderr
        return json.loads(result.stdout)

    train, test = report("--images", "train", "--no-tta"), report()
    train_split = load_split(tiny_data, train=True)
    for figures, split in ((train, train_split), (test, load_split(tiny_data, train=False))):
        assert figures["images"] == len(split)
        assert np.array_equal(np.sum(figures["confusion"], axis=1), np.bincount(split.labels, minlength=10))
    assert (train["images_from"], test["images_from"], train["tta"], test["tta"]) == ("train", "test", False, True)
    network = model_from_checkpoint(load_checkpoint(trained_run / "last.safetensors"))
    assert train["accuracy"] == evaluate(network, train_split, CPU).accuracy
    text = cli("eval", trained_run / "last.safetensors", "--images", "train", "--data-dir", tiny_data)
    assert text.exit_code == 0 and "train images 300 + mirror images" in text.stdout
    assert cli("eval", "--images", "val", "--data-dir", tiny_data).exit_code == 2


def test_eval_judges_the_images_a_run_held_out_or_learned_from(trained_run: Path, tiny_data: Path,
                                                               tmp_path: Path) -> None:
    """A --val-split run's last.safetensors knows which images it held out: eval gives the run's own
    held-out figure again (with or without TTA, which the run's history cannot), and --images train
    means the images it learned from, not those it never saw."""
    assert cli("train", "--epochs", "2", "--val-split", "50", "--data-dir", tiny_data, "--out", tmp_path,
               "--seed", "1", *TRAIN_ARGS).exit_code == 0

    def report(checkpoint: Path, *options: str) -> dict:
        result = cli("eval", checkpoint, "--data-dir", tiny_data, "--device", "cpu", "--json", *options)
        assert result.exit_code == 0, result.stderr
        return json.loads(result.stdout)

    last = load_checkpoint(tmp_path / "last.safetensors")
    held = report(tmp_path / "last.safetensors", "--images", "held-out")
    assert (held["images"], held["images_from"]) == (50, "held-out")
    assert (held["accuracy"], held["loss"]) == pytest.approx((last.metrics["held_out_acc"],
                                                              last.metrics["held_out_loss"]))
    rest, held_split = hold_out(load_split(tiny_data, train=True), 50)
    network = model_from_checkpoint(last)
    plain = report(tmp_path / "last.safetensors", "--images", "held-out", "--no-tta")
    assert plain["accuracy"] == evaluate(network, held_split, CPU, tta=False).accuracy
    learned = report(tmp_path / "last.safetensors", "--images", "train")
    assert learned["images"] == 250 and learned["accuracy"] == evaluate(network, rest, CPU).accuracy

    # Files that cannot say which images were held out are refused, with the reason.
    for images in ("held-out", "train"):
        assert_clean_error(cli("eval", tmp_path / "best.safetensors", "--images", images, "--data-dir", tiny_data),
                           "last.safetensors")
    assert_clean_error(cli("eval", trained_run / "last.safetensors", "--images", "held-out", "--data-dir",
                           tiny_data), "--val-split")


def test_plot_draws_the_curves_of_a_run(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "curves.png"
    result = cli("plot", trained_run, "--out", out, "--title", "tiny run")
    assert result.exit_code == 0, result.stderr
    with Image.open(out) as picture:
        assert picture.format == "PNG" and picture.size[0] > 2 * picture.size[1] > 600
    shutil.copy(trained_run / "history.json", tmp_path / "history.json")
    report = json.loads(cli("plot", tmp_path / "history.json", "--json").stdout)
    history = json.loads((tmp_path / "history.json").read_text())
    assert report["out"] == str(tmp_path / "curves.png") and (tmp_path / "curves.png").is_file()
    assert (report["epochs"], report["final_test_acc"]) == (len(history), history[-1]["test_acc"])
    (tmp_path / "broken.json").write_text('{"epoch": 1}')
    assert_clean_error(cli("plot", tmp_path / "broken.json"), "not a cifar train history.json")
    assert_clean_error(cli("plot", tmp_path / "missing"), "history not found")


def test_plot_of_a_one_epoch_run_shows_its_points(tmp_path: Path) -> None:
    """A line needs two epochs: a run stopped after one must still show where it got to."""
    write_history(tmp_path / "history.json", [EpochRecord(epoch=1, train_loss=1.86, train_acc=0.352, test_loss=1.40,
                                                          test_acc=0.504, lr=0.05, seconds=66.0, images=50000)])
    assert cli("plot", tmp_path / "history.json").exit_code == 0
    with Image.open(tmp_path / "curves.png") as picture:
        pixels = np.asarray(picture.convert("RGB")).astype(int)
    train_blue = np.abs(pixels - (31, 119, 180)).sum(axis=-1) < 60  # matplotlib's tab:blue, the train series
    columns = np.nonzero(train_blue.any(axis=0))[0]
    panel = pixels.shape[1] // 3  # loss, accuracy, learning rate
    for start in (0, panel):  # the loss panel, the accuracy panel: the point sits mid-panel, the legend at a side
        assert any(start + panel / 3 < x < start + 2 * panel / 3 for x in columns)


def test_the_packaged_checkpoint_is_the_result_the_readme_states(tiny_data: Path) -> None:
    ckpt = load_checkpoint(PACKAGED_CHECKPOINT)
    assert PACKAGED_CHECKPOINT.stat().st_size < 1_000_000
    assert ckpt.epoch == 40 and ckpt.train_state is None and not ckpt.optimizer_tensors and not ckpt.raw_state
    assert ckpt.model.name == DEFAULT_MODEL  # `cifar eval` with no path shows what the default network reaches
    assert all(rule.passed for rule in check_rules(model_from_checkpoint(ckpt)))
    assert ckpt.metrics["test_acc"] >= 0.928 and ckpt.metrics["test_acc_no_tta"] >= 0.918
    readme = README.read_text()
    assert all(f"{100 * ckpt.metrics[key]:.2f}%" in readme for key in ("test_acc", "test_acc_no_tta"))

    result = cli("eval", "--data-dir", tiny_data, "--device", "cpu", "--json")  # no path: the packaged one
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["checkpoint"] == str(PACKAGED_CHECKPOINT)


@pytest.mark.skipif(REAL_DATA is None, reason=NO_REAL_DATA)
def test_the_packaged_checkpoint_scores_what_it_claims_on_the_official_test_set() -> None:
    ckpt = load_checkpoint(PACKAGED_CHECKPOINT)
    result = cli("eval", "--data-dir", REAL_DATA, "--device", "cpu", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["images"] == ckpt.metrics["test_images"] == 10_000 and report["tta"]
    assert report["accuracy"] == ckpt.metrics["test_acc"]
    result = cli("eval", "--no-tta", "--data-dir", REAL_DATA, "--device", "cpu", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["accuracy"] == ckpt.metrics["test_acc_no_tta"]
