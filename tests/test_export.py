"""`cifar export`: the ONNX file computes what `cifar predict` does, in onnxruntime, for any batch size, and
says in its metadata what a consumer needs; a state_dict reloads to the same network; a file that fails its
check is never left behind."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import COUNTED, SMALL_NET, TRAIN_ARGS, assert_clean_error, cli, write_network
from PIL import Image

from cifar_cli import __version__
from cifar_cli.checkpoint import load_checkpoint
from cifar_cli.data import CLASSES, load_split
from cifar_cli.pictures import example_pictures

ROOT = Path(__file__).resolve().parents[1]
NO_ORT = "onnxruntime is in the [export] extra: pip install -e '.[export]'"

# A Python number the forward pass counts its calls with: the exporter records the value it saw while
# tracing as a constant, so the file and the network give different logits on the next call.
COUNTING_NET = """
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc, self.calls = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 10), 0

    def forward(self, x):
        self.calls += 1
        return self.fc(F.relu(self.conv(x)).mean((2, 3))) + self.calls
"""

# A forward pass that branches on its own values: torch.export cannot trace it.
BRANCHING_NET = """
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 10)

    def forward(self, x):
        out = self.fc(F.relu(self.conv(x)).mean((2, 3)))
        if out.sum() > 0:
            return out
        return -out
"""


def _ok(result) -> dict:
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return json.loads(result.stdout) if result.stdout.lstrip().startswith("{") else {}


def _error_lines(result) -> int:
    """How many lines of stderr say the error: one, the last (notes on which file and images come first)."""
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: "), result.stderr
    return sum(line.startswith("error") for line in lines) + sum(line.startswith(" ") for line in lines)


def _session(path: Path):
    ort = pytest.importorskip("onnxruntime", reason=NO_ORT)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _as_input(pixels: np.ndarray) -> np.ndarray:
    """uint8 N x 32 x 32 x 3 as the ONNX model takes it: float32 N x 3 x 32 x 32, RGB in 0..1."""
    return (pixels.astype(np.float32) / 255).transpose(0, 3, 1, 2).copy()


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.fixture(scope="module")
def tiny_onnx(trained_run: Path, tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The tiny-fixture run exported to ONNX, its run folder as the argument (its best.safetensors)."""
    pytest.importorskip("onnxruntime", reason=NO_ORT)
    out = tmp_path_factory.mktemp("export") / "tiny.onnx"
    result = cli("export", trained_run, "--out", out, "--data-dir", tiny_data, "--json")
    return out, _ok(result)


@pytest.fixture(scope="module")
def small_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A run of the smallest user network (conftest.SMALL_NET), and the --model that names it."""
    folder = tmp_path_factory.mktemp("small")
    network = write_network(folder / "small.py", SMALL_NET)
    _ok(cli("train", "--epochs", "1", "--model", network, "--data-dir", tiny_data, "--out", folder / "run",
            *TRAIN_ARGS))
    return folder / "run", network


@pytest.fixture
def png_files(tiny_data: Path, tmp_path: Path) -> tuple[list[Path], np.ndarray]:
    """Twelve test images of the tiny fixture as PNG files, and their pixels."""
    pixels = load_split(tiny_data, train=False).images[:12]
    paths = [tmp_path / f"image{i}.png" for i in range(len(pixels))]
    for path, image in zip(paths, pixels):
        Image.fromarray(image).save(path)
    return paths, pixels


def test_the_onnx_file_gives_the_classes_and_probabilities_cifar_predict_gives(
        tiny_onnx: tuple[Path, dict], trained_run: Path, png_files: tuple[list[Path], np.ndarray]) -> None:
    path, report = tiny_onnx
    assert report["format"] == "onnx" and report["bytes"] == path.stat().st_size
    assert report["images_from"] == "test" and report["images_checked"] == 100  # the tiny test set, all of it
    assert report["agreeing"] == 100 and report["max_abs_logit_difference"] < report["limit"] == 1e-4
    assert report["checkpoint"].endswith("best.safetensors") and report["tta"] is True
    paths, _ = png_files
    read_back = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    probabilities = _softmax(_session(path).run(["logits"], {"images": _as_input(read_back)})[0])
    predicted = _ok(cli("predict", *paths, "-c", trained_run, "--top", "10", "--device", "cpu", "--json"))
    for row, prediction in zip(probabilities, predicted["predictions"]):
        top = prediction["top"]
        assert CLASSES[int(row.argmax())] == top[0]["class"]
        for guess in top:
            assert row[CLASSES.index(guess["class"])] == pytest.approx(guess["probability"], abs=1e-5)


def test_the_metadata_holds_what_a_consumer_needs(tiny_onnx: tuple[Path, dict], trained_run: Path) -> None:
    path, _ = tiny_onnx
    metadata = _session(path).get_modelmeta().custom_metadata_map
    ckpt = load_checkpoint(trained_run / "best.safetensors")
    assert json.loads(metadata["classes"]) == list(ckpt.classes) == list(CLASSES)
    assert json.loads(metadata["mean"]) == list(ckpt.mean) and json.loads(metadata["std"]) == list(ckpt.std)
    assert "inside" in metadata["normalization"] and "0..1" in metadata["input"]
    assert metadata["tta"].startswith("flip") and metadata["checkpoint"] == "best.safetensors"
    assert metadata["network"] == ckpt.model.describe() and metadata["cifar_cli_version"] == __version__
    assert "dynamo=True" in metadata["exporter"]


def test_the_batch_dimension_is_dynamic(tiny_onnx: tuple[Path, dict], tiny_data: Path) -> None:
    path, report = tiny_onnx
    assert 1 in report["batch_sizes"] and len(set(report["batch_sizes"])) > 1
    session = _session(path)
    assert isinstance(session.get_inputs()[0].shape[0], str)  # a named dimension, not a number
    x = _as_input(load_split(tiny_data, train=False).images[:7])
    together = session.run(["logits"], {"images": x})[0]
    assert together.shape == (7, 10)
    for i in (0, 6):
        alone = session.run(["logits"], {"images": x[i:i + 1]})[0]
        np.testing.assert_allclose(alone[0], together[i], atol=1e-5)


def test_the_consumer_snippet_in_the_docs_runs(tiny_onnx: tuple[Path, dict], trained_run: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    docs = (ROOT / "docs" / "export.md").read_text()
    snippet = re.search(r"^## Running it without cifar-cli\n.*?^```python\n(.*?)^```", docs, re.S | re.M).group(1)
    assert len(snippet.strip().splitlines()) <= 12
    shutil.copy(tiny_onnx[0], tmp_path / "model.onnx")
    cat = shutil.copy(example_pictures()[CLASSES.index("cat")], tmp_path / "cat.png")
    monkeypatch.chdir(tmp_path)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(snippet, "docs/export.md", "exec"), {})  # noqa: S102 - our own docs' example
    name, probability = printed.getvalue().split()
    top = _ok(cli("predict", cat, "-c", trained_run, "--device", "cpu", "--json"))["predictions"][0]["top"][0]
    assert name == top["class"] and float(probability) == pytest.approx(top["probability"], abs=1e-4)


def test_a_users_network_exports_checked_on_the_example_pictures(small_run: tuple[Path, str],
                                                                  tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason=NO_ORT)
    run, network = small_run
    out = tmp_path / "small.onnx"
    result = cli("export", run, "--model", network, "--out", out, "--data-dir", tmp_path / "no-data", "--json")
    report = _ok(result)
    assert "10 example pictures" in result.stderr  # no test set there: the pictures shipped in the package
    assert report["images_from"] == "examples" and report["agreeing"] == report["images_checked"] == 10
    assert _session(out).get_modelmeta().custom_metadata_map["network"] == f"{network} (Net)"


def test_a_state_dict_loads_back_into_the_network_and_converts_back(small_run: tuple[Path, str], tiny_data: Path,
                                                                    tmp_path: Path) -> None:
    run, network = small_run
    out = tmp_path / "small.pt"
    report = _ok(cli("export", run, "--model", network, "--format", "state_dict", "--out", out,
                     "--data-dir", tiny_data, "--json"))
    assert report["format"] == "state_dict" and report["max_abs_logit_difference"] == 0
    assert report["agreeing"] == report["images_checked"] == 100 and report["limit"] == 0
    state = torch.load(out, weights_only=True)
    weights = load_checkpoint(run / "best.safetensors", network).model_state
    assert state.keys() == weights.keys() and all(torch.equal(state[k], weights[k]) for k in state)
    _ok(cli("convert", out, tmp_path / "back.safetensors", "--model", network))


def test_an_existing_file_is_not_replaced_without_overwrite(small_run: tuple[Path, str], tmp_path: Path) -> None:
    run, network = small_run
    out = tmp_path / "small.pt"
    out.write_text("precious")
    result = cli("export", run, "--model", network, "--format", "state_dict", "--out", out)
    assert_clean_error(result, "exists; pass --overwrite")
    assert out.read_text() == "precious"
    assert_clean_error(cli("export", run, "--model", network, "--out", tmp_path / "small.txt"), "must end in .onnx")
    result = cli("export", run, "--model", network, "--format", "state_dict", "--out", out, "--overwrite",
                 "--data-dir", tmp_path)
    _ok(result)
    assert "Wrote" in result.stdout and "same class for 10 of 10" in result.stdout
    weights = load_checkpoint(run / "best.safetensors", network).model_state
    assert torch.load(out, weights_only=True).keys() == weights.keys()


def test_a_file_that_computes_something_else_fails_and_is_not_written(small_run: tuple[Path, str],
                                                                      tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason=NO_ORT)
    run, _ = small_run
    counting = write_network(tmp_path / "counting.py", COUNTING_NET)
    out = tmp_path / "out" / "counting.onnx"
    out.parent.mkdir()
    result = cli("export", run, "--model", counting, "--out", out, "--data-dir", tmp_path / "no-data")
    assert_clean_error(result, "does not compute what the network does", "checked in onnxruntime",
                       "limit 1e-04")
    assert _error_lines(result) == 1
    assert list(out.parent.iterdir()) == []  # no file, no temporary file


def test_a_network_the_exporter_cannot_trace_is_one_line(small_run: tuple[Path, str], tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason=NO_ORT)
    run, _ = small_run
    branching = write_network(tmp_path / "branching.py", BRANCHING_NET)
    out = tmp_path / "branching.onnx"
    result = cli("export", run, "--model", branching, "--out", out, "--data-dir", tmp_path / "no-data", "--json")
    line = (tmp_path / "branching.py").read_text().splitlines().index("        if out.sum() > 0:") + 1
    assert_clean_error(result, "cannot export", "to ONNX", "torch.export",
                       f"branching.py line {line}: if out.sum() > 0:")
    assert result.stdout == "" and _error_lines(result) == 1
    assert not out.exists()


def test_without_the_export_extra_onnx_is_one_line_and_state_dict_still_works(
        small_run: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("onnx", "onnxscript", "onnxruntime"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed: importing it fails
    run, network = small_run
    result = cli("export", run, "--model", network, "--out", tmp_path / "small.onnx")
    assert_clean_error(result, "cifar export needs", "onnxruntime", "pip install 'cifar-cli[export]'")
    assert not (tmp_path / "small.onnx").exists()
    _ok(cli("export", run, "--model", network, "--format", "state_dict", "--out", tmp_path / "small.pt",
            "--data-dir", tmp_path / "no-data"))
    assert (tmp_path / "small.pt").is_file()


def test_export_builds_a_users_network_once(small_run: tuple[Path, str], tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason=NO_ORT)
    run, _ = small_run
    network = write_network(tmp_path / "counted.py", COUNTED)
    calls = tmp_path / "counted.calls"
    for file_format, out in (("onnx", "counted.onnx"), ("state_dict", "counted.pt")):
        calls.unlink(missing_ok=True)
        _ok(cli("export", run, "--model", network, "--format", file_format, "--out", tmp_path / out,
                "--data-dir", tmp_path / "no-data"))
        assert calls.read_text().splitlines() == ["built"], file_format
