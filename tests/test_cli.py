"""The inspection commands and the entry points, as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_clean_error, cli, write_network
from PIL import Image

from cifar_cli import __version__
from cifar_cli.models import DEFAULT_MODEL, PRESETS
from cifar_cli.receptive_field import total_receptive_field
from cifar_cli.rules import count_parameters

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
