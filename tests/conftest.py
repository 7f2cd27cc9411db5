"""Shared fixtures: a small CIFAR-10 in torchvision's exact on-disk format, and the CLI as a user runs it."""

from __future__ import annotations

import atexit
import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cifar_cli.cli import app
from cifar_cli.data import CLASSES, FOLDER, load_split

# The real CIFAR-10 (all of it), from $CIFAR_DATA_DIR, the variable users set for their data (.ci/run sets it
# where a copy is kept); None without it, and the tests that need it skip saying so. It is then removed from
# the environment: every other test says which data it uses, and the CLI's default must not find this copy.
_DATA_DIR = os.environ.pop("CIFAR_DATA_DIR", None)
REAL_DATA = Path(_DATA_DIR) if _DATA_DIR and (Path(_DATA_DIR) / FOLDER / "test_batch").is_file() else None
NO_REAL_DATA = "the full CIFAR-10 is not there: set CIFAR_DATA_DIR to the folder holding cifar-10-batches-py"
# The trust store of networks trained here (cifar_cli.trust) lives under $XDG_CONFIG_HOME: never the user's
# own. Fixtures shared by several tests record into this folder; each test reads its own, empty one.
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="cifar-tests-config-")
atexit.register(shutil.rmtree, os.environ["XDG_CONFIG_HOME"], True)


@pytest.fixture(autouse=True)
def own_trust_store(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty config folder for each test: what one test trains is not trusted in the next."""
    config = tmp_path_factory.mktemp("config")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    return config

# Each class gets its own colour and stripe direction, plus noise: learnable in a few epochs, like a
# memorisable subset of the real thing, yet every image is different.
_PALETTE = np.array([[230, 40, 40], [40, 200, 40], [40, 40, 230], [220, 220, 40], [220, 40, 220],
                     [40, 220, 220], [250, 140, 20], [120, 60, 20], [150, 150, 150], [20, 20, 20]], np.float32)


def make_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 N x 32 x 32 x 3 images whose content depends on the label."""
    yy, xx = np.mgrid[0:32, 0:32]
    images = []
    for label in labels:
        stripes = np.sin((xx * np.cos(label * 0.314) + yy * np.sin(label * 0.314)) * 0.8)[..., None]
        image = _PALETTE[label] * (0.75 + 0.25 * stripes) + rng.normal(0, 25, (32, 32, 3))
        images.append(np.clip(image, 0, 255).astype(np.uint8))
    return np.stack(images)


def write_batch(path: Path, images: np.ndarray, labels: np.ndarray, name: str) -> None:
    """One batch file exactly as the official archive has it: a protocol-2 pickle, channel-major rows."""
    batch = {
        "batch_label": name,
        "labels": [int(y) for y in labels],
        "data": images.transpose(0, 3, 1, 2).reshape(len(images), 3072),
        "filenames": [f"image_{i:05d}.png" for i in range(len(images))],
    }
    path.write_bytes(pickle.dumps(batch, protocol=2))


def write_cifar(root: Path, per_batch: int = 60, test: int = 100, seed: int = 0) -> Path:
    """Write root/cifar-10-batches-py with 5 training batches, a test batch and batches.meta."""
    rng = np.random.default_rng(seed)
    folder = root / FOLDER
    folder.mkdir(parents=True)
    for i in range(1, 6):
        labels = rng.permutation(np.arange(per_batch) % 10)
        write_batch(folder / f"data_batch_{i}", make_images(labels, rng), labels, f"training batch {i} of 5")
    labels = rng.permutation(np.arange(test) % 10)
    write_batch(folder / "test_batch", make_images(labels, rng), labels, "testing batch 1 of 1")
    meta = {"num_cases_per_batch": per_batch, "label_names": list(CLASSES), "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 training and 100 test images; pass as --data-dir. Read-only by convention: copy to modify."""
    return write_cifar(tmp_path_factory.mktemp("data"))


class Result:
    def __init__(self, exit_code: int, stdout: str, stderr: str, exception: BaseException | None):
        self.exit_code, self.stdout, self.stderr, self.exception = exit_code, stdout, stderr, exception


def cli(*args: str) -> Result:
    """Run `cifar ARGS...` in-process, through the same Typer app as the console script."""
    result = CliRunner().invoke(app, [str(a) for a in args], prog_name="cifar")
    exception = None if isinstance(result.exception, SystemExit) else result.exception
    return Result(result.exit_code, result.stdout, result.stderr, exception)


def assert_clean_error(result: Result, *fragments: str) -> None:
    """Exit code 2, a one-line message naming the problem on stderr, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr, result.exception)
    assert result.exception is None, repr(result.exception)
    assert "Traceback" not in result.stdout + result.stderr
    message = " ".join(result.stderr.split())
    for fragment in fragments:
        assert fragment in message, (fragment, result.stderr)


TRAIN_ARGS = ("--device", "cpu", "--batch-size", "32", "--lr", "0.05")
# The networks results/experiments.md measured, each usable as --model f"{CANDIDATES}:NAME".
CANDIDATES = Path(__file__).parent.parent / "experiments" / "candidates.py"


@pytest.fixture(scope="session")
def trained_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One short training run on the tiny data, shared by the tests that only read its outputs."""
    out = tmp_path_factory.mktemp("run")
    result = cli("train", "--epochs", "6", "--data-dir", tiny_data, "--out", out, "--seed", "1", *TRAIN_ARGS)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return out


def safetensors_header(raw: bytes) -> tuple[dict, bytes]:
    """A safetensors file's JSON header (tensor entries and __metadata__) and the tensor bytes after it."""
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def history_without_times(out: Path) -> list[dict]:
    """A run's history.json minus the wall-clock seconds: what must be equal between equal runs."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in json.loads((out / "history.json").read_text())]


class Exploit:
    """Unpickling this creates a file: the classic pickle code-execution trick, aimed at `target`."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):  # noqa: ANN204
        return (open, (str(self.target), "w"))


NETWORK_HEADER = "import torch\nfrom torch import nn\nimport torch.nn.functional as F\n\n"


# The smallest network a user might write: enough to train, judge and reload in a second.
SMALL_NET = """
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(F.relu(self.conv(x)).mean((2, 3)))
"""


# A user's network whose factory notes each call in a file beside it: the public seam a user has.
COUNTED = """
from pathlib import Path

class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(F.relu(self.conv(x)).mean((2, 3)))


def Net():
    with open(Path(__file__).with_suffix(".calls"), "a") as calls:
        calls.write("built\\n")
    return _Net()
"""


def write_network(path: Path, body: str) -> str:
    """Write a user's network file and return the --model spec that names it (`path:Net`)."""
    path.write_text(NETWORK_HEADER + body)
    return f"{path}:Net"


def network_with_event(batch: int, event: str) -> str:
    """The source of a small user network that, on its `batch`-th training batch, runs `event`: a line of
    Python that may replace `out` (the logits) or do something to its process. Faults enter the engine
    through the public seam a user has, their own network, not by patching our internals. The batches of 1
    to 3 images with which train checks a network before the run (on a copy) are not counted."""
    return f"""
import os, signal

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc, self.batches = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 10), 0

    def forward(self, x):
        out = self.fc(F.relu(self.conv(x)).mean((2, 3)))
        if self.training and len(x) > 3:
            self.batches += 1
            if self.batches == {batch}:
                {event}
        return out
"""


TURN_NON_FINITE = 'out = out * float("nan")'


@pytest.fixture(scope="module")
def splits(tiny_data: Path) -> tuple:
    return load_split(tiny_data, train=True), load_split(tiny_data, train=False)


class SignalAt:
    """A train observer that sends this process a signal while epoch `epoch` is at step `step` (mid-epoch)."""

    def __init__(self, signum: int, epoch: int, step: int):
        self.signum, self.at, self.epoch = signum, (epoch, step), 0

    def epoch_start(self, epoch: int, epochs: int, steps: int, done: int) -> None:
        self.epoch = epoch

    def step(self, step: int, loss: float, acc: float) -> None:
        if (self.epoch, step) == self.at:
            os.kill(os.getpid(), self.signum)

    def epoch_end(self, record: object) -> None: ...
