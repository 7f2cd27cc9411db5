"""Small things a student meets: counts in words, class names in any case, a non-square picture, an
undefined precision, one unreadable picture among several, and errors in one style."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from conftest import assert_clean_error, cli
from PIL import Image
from rich.console import Console
from torch import nn

from cifar_cli.records import EvalResult
from cifar_cli.report import per_class_table
from cifar_cli.rules import check_rules
from cifar_cli.terminal import counted


def test_counts_agree_with_their_nouns() -> None:
    assert [counted(n, "image") for n in (0, 1, 2, 1000)] == ["0 images", "1 image", "2 images", "1,000 images"]
    assert counted(1, "process", "processes") == "1 process" and counted(3, "process", "processes") == "3 processes"
    network = nn.Sequential(nn.Conv2d(3, 8, 3, padding=2, dilation=2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                            nn.Linear(8, 10))
    dilated = next(r for r in check_rules(network) if "dilat" in r.name.lower())
    assert "1 dilated convolution " in dilated.figure + " " and "convolutions" not in dilated.figure


def test_a_class_never_predicted_has_no_precision() -> None:
    result = EvalResult(loss=1.0, accuracy=0.5, confusion=[[1, 0], [1, 0]], classes=("cat", "dog"))
    assert [row["precision"] for row in result.per_class] == [0.5, None]
    shown = Console(width=120, file=io.StringIO(), record=True)
    shown.print(per_class_table(result))
    dog = next(line for line in shown.export_text().splitlines() if "dog" in line)
    assert dog.rstrip(" │").endswith("—"), dog


@pytest.fixture
def pictures(tmp_path: Path) -> list[Path]:
    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "a.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but not a picture")
    Image.new("RGB", (64, 32), (30, 30, 200)).save(tmp_path / "wide.png")
    return [tmp_path / "a.png", tmp_path / "broken.png", tmp_path / "wide.png"]


def test_predict_predicts_the_good_pictures_and_names_the_bad_one(pictures: list[Path]) -> None:
    result = cli("predict", *pictures, "--device", "cpu", "--json")
    assert result.exit_code == 1, (result.stdout, result.stderr, result.exception)
    report = json.loads(result.stdout)
    assert [p["image"] for p in report["predictions"]] == [str(pictures[0]), str(pictures[2])]
    assert [u["image"] for u in report["unreadable"]] == [str(pictures[1])]
    said = " ".join(result.stderr.split())
    assert f"error: cannot read image {pictures[1]}" in said
    assert "wide.png is 64x32, not square: squashed to 32x32" in said


def test_a_class_is_named_in_any_case(tiny_data: Path, tmp_path: Path) -> None:
    result = cli("mistakes", "--class", "Cat", "--data-dir", tiny_data, "--device", "cpu", "--out",
                 tmp_path / "m.png", "--json")
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    assert all(m["true"] == "cat" for m in json.loads(result.stdout)["shown"])
    assert_clean_error(cli("mistakes", "--class", "Kat", "--data-dir", tiny_data), "--class Kat: choose one of")


@pytest.mark.parametrize("args", [["eval", "--batch-size", "0"], ["eval", "--no-such-option"], ["predict"],
                                  ["eval", "missing.safetensors"]])
def test_usage_errors_and_our_errors_look_alike(args: list[str]) -> None:
    result = cli(*args)
    assert_clean_error(result)
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not set("╭│╰") & set(result.stderr)
