"""Nothing a user types, names or feeds in loses a run, lies, or prints a traceback: one test per class.

The classes follow the hardening issue: runs never written over; resume on other data refused; pictures
as people see them; names printed literally; defaults shown; parser-accepted values handled; checkpoint
contents validated; convert's corner cases; dataset folders; malformed histories; stale temp files.
"""

from __future__ import annotations

import itertools
import json
import pickle
import shutil
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TRAIN_ARGS, assert_clean_error, cli, safetensors_header, write_batch, write_cifar
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import load_file, save_file

from cifar_cli.data import FOLDER
from cifar_cli.models import create_model, preset_spec
from cifar_cli.pictures import load_image
from cifar_cli.settings import DEFAULTS
from cifar_cli.training.trainer import warmup_fraction

QUICK = ("--epochs", "1", *TRAIN_ARGS)


# --- 1. a run is never written over -------------------------------------------------------------------

def test_a_new_run_never_replaces_an_old_one(trained_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(trained_run, out)
    before = (out / "last.safetensors").read_bytes()
    assert_clean_error(cli("train", "--data-dir", tiny_data, "--out", out, *QUICK),
                       "already holds a run", f"--resume {out / 'last.safetensors'}", "--overwrite")
    assert (out / "last.safetensors").read_bytes() == before

    replaced = cli("train", "--data-dir", tiny_data, "--out", out, "--overwrite", *QUICK)
    assert replaced.exit_code == 0, replaced.stderr
    assert len(json.loads((out / "history.json").read_text())) == 1


def test_a_finished_run_has_nothing_to_resume_and_claims_no_files(trained_run: Path, tiny_data: Path,
                                                                  tmp_path: Path) -> None:
    result = cli("train", "--resume", trained_run / "last.safetensors", "--data-dir", tiny_data,
                 "--out", tmp_path / "b")
    assert_clean_error(result, "already finished its 6 epochs")
    assert "Checkpoints" not in result.stdout and not (tmp_path / "b").exists()


def test_stale_temp_files_of_ours_are_cleaned_at_the_next_start(tiny_data: Path, tmp_path: Path) -> None:
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / ".last.safetensors.k2j3h4.tmp").write_bytes(b"half a checkpoint, from a kill -9")
    (tmp_path / ".notes.tmp").write_text("not ours")
    assert cli("train", "--data-dir", tiny_data, "--out", tmp_path, *QUICK).exit_code == 0
    assert not (tmp_path / ".last.safetensors.k2j3h4.tmp").exists() and (tmp_path / ".notes.tmp").exists()


# --- 3. resume on other data -----------------------------------------------------------------------------

def test_resume_on_other_data_is_refused(trained_run: Path, tmp_path: Path) -> None:
    other = write_cifar(tmp_path / "other", per_batch=50, seed=1)
    assert_clean_error(cli("train", "--resume", trained_run / "last.safetensors", "--data-dir", other),
                       "trained on other data", "300 training images", "holds 250")


# --- 4. pictures as the user sees them --------------------------------------------------------------------

def test_phone_photos_are_turned_upright_by_their_exif_orientation(tmp_path: Path) -> None:
    pixels = np.zeros((32, 64, 3), np.uint8)
    pixels[:, :32] = (255, 0, 0)  # stored: red left, blue right
    pixels[:, 32:] = (0, 0, 255)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view": the camera was held upright
    image.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    seen = load_image(tmp_path / "phone.jpg").astype(int)
    assert seen[4, 16, 0] > 200 and seen[28, 16, 2] > 200  # viewed: red on top, blue below


def test_16_bit_and_float_pictures_keep_their_real_range(tmp_path: Path) -> None:
    grey16 = np.full((40, 40), 30_000, np.uint16)  # 46% grey, not white
    Image.fromarray(grey16).save(tmp_path / "deep.png")
    assert abs(int(load_image(tmp_path / "deep.png").mean()) - 117) <= 1
    Image.fromarray(np.full((40, 40), 0.25, np.float32), mode="F").save(tmp_path / "float.tiff")
    assert abs(int(load_image(tmp_path / "float.tiff").mean()) - 64) <= 1


def test_decompression_bombs_and_special_files_are_refused(trained_run: Path, tmp_path: Path) -> None:
    Image.new("1", (10_000, 10_000)).save(tmp_path / "bomb.png")  # a few kB on disk, 100 megapixels
    for picture, words in [(tmp_path / "bomb.png", "decompression bomb"), (Path("/dev/zero"), "not a regular file")]:
        assert_clean_error(cli("predict", picture, "--checkpoint", trained_run / "best.safetensors"), words)
        assert_clean_error(cli("augment-preview", "--image", picture, "--out", tmp_path / "p.png"), words)


# --- 5, 6, 7. honest output -------------------------------------------------------------------------------

def test_paths_are_printed_literally_never_as_markup(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "exp[lr=0.1]"
    result = cli("train", "--data-dir", tiny_data, "--out", out, *QUICK)
    assert result.exit_code == 0, result.stderr
    assert str(out) in " ".join(result.stdout.split())
    assert_clean_error(cli("eval", tmp_path / "x[/]y[bold].safetensors"), f"{tmp_path / 'x[/]y[bold].safetensors'}")


def test_class_names_from_a_checkpoint_cannot_drive_the_terminal(trained_run: Path, tiny_data: Path,
                                                                 tmp_path: Path) -> None:
    meta = safetensors_header((trained_run / "best.safetensors").read_bytes())[0]["__metadata__"]
    classes = ["\x1b[2Jwiped", "[red]markup[/red]", *json.loads(meta["classes"])[2:]]
    forged = tmp_path / "forged.safetensors"
    save_file(load_file(trained_run / "best.safetensors"), forged, metadata={**meta, "classes": json.dumps(classes)})
    result = cli("eval", forged, "--data-dir", tiny_data, "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    assert "\x1b" not in result.stdout and "\\x1b[2Jwiped" in result.stdout and "[red]markup[/red]" in result.stdout


def test_help_shows_every_default_from_the_settings() -> None:
    text = " ".join(cli("train", "--help").stdout.replace("│", " ").split())
    for option, name in [("Epochs to train.", "epochs"), ("one-cycle schedule.", "lr"), ("e.g. 0.999 (0: off).", "ema"),
                         ("evaluated and saved.", "lookahead"),
                         ("BatchNorm or biases).", "weight_decay"), ("training loss (0: off).", "label_smoothing"),
                         ("trained with 0.3).", "affine_p"), ("with the mean).", "cutout_p"),
                         ("network: 0.2).", "tone_p"), ("stays); 0: off.", "aug_fade"),
                         ("the augmentation (0: off).", "mixup")]:
        assert f"{option} [default: ({getattr(DEFAULTS, name)})]" in text


def test_an_error_under_json_is_one_line_on_stderr_and_nothing_on_stdout(tiny_data: Path) -> None:
    result = cli("eval", "missing.safetensors", "--json", "--data-dir", tiny_data)
    assert_clean_error(result, "checkpoint not found")
    assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1


# --- 8. every value the parser accepts is handled ---------------------------------------------------------

def test_schedules_of_any_length_train(tiny_data: Path, tmp_path: Path) -> None:
    assert [warmup_fraction(n) * n for n in (3, 4, 8, 40)] == [0.75, 2.0, 2.0, 10.0]
    for epochs in ("1", "4", "5"):  # one optimizer step per epoch: 1, 4 and 5 steps in all
        result = cli("train", "--epochs", epochs, "--batch-size", "300", "--data-dir", tiny_data, "--out",
                     tmp_path / epochs, "--device", "cpu")
        assert result.exit_code == 0, result.stderr


def test_options_at_and_past_their_limits(trained_run: Path, tiny_data: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    assert_clean_error(cli("train", "--seed", str(2**64), "--data-dir", tiny_data), "--seed must be between 0")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cli("train", "--data-dir", tiny_data, "--out", "~/home-run", *QUICK).exit_code == 0
    assert (tmp_path / "home-run" / "last.safetensors").is_file()
    assert_clean_error(cli("train", "--data-dir", tiny_data, "--out", "/dev/null", *QUICK), "/dev/null")
    assert_clean_error(cli("eval", "/dev/zero", "--data-dir", tiny_data), "not a regular file")
    assert_clean_error(cli("augment-preview", "--data-dir", tiny_data, "--out", tmp_path / "grid.jpg"),
                       "must end in .png")
    assert_clean_error(cli("plot", trained_run, "--out", tmp_path / "curves.svg"), "must end in .png")


_RUNS = itertools.count()
_ACCEPTED = settings(max_examples=24, derandomize=True, deadline=timedelta(seconds=60), database=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
_floats = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, -0.0, 1e-300, 1e308, 0.999999])


@_ACCEPTED
@given(epochs=st.integers(-3, 2), batch=st.integers(-2, 400) | st.just(2**62), lr=_floats,
       seed=st.integers(-3, 2**70), val_split=st.integers(-3, 400), ema=_floats, decay=_floats, smoothing=_floats)
def test_no_value_the_parser_accepts_gives_a_traceback(tiny_data: Path, tmp_path: Path, epochs: int, batch: int,
                                                       lr: float, seed: int, val_split: int, ema: float, decay: float,
                                                       smoothing: float) -> None:
    out = tmp_path / f"fuzz-{next(_RUNS)}"  # a fresh folder each call: a run's files must not decide the next
    result = cli("train", "--epochs", epochs, "--batch-size", batch, "--lr", lr, "--seed", seed, "--val-split",
                 val_split, "--ema", ema, "--weight-decay", decay, "--label-smoothing", smoothing,
                 "--data-dir", tiny_data, "--out", out, "--device", "cpu")
    assert result.exception is None, repr(result.exception)
    assert result.exit_code in (0, 2) and "Traceback" not in result.stdout + result.stderr
    if result.exit_code == 2:
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


# --- 9. checkpoint contents are validated, not trusted ------------------------------------------------------

def _forge(source: Path, target: Path, tensors: dict | None = None, **metadata: str) -> Path:
    meta = safetensors_header(source.read_bytes())[0]["__metadata__"]
    save_file(tensors if tensors is not None else load_file(source), target, metadata={**meta, **metadata})
    return target


def test_checkpoint_contents_are_validated(trained_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    best = trained_run / "best.safetensors"
    norm = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.0, 0.25]}
    poisoned = load_file(best)
    poisoned["model.c1.0.0.weight"][0, 0, 0, 0] = float("nan")
    classes = json.dumps([f"class {i}" for i in range(12)])
    cases = [({"normalization": json.dumps(norm)}, None, "divide by zero"),
             ({"normalization": json.dumps({"mean": [0.5, "nan", 0.5], "std": [1, 1, 1]})}, None, "finite"),
             ({"epoch": "true"}, None, "not a whole number"),
             ({"model": json.dumps({"name": "cifarnet-ds", "config": {"num_classes": True}})}, None,
              "another architecture"),
             ({"model": json.dumps({"name": "cifarnet-ds", "config": {"num_classes": 12}}), "classes": classes},
              None, "CIFAR-10 has 10"),
             ({}, poisoned, "non-finite weights")]
    for i, (metadata, tensors, words) in enumerate(cases):
        forged = _forge(best, tmp_path / f"case{i}.safetensors", tensors, **metadata)
        assert_clean_error(cli("eval", forged, "--data-dir", tiny_data, "--device", "cpu"), words)


@pytest.mark.parametrize("damage", [{"best_epoch": "3"}, {"best_epoch": 99}, {"position": {
    "epoch": 7, "batches": -1, "loss_sum": 0.0, "correct": 0, "seen": 0}}, {"scheduler": [1, 2]},
    {"history": [], "best_epoch": 0, "position": {"epoch": 1, "batches": 10**9, "loss_sum": 0.0, "correct": 0,
                                                  "seen": 0}}])
def test_a_training_state_with_wrong_types_or_impossible_values_is_refused(trained_run: Path, tiny_data: Path,
                                                                          tmp_path: Path, damage: dict) -> None:
    last = trained_run / "last.safetensors"
    state = json.loads(safetensors_header(last.read_bytes())[0]["__metadata__"]["train_state"])
    forged = _forge(last, tmp_path / "last.safetensors", train_state=json.dumps({**state, **damage}))
    assert_clean_error(cli("train", "--resume", forged, "--data-dir", tiny_data), "cannot be resumed")


def test_a_safetensors_file_is_known_by_its_content_whatever_its_name(trained_run: Path, tiny_data: Path,
                                                                      tmp_path: Path) -> None:
    renamed = tmp_path / "weights.pth"
    shutil.copy(trained_run / "best.safetensors", renamed)
    assert cli("eval", renamed, "--data-dir", tiny_data, "--device", "cpu").exit_code == 0


# --- 10. convert ---------------------------------------------------------------------------------------------

def test_convert_handles_tied_weights_nested_wrappers_and_its_own_input(tiny_data: Path, tmp_path: Path) -> None:
    model = create_model(preset_spec()).eval()
    tied = {f"module._orig_mod.{k}": v for k, v in model.state_dict().items()}  # DDP around torch.compile
    tied["module._orig_mod.head.2.bias"] = tied["module._orig_mod.head.2.weight"][:, 0]  # one storage, two names
    torch.save(tied, tmp_path / "tied.pth")
    result = cli("convert", tmp_path / "tied.pth", tmp_path / "tied.safetensors")
    assert result.exit_code == 0, result.stderr
    assert cli("eval", tmp_path / "tied.safetensors", "--data-dir", tiny_data, "--device", "cpu").exit_code == 0

    assert_clean_error(cli("convert", tmp_path / "tied.pth", tmp_path / "tied.pth"), "must end in .safetensors")
    shutil.copy(tmp_path / "tied.pth", tmp_path / "same.safetensors")
    assert_clean_error(cli("convert", tmp_path / "same.safetensors", tmp_path / "same.safetensors"), "onto itself")
    assert_clean_error(cli("convert", tmp_path / "tied.pth", tmp_path / "tied.safetensors"), "exists", "--overwrite")


def test_convert_states_the_global_torch_refused(tmp_path: Path) -> None:
    class Planted:
        def __reduce__(self):  # noqa: ANN204
            return (print, ("ran",))

    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"w": Planted()}, protocol=2))
    result = cli("convert", tmp_path / "evil.pth", tmp_path / "out.safetensors")
    assert_clean_error(result, "GLOBAL print was not an allowed global")
    assert "weights_only" not in result.stderr and "trusted" not in result.stderr


# --- 11. dataset folders ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("labels, words", [
    ([[0, 1]], "flat list of whole numbers"), ([0.5, 1.5], "flat list of whole numbers")])
def test_labels_that_are_not_whole_numbers_are_named(tiny_data: Path, tmp_path: Path, labels: list,
                                                      words: str) -> None:
    shutil.copytree(tiny_data / FOLDER, tmp_path / FOLDER)
    images = np.zeros((2, 32, 32, 3), np.uint8)
    batch = {"labels": labels, "data": images.transpose(0, 3, 1, 2).reshape(2, 3072)}
    (tmp_path / FOLDER / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    assert_clean_error(cli("eval", "--data-dir", tmp_path, "--device", "cpu"), "test_batch", words)


def test_an_empty_test_set_is_an_error_not_zero_accuracy(tiny_data: Path, tmp_path: Path) -> None:
    shutil.copytree(tiny_data / FOLDER, tmp_path / FOLDER)
    write_batch(tmp_path / FOLDER / "test_batch", np.zeros((0, 32, 32, 3), np.uint8), np.zeros(0, int), "empty")
    assert_clean_error(cli("eval", "--data-dir", tmp_path, "--device", "cpu"), "holds no test images")
    assert_clean_error(cli("train", "--data-dir", tmp_path, "--out", tmp_path / "o", *QUICK), "holds no test images")


# --- 12. malformed histories ---------------------------------------------------------------------------------

@pytest.mark.parametrize("content", [
    '[{"epoch": 1, "train_loss": null, "train_acc": 0.5, "test_loss": 1, "test_acc": 0.5, "lr": 0.1, '
    '"seconds": 1, "images": 10}]',
    '[{"epoch": "1", "train_loss": 1, "train_acc": 0.5, "test_loss": 1, "test_acc": 0.5, "lr": 0.1, '
    '"seconds": 1, "images": 10}]',
    '[{"epoch": 1, "train_loss": 1, "train_acc": 0.5, "test_loss": null, "test_acc": null, "lr": 0.1, '
    '"seconds": 1, "images": 10}]',  # neither a test nor a held-out figure
    '[{"epoch": 1, "train_loss": 1, "train_acc": 0.5, "test_loss": 1, "test_acc": 0.5, "lr": 0.1, "seconds": 1, '
    '"images": 10}, {"epoch": 2, "train_loss": 1, "train_acc": 0.5, "test_loss": null, "test_acc": null, '
    '"lr": 0.1, "seconds": 1, "images": 10, "val_loss": 1, "val_acc": 0.5}]',  # nothing measured in every epoch
    "[" * 100_000 + "]" * 100_000, '"a string"', "[]", "[1, 2]", "{}"])
def test_plot_refuses_malformed_histories_in_one_line(tmp_path: Path, content: str) -> None:
    (tmp_path / "history.json").write_text(content)
    result = cli("plot", tmp_path / "history.json", "--out", tmp_path / "c.png")
    assert_clean_error(result, str(tmp_path / "history.json"))
    assert not (tmp_path / "c.png").exists()
