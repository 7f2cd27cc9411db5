"""A user's network is checked for what each command needs before it runs, and whatever its code does
(even ending the program) is reported as the network's fault: one line, exit 2, never silence."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from conftest import TRAIN_ARGS, cli, history_without_times, write_network

from cifar_cli.models import create_model, resolve_model
from cifar_cli.models.spec import check_trainable
from cifar_cli.settings import TrainSettings
from cifar_cli.training.loop import train

# A small network that keeps the contract; ACTION runs where WHERE says ("real" batches: more than 3 images,
# which the checks up front never use, so the action happens inside evaluation or a training step).
TEMPLATE = """
import sys

{at_import}

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        {at_init}
        self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 10)

    def forward(self, x):
        {at_forward}
        out = self.fc(F.relu(self.conv(x)).mean((2, 3)))
        if x.shape[0] > 3 and out.requires_grad:
            out.register_hook(self.hook)
        return out

    def hook(self, grad):
        {at_backward}
        return grad

    def init_from_images(self, images):
        {at_init_from_images}
"""
PLACES = ("import", "init", "forward", "real forward", "backward", "init_from_images")


def network(action: str, where: str) -> str:
    spots = {f"at_{p.replace(' ', '_')}": "pass" for p in PLACES}
    spots["at_forward"] = "pass"
    if where == "real forward":
        spots["at_forward"] = f"if x.shape[0] > 3:\n            {action}"
    else:
        spots[f"at_{where}"] = action
    return TEMPLATE.format(**spots)


def _checkpoint(tmp_path: Path) -> Path:
    """A checkpoint of the template network (converted from a state_dict: no training needed)."""
    good = write_network(tmp_path / "good.py", network("pass", "forward"))
    state = tmp_path / "state.pt"
    torch.save(create_model(resolve_model(good)).state_dict(), state)
    result = cli("convert", state, tmp_path / "net.safetensors", "--model", good)
    assert result.exit_code == 0, result.stderr
    return tmp_path / "net.safetensors"


def _run(command: str, spec: str, tiny_data: Path, tmp_path: Path) -> object:
    if command == "summary":
        return cli("summary", "--model", spec, "--json")
    if command == "train":
        return cli("train", "--model", spec, "--epochs", "1", "--data-dir", tiny_data, "--out", tmp_path / "run",
                   *TRAIN_ARGS, "--json")
    if command == "lr-find":
        return cli("lr-find", "--model", spec, "--steps", "5", "--batch-size", "32", "--data-dir", tiny_data,
                   "--device", "cpu", "--out", tmp_path / "lr.png", "--json")
    return cli("eval", _checkpoint(tmp_path), "--model", spec, "--data-dir", tiny_data, "--device", "cpu", "--json")


def _assert_blamed(result: object, spec: str, *words: str) -> None:
    """Exit 2; stdout empty (it is --json); on stderr exactly one error line, naming the file and the deed."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr, result.exception)
    assert result.exception is None and "Traceback" not in result.stdout + result.stderr
    assert result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for word in (spec, *words):
        assert word in errors[0], (word, errors[0])


DEEDS = {"sys.exit(0)": "sys.exit(0)", "sys.exit(3)": "sys.exit(3)", "raise KeyboardInterrupt": "KeyboardInterrupt",
         "raise SystemExit": "sys.exit()"}


@pytest.mark.parametrize("action", list(DEEDS))
@pytest.mark.parametrize("command", ["summary", "train"])
def test_a_network_that_ends_the_program_is_an_error_naming_it(action: str, command: str, tiny_data: Path,
                                                               tmp_path: Path) -> None:
    spec = write_network(tmp_path / "quits.py", network(action, "forward"))
    _assert_blamed(_run(command, spec, tiny_data, tmp_path), spec, DEEDS[action], "forward")


@pytest.mark.parametrize("where, command, action", [
    ("import", "summary", "sys.exit(0)"),
    ("init", "summary", "raise KeyboardInterrupt"),
    ("init", "train", "sys.exit(3)"),
    ("real forward", "train", "raise KeyboardInterrupt"),
    ("real forward", "lr-find", "sys.exit(0)"),
    ("real forward", "eval", "raise SystemExit"),
    ("init_from_images", "train", "raise KeyboardInterrupt"),
    ("init_from_images", "lr-find", "sys.exit(3)"),
    ("backward", "train", "sys.exit(0)"),
    ("backward", "lr-find", "raise KeyboardInterrupt"),
])
def test_wherever_the_networks_code_runs_it_cannot_end_the_command_silently(where: str, command: str, action: str,
                                                                            tiny_data: Path, tmp_path: Path) -> None:
    spec = write_network(tmp_path / "quits.py", network(action, where))
    _assert_blamed(_run(command, spec, tiny_data, tmp_path), spec.rsplit(":", 1)[0], DEEDS[action])


def test_a_real_ctrl_c_inside_the_network_is_still_an_interruption(tiny_data: Path, tmp_path: Path) -> None:
    """A Ctrl-C that happens to land while the network's forward runs is the user's, not the network's."""
    spec = write_network(tmp_path / "slow.py", network("os.kill(os.getpid(), signal.SIGINT)", "real forward")
                         .replace("import sys", "import os, signal, sys"))
    result = cli("eval", _checkpoint(tmp_path), "--model", spec, "--data-dir", tiny_data, "--device", "cpu")
    assert result.exit_code not in (0, 2), (result.exit_code, result.stderr)
    assert "error:" not in result.stderr


def test_a_second_real_ctrl_c_in_training_still_quits_at_once(tiny_data: Path, tmp_path: Path) -> None:
    twice = "os.kill(os.getpid(), signal.SIGINT); os.kill(os.getpid(), signal.SIGINT)"
    spec = write_network(tmp_path / "twice.py", network(twice, "real forward").replace("import sys",
                                                                                       "import os, signal, sys"))
    result = cli("train", "--model", spec, "--epochs", "1", "--data-dir", tiny_data, "--out", tmp_path / "run",
                 *TRAIN_ARGS)
    assert result.exit_code == 128 + signal.SIGINT, (result.exit_code, result.stderr)
    assert "Interrupted; no checkpoint was written" in result.stderr and "error:" not in result.stderr


# --- what training needs, checked before the run starts ------------------------------------------------------

LINEAR = """
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 10)
        {init}

    def forward(self, x):
        h = F.relu(self.conv(x)).mean((2, 3))
        {forward}
        return self.fc(h)
"""


def unfit(init: str = "pass", forward: str = "pass") -> str:
    return LINEAR.format(init=init, forward=forward)


UNFIT = {
    "fails in training mode": (unfit(forward="if self.training: raise RuntimeError('train mode broke')"),
                               ["in training mode", "RuntimeError: train mode broke"]),
    "assumes a batch of 2": (unfit(forward="if self.training: h = h.view(2, -1)"),
                             ["in training mode, its forward pass on a batch of 3 raised RuntimeError",
                              "does forward assume a batch size?"]),
    "gives logits for a fixed batch": (
        unfit(forward="return self.fc(h)[:2] if self.training else self.fc(h)"),
        ["in training mode", "gave (2, 10); expected (3, 10)", "x.flatten(1)"]),
    "detaches its output": (unfit(forward="return self.fc(h).detach()"), ["no gradient reaches its parameters"]),
    "runs under no_grad": (unfit(forward="with torch.no_grad(): return self.fc(h)"),
                           ["no gradient reaches its parameters"]),
    "is frozen": (unfit(init="self.requires_grad_(False)"), ["no gradient reaches its parameters", "requires_grad"]),
    "gives a non-finite loss": (unfit(forward="if self.training: return self.fc(h) / 0.0"), ["non-finite loss"]),
    "fails to init from images": (unfit() + "\n    def init_from_images(self, images):\n"
                                  "        raise ValueError('no whitening today')\n",
                                  ["init_from_images raised ValueError: no whitening today"]),
}


@pytest.mark.parametrize("command", ["train", "lr-find"])
@pytest.mark.parametrize("case", list(UNFIT))
def test_a_network_unfit_to_train_is_refused_before_the_run(case: str, command: str, tiny_data: Path,
                                                            tmp_path: Path) -> None:
    body, words = UNFIT[case]
    spec = write_network(tmp_path / "unfit.py", body)
    result = _run(command, spec, tiny_data, tmp_path)
    _assert_blamed(result, spec, *words)
    assert not (tmp_path / "run").exists() and not (tmp_path / "lr.png").exists()


BATCHNORM1D = unfit(init="self.bn = nn.BatchNorm1d(10)", forward="return self.bn(self.fc(h))")


def test_a_last_batch_of_one_is_refused_with_a_batch_size_that_works(tiny_data: Path, tmp_path: Path) -> None:
    spec = write_network(tmp_path / "bn.py", BATCHNORM1D)
    # 300 training images in batches of 299 end each epoch with a batch of 1, which BatchNorm1d cannot train on
    args = ("--model", spec, "--epochs", "1", "--data-dir", tiny_data, "--device", "cpu", "--lr", "0.05", "--json")
    refused = cli("train", *args, "--batch-size", "299", "--out", tmp_path / "one")
    _assert_blamed(refused, spec, "batch of 1", "--batch-size 299", "choose another --batch-size, e.g. 300")
    assert cli("train", *args, "--batch-size", "300", "--out", tmp_path / "ok").exit_code == 0
    preset = cli("train", "--model", "s9-reference", *args[2:], "--batch-size", "299", "--out", tmp_path / "s9")
    _assert_blamed(preset, "s9-reference", "batch of 1")


DROPOUT_BN = """
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.drop, self.fc, self.calls = nn.Dropout(0.3), nn.Linear(8, 10), 0

    def forward(self, x):
        self.calls += 1
        return self.fc(self.drop(F.relu(self.bn(self.conv(x))).mean((2, 3))))
"""


def test_the_check_leaves_the_network_and_the_random_streams_as_they_were(tmp_path: Path) -> None:
    model = create_model(resolve_model(write_network(tmp_path / "net.py", DROPOUT_BN))).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls, rng = model.calls, torch.get_rng_state()
    check_trainable("net.py:Net", model, torch.device("cpu"), images=301, batch_size=100)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.calls == calls and not model.training
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


def test_same_seed_runs_are_identical_to_runs_without_the_check(splits: tuple, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    spec = resolve_model(write_network(tmp_path / "net.py", DROPOUT_BN))
    settings = TrainSettings(epochs=2, batch_size=32, lr=0.05, seed=3)
    train(settings, *splits, tmp_path / "checked", torch.device("cpu"), model_spec=spec)
    monkeypatch.setattr("cifar_cli.training.trainer.check_trainable", lambda *args: None)
    train(settings, *splits, tmp_path / "unchecked", torch.device("cpu"), model_spec=spec)
    assert history_without_times(tmp_path / "checked") == history_without_times(tmp_path / "unchecked")
    assert json.loads((tmp_path / "checked" / "history.json").read_text())[-1]["train_loss"] > 0
    assert os.path.getsize(tmp_path / "checked" / "last.safetensors") > 0
