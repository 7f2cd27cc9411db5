"""The inspection commands and the entry points, as a user runs them."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from conftest import TRAIN_ARGS, assert_clean_error, cli, write_network
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cifar_cli import __version__
from cifar_cli.models import DEFAULT_MODEL, PRESETS
from cifar_cli.receptive_field import total_receptive_field
from cifar_cli.rules import count_parameters
from cifar_cli.training.trainer import warmup_fraction

CONSOLE_SCRIPT = Path(sys.executable).parent / "cifar"
DEFAULT = PRESETS[DEFAULT_MODEL]


def test_summary_shows_layers_and_passing_rules() -> None:
    result = cli("summary")
    assert result.exit_code == 0, result.stderr
    params = count_parameters(DEFAULT.create())
    assert f"Total params: {params:,}" in result.stdout
    assert "Conv2d" in result.stdout and f"[1, {DEFAULT.default_config.widths[-1]}, 4, 4]" in result.stdout
    for rule in ("no max-pooling", "depthwise-separable", "dilated", "receptive field > 44", "BatchNorm"):
        assert rule in result.stdout
    assert "All rules pass." in result.stdout and "FAIL" not in result.stdout


def test_summary_json() -> None:
    result = cli("summary", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["passed"] and data["parameters"] == count_parameters(DEFAULT.create()) < 200_000
    assert {r["name"] for r in data["rules"] if r["passed"]} == {r["name"] for r in data["rules"]}
    convs = [layer for layer in data["layers"] if layer["type"] == "Conv2d"]
    assert sum(layer["params"] for layer in data["layers"]) == data["parameters"]
    assert convs[0]["output_shape"] == [1, DEFAULT.default_config.widths[0], 32, 32] and convs[0]["kernel"] == [3, 3]


def test_summary_exits_non_zero_when_a_rule_fails(tmp_path: Path) -> None:
    spec = write_network(tmp_path / "pooled.py", """
from cifar_cli.models import CifarNet, NetConfig

def Net():
    model = CifarNet(NetConfig())
    model.c2[0] = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1))
    return model
""")
    result = cli("summary", "--model", spec)
    assert result.exit_code == 1 and result.exception is None
    assert "FAIL" in result.stdout and "c2.0.0" in result.stdout


def test_receptive_field_table_and_json() -> None:
    total = total_receptive_field(DEFAULT.create())
    result = cli("receptive-field")
    assert result.exit_code == 0
    assert f"Total receptive field: {total} pixels" in result.stdout
    data = json.loads(cli("receptive-field", "--json").stdout)
    assert data["total"] == total == data["layers"][-1]["rf"]
    first = data["layers"][0]
    assert (first["kernel"], first["stride"], first["dilation"], first["padding"], first["rf"]) == (3, 1, 1, 1, 3)
    assert any(layer["dilation"] == 2 for layer in data["layers"])


def test_augment_preview_writes_a_grid_from_the_dataset(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "preview.png"
    result = cli("augment-preview", "--data-dir", tiny_data, "--out", out, "-n", "3", "-k", "4", "--seed", "1")
    assert result.exit_code == 0, result.stderr
    assert str(out) in " ".join(result.stdout.split()) and "CoarseDropout" in result.stdout
    with Image.open(out) as image:
        width, height = image.size
    assert width > 5 * 32 * 4 and height > 3 * 32 * 4
    again = tmp_path / "again.png"
    cli("augment-preview", "--data-dir", tiny_data, "--out", again, "-n", "3", "-k", "4", "--seed", "1")
    assert out.read_bytes() == again.read_bytes()


def test_augment_preview_takes_any_picture(tmp_path: Path) -> None:
    picture = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 90, 3), dtype=np.uint8)).save(picture)
    result = cli("augment-preview", "--image", picture, "--out", tmp_path / "p.png", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["images"] == ["photo.jpg"]
    # It shows the pipeline a run with train's odds options would be fed.
    result = cli("augment-preview", "--image", picture, "--out", tmp_path / "p.png", "--json", "--affine-p", "0",
                 "--cutout-p", "0.25", "--tone-p", "1")
    assert result.exit_code == 0, result.stderr
    shown = [line.split(",")[0] for line in json.loads(result.stdout)["pipeline"]]
    assert shown[:4] == ["HorizontalFlip(p=0.5)", "Affine(p=0.0", "CoarseDropout(p=0.25",
                         "RandomBrightnessContrast(p=1.0"]
    assert_clean_error(cli("augment-preview", "--image", picture, "--out", tmp_path / "r.png", "--tone-p", "-1"),
                       "--tone-p")
    (tmp_path / "not-an-image.png").write_text("hello")
    assert_clean_error(cli("augment-preview", "--image", tmp_path / "not-an-image.png", "--out",
                           tmp_path / "q.png"), "cannot read image")


@pytest.mark.parametrize("command", [[str(CONSOLE_SCRIPT)], [sys.executable, "-m", "cifar_cli"]])
def test_entry_points(command: list[str]) -> None:
    version = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=120)
    assert version.returncode == 0 and version.stdout.strip() == f"cifar-cli {__version__}"
    usage = subprocess.run([*command, "eval", "missing.safetensors"], capture_output=True, text=True, timeout=120)
    assert usage.returncode == 2 and "Traceback" not in usage.stderr
    assert usage.stderr.strip() == "error: checkpoint not found: missing.safetensors"


QUICK = ("--epochs", "1", *TRAIN_ARGS)


# --- every value the parser accepts is handled ---------------------------------------------------------

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
