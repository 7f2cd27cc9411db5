"""What the network gets wrong, and why: the mistakes gallery, Grad-CAM, the learning-rate range test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TRAIN_ARGS, assert_clean_error, cli, write_network
from PIL import Image

from cifar_cli.checkpoint import load_checkpoint, model_from_checkpoint
from cifar_cli.data import CLASSES, load_split
from cifar_cli.explain import default_cam_layer, gradcam
from cifar_cli.models import resolve_model
from cifar_cli.training.evaluation import predict


@pytest.fixture(scope="module")
def weak_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-epoch network: right often enough to be a network, wrong often enough to have a gallery."""
    out = tmp_path_factory.mktemp("weak")
    result = cli("train", "--epochs", "1", "--data-dir", tiny_data, "--out", out, *TRAIN_ARGS)
    assert result.exit_code == 0, result.stderr
    return out


def test_mistakes_are_really_mistakes_most_confident_first(weak_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    ckpt = weak_run / "last.safetensors"
    result = cli("mistakes", ckpt, "--data-dir", tiny_data, "--device", "cpu", "-n", "1000", "--out",
                 tmp_path / "m.png", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    shown = report["shown"]
    test = load_split(tiny_data, train=False)
    probs = predict(model_from_checkpoint(load_checkpoint(ckpt)), test.images, torch.device("cpu"), tta=True)
    truly_wrong = int((probs.argmax(1).numpy() != test.labels).sum())
    assert 0 < len(shown) == report["mistakes"] == truly_wrong  # -n beyond the mistakes shows them all
    for m in shown:  # each one recomputed: misclassified, with the stated confidence
        assert CLASSES[test.labels[m["index"]]] == m["true"] != m["predicted"]
        assert CLASSES[int(probs[m["index"]].argmax())] == m["predicted"]
        assert m["probability"] == pytest.approx(float(probs[m["index"]].max()))
    assert [m["probability"] for m in shown] == sorted((m["probability"] for m in shown), reverse=True)
    assert sum(c["count"] for c in report["confusions"]) <= truly_wrong and report["confusions"]
    with Image.open(tmp_path / "m.png") as picture:
        assert picture.size[0] > 300

    one_class = cli("mistakes", ckpt, "--data-dir", tiny_data, "--device", "cpu", "--class", shown[0]["true"],
                    "--out", tmp_path / "c.png", "--json")
    assert {m["true"] for m in json.loads(one_class.stdout)["shown"]} == {shown[0]["true"]}
    table = cli("mistakes", ckpt, "--data-dir", tiny_data, "--device", "cpu", "--out", tmp_path / "t.png")
    assert "Most common confusions" in table.stdout and f"{truly_wrong} of 100" in table.stdout


# Only one quadrant of the picture reaches the layer Grad-CAM explains: its map must say so.
_ONE_QUADRANT = """
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.fc = nn.Linear(6, 10)
        mask = torch.zeros(1, 1, 32, 32)
        mask[..., ROWS, COLS] = 1
        self.register_buffer("mask", mask)

    def forward(self, x):
        return self.fc(F.relu(self.conv(x * self.mask)).mean((2, 3)))
"""


@pytest.mark.parametrize("rows, cols, where", [("0:16", "0:16", (slice(0, 16), slice(0, 16))),
                                                 ("16:32", "16:32", (slice(16, 32), slice(16, 32)))])
def test_gradcam_finds_the_only_region_that_can_matter(tmp_path: Path, rows: str, cols: str,
                                                       where: tuple[slice, slice]) -> None:
    source = _ONE_QUADRANT.replace("ROWS", rows).replace("COLS", cols)
    model = resolve_model(write_network(tmp_path / "quadrant.py", source))
    from cifar_cli.models import create_model

    torch.manual_seed(0)
    network = create_model(model)
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    assert default_cam_layer(network) == "conv"
    maps = gradcam(network, images, "conv", targets=[3] * 6, device=torch.device("cpu"))
    assert maps.shape == (6, 32, 32)
    total = maps.sum(axis=(1, 2))
    quadrant = maps[:, where[0], where[1]].sum(axis=(1, 2)) / total
    rows, cols = (slice(max(s.start - 1, 0), s.stop + 1) for s in where)  # + the 3x3 conv's one-pixel reach
    reach = maps[:, rows, cols].sum(axis=(1, 2)) / total
    assert (quadrant > 0.85).all() and (reach > 0.999).all(), (quadrant, reach)


def test_gradcam_sheet_from_mistakes_and_from_files(weak_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    ckpt = weak_run / "last.safetensors"
    result = cli("gradcam", "--checkpoint", ckpt, "--mistakes", "3", "--data-dir", tiny_data, "--device", "cpu",
                 "--out", tmp_path / "g.png", "--target", "true", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["layer"] == "c3.1.body.1.1" and report["layer_size"] == [8, 8]
    assert all(r["true"] == r["explained"] != r["predicted"] for r in report["images"])
    # the same mistakes, named as `cifar mistakes` names them (both predict as `cifar predict` does, with TTA)
    listed = json.loads(cli("mistakes", ckpt, "--data-dir", tiny_data, "--device", "cpu", "-n", "3", "--out",
                            tmp_path / "m.png", "--json").stdout)["shown"]
    assert [(m["true"], m["predicted"]) for m in listed] == [(r["true"], r["predicted"]) for r in report["images"]]
    assert [m["probability"] for m in listed] == pytest.approx([r["probability"] for r in report["images"]])
    picture = tmp_path / "cat.png"
    Image.fromarray(load_split(tiny_data, train=False).images[0]).resize((96, 96)).save(picture)
    small = cli("gradcam", picture, "--checkpoint", ckpt, "--layer", "c4.1.body.1.1", "--device", "cpu",
                "--out", tmp_path / "f.png")
    assert small.exit_code == 0, small.stderr
    assert "warning:" in small.stderr and "4x4" in small.stderr  # too coarse a map, and it says so
    assert (tmp_path / "f.png").stat().st_size > 1000


def test_lr_find_suggests_a_peak_inside_the_range_and_touches_no_run(trained_run: Path, tiny_data: Path,
                                                                      tmp_path: Path) -> None:
    before = {p.name: p.read_bytes() for p in trained_run.iterdir() if p.is_file()}
    result = cli("lr-find", "--data-dir", tiny_data, "--device", "cpu", "--steps", "40", "--batch-size", "32",
                 "--start", "1e-4", "--end", "100", "--out", tmp_path / "lr.png", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert len(report["lrs"]) <= 40 and report["lrs"] == sorted(report["lrs"])
    assert 1e-4 <= report["suggestion"] <= report["lowest_loss_lr"] <= 100
    if report["diverged_at"] is not None:
        assert report["suggestion"] < report["diverged_at"]
    assert {p.name: p.read_bytes() for p in trained_run.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lr.png"]


@pytest.mark.parametrize("args, words", [
    (["gradcam", "--mistakes", "2", "--layer", "c9"], ["--layer c9 is not a layer", "c3.1.body.1.1"]),
    (["gradcam", "--mistakes", "2", "--layer", "head.2"], ["no spatial output"]),
    (["gradcam", "--mistakes", "0"], ["--mistakes must be at least 1"]),
    (["gradcam"], ["picture files or --mistakes N"]),
    (["mistakes", "-n", "0"], ["-n must be at least 1"]),
    (["mistakes", "--class", "unicorn"], ["--class unicorn", "airplane"]),
    (["lr-find", "--start", "1", "--end", "0.1"], ["--start must be below --end"]),
    (["lr-find", "--steps", "1"], ["--steps must be between 2 and 100,000"]),
    (["lr-find", "--end", "inf"], ["--start must be below --end"]),
])
def test_bad_explain_input_is_a_one_line_error(tiny_data: Path, tmp_path: Path, args: list[str],
                                               words: list[str]) -> None:
    assert_clean_error(cli(*args, "--data-dir", tiny_data, "--device", "cpu", "--out", tmp_path / "x.png"), *words)


def test_gradcam_refuses_unreadable_pictures(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("not a picture")
    assert_clean_error(cli("gradcam", tmp_path / "notes.png", "--out", tmp_path / "g.png", "--device", "cpu"),
                       "cannot read image")
