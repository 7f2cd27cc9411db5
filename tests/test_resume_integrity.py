"""Resuming and reading checkpoints trusts nothing in the file: one group of tests per class of problem.

Code a checkpoint names is never imported; every field a checkpoint or history holds is checked before use;
non-finite networks are refused by what they compute; every set of images a run used is fingerprinted; a
plain --resume continues the run exactly as it began.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TRAIN_ARGS, assert_clean_error, cli, safetensors_header, write_network
from safetensors.torch import load_file, save_file


def _forge(source: Path, target: Path, tensors: dict | None = None, **metadata: str) -> Path:
    meta = safetensors_header(source.read_bytes())[0]["__metadata__"]
    save_file(tensors if tensors is not None else load_file(source), target, metadata={**meta, **metadata})
    return target


def _train_state(path: Path) -> dict:
    return json.loads(safetensors_header(path.read_bytes())[0]["__metadata__"]["train_state"])


# --- 1. a checkpoint never makes cifar-cli import code ----------------------------------------------------------

@pytest.fixture
def planted(trained_run: Path, tmp_path: Path) -> tuple[Path, Path, str]:
    """A resumable checkpoint (one epoch left to train) naming a planted network whose import writes a marker."""
    marker = tmp_path / "imported"
    evil = write_network(tmp_path / "evil.py", f"open({str(marker)!r}, 'w').close()\n\n"
                         "class Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                         "        self.fc = nn.Linear(3, 10)\n\n    def forward(self, x):\n"
                         "        return self.fc(x.mean((2, 3)))\n")
    last = trained_run / "last.safetensors"
    state = _train_state(last)
    state["settings"]["epochs"] = 7  # a run with an epoch still to go, so resuming gets as far as the network
    forged = _forge(last, tmp_path / "last.safetensors", train_state=json.dumps(state),
                    model=json.dumps({"name": evil, "class": "Net", "source_sha256": ""}))
    return forged, marker, evil


@pytest.mark.parametrize("command", [
    ["train", "--resume", "{ckpt}", "--out", "{tmp}/resumed"],
    ["eval", "{ckpt}"],
    ["predict", "{image}", "--checkpoint", "{ckpt}"],
    ["mistakes", "{ckpt}", "--out", "{tmp}/m.png"],
    ["gradcam", "{image}", "--checkpoint", "{ckpt}", "--out", "{tmp}/g.png"],
])
def test_no_command_imports_the_network_a_checkpoint_names(planted: tuple[Path, Path, str], tiny_data: Path,
                                                           tmp_path: Path, command: list[str]) -> None:
    from PIL import Image

    forged, marker, evil = planted
    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "red.png")
    args = [a.format(ckpt=forged, tmp=tmp_path, image=tmp_path / "red.png") for a in command]
    result = cli(*args, "--data-dir", tiny_data, "--device", "cpu") if command[0] != "predict" else \
        cli(*args, "--device", "cpu")
    assert_clean_error(result, "never imports code", f"--model {evil}")
    assert not marker.exists()


def test_a_spec_read_from_a_file_cannot_build_a_user_network(planted: tuple[Path, Path, str]) -> None:
    from cifar_cli.checkpoint import load_checkpoint
    from cifar_cli.errors import CifarError
    from cifar_cli.models import create_model

    forged, marker, evil = planted
    with pytest.raises(CifarError, match="pass it yourself"):
        create_model(load_checkpoint(forged).model)
    assert not marker.exists()


def test_the_network_the_user_names_resumes_the_run(planted: tuple[Path, Path, str], tiny_data: Path,
                                                   tmp_path: Path) -> None:
    """The rule refuses only the file's say-so: the user's --model is imported (and checked against the weights)."""
    forged, marker, evil = planted
    result = cli("train", "--resume", forged, "--model", evil, "--data-dir", tiny_data, "--device", "cpu",
                 "--out", tmp_path / "resumed")
    assert marker.exists()  # imported because the user typed it
    assert_clean_error(result, "does not match")  # the planted network is not the one the weights are of


# --- 7. a plain --resume continues the run as it began ----------------------------------------------------------

def _stopped_run(tiny_data: Path, tmp_path: Path, *options: str) -> tuple[Path, str]:
    """A run of a user network that stops itself (SIGINT, once) at its 3rd training batch, inside epoch 1."""
    once = tmp_path / "signalled"
    net = write_network(tmp_path / "net.py", f"""
import os, signal

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc, self.batches = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 10), 0

    def forward(self, x):
        if self.training:
            self.batches += 1
            if self.batches == 3 and not os.path.exists({str(once)!r}):
                open({str(once)!r}, "w").close()
                os.kill(os.getpid(), signal.SIGINT)
        return self.fc(F.relu(self.conv(x)).mean((2, 3)))
""")
    out = tmp_path / "run"
    first = cli("train", "--model", net, "--epochs", "2", "--data-dir", tiny_data, "--out", out, *TRAIN_ARGS,
                *options)
    assert first.exit_code == 130, (first.stdout, first.stderr, first.exception)
    return out, net


def test_a_plain_resume_keeps_every_choice_the_run_began_with(tiny_data: Path, tmp_path: Path) -> None:
    out, net = _stopped_run(tiny_data, tmp_path, "--augment-on", "device", "--no-test", "--val-split", "50")
    began = json.loads((out / "settings.json").read_text())
    resumed = cli("train", "--resume", out / "last.safetensors", "--model", net, "--data-dir", tiny_data,
                  "--device", "cpu")
    assert resumed.exit_code == 0, resumed.stderr
    assert "note:" not in resumed.stderr  # nothing overridden, nothing left unchecked
    after = json.loads((out / "settings.json").read_text())
    assert after["augment_on"] == began["augment_on"] == "device"
    assert after["data"]["test"] == 0 and after["settings"]["val_split"] == 50
    history = json.loads((out / "history.json").read_text())
    assert [r["test_acc"] for r in history] == [None, None] and all(r["val_acc"] is not None for r in history)


def test_an_option_given_on_resume_overrides_the_run_and_says_so(tiny_data: Path, tmp_path: Path) -> None:
    out, net = _stopped_run(tiny_data, tmp_path, "--augment-on", "device", "--no-test", "--val-split", "50")
    resumed = cli("train", "--resume", out / "last.safetensors", "--model", net, "--data-dir", tiny_data,
                  "--device", "cpu", "--augment-on", "loader")
    assert resumed.exit_code == 0, resumed.stderr
    said = " ".join(resumed.stderr.split())
    assert "--augment-on loader overrides what this run began with (--augment-on device)" in said
    assert json.loads((out / "settings.json").read_text())["augment_on"] == "loader"
    assert json.loads((out / "history.json").read_text())[-1]["test_acc"] is None  # --no-test still kept
