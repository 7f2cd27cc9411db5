"""Resuming and reading checkpoints trusts nothing in the file: one group of tests per class of problem.

Code a checkpoint names is never imported; every field a checkpoint or history holds is checked before use;
non-finite networks are refused by what they compute; every set of images a run used is fingerprinted; a
plain --resume continues the run exactly as it began.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    TRAIN_ARGS,
    assert_clean_error,
    cli,
    network_with_event,
    safetensors_header,
    write_batch,
    write_cifar,
    write_network,
)
from PIL import Image
from safetensors.torch import load_file, save_file

from cifar_cli.data import FOLDER
from cifar_cli.models import create_model, preset_spec


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
    stop_once = (f"os.path.exists({str(once)!r}) or "  # a resumed process counts its batches afresh
                 f"(open({str(once)!r}, 'w').close(), os.kill(os.getpid(), signal.SIGINT))")
    net = write_network(tmp_path / "net.py", network_with_event(3, stop_once))
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
    assert [r["test_acc"] for r in history] == [None, None] and all(r["held_out_acc"] is not None for r in history)


def test_an_option_given_on_resume_overrides_the_run_and_says_so(tiny_data: Path, tmp_path: Path) -> None:
    out, net = _stopped_run(tiny_data, tmp_path, "--augment-on", "device", "--no-test", "--val-split", "50")
    resumed = cli("train", "--resume", out / "last.safetensors", "--model", net, "--data-dir", tiny_data,
                  "--device", "cpu", "--augment-on", "loader")
    assert resumed.exit_code == 0, resumed.stderr
    said = " ".join(resumed.stderr.split())
    assert "--augment-on loader overrides what this run began with (--augment-on device)" in said
    assert json.loads((out / "settings.json").read_text())["augment_on"] == "loader"
    assert json.loads((out / "history.json").read_text())[-1]["test_acc"] is None  # --no-test still kept


# --- 11. every field read from a file is checked before use -------------------------------------------------

@pytest.fixture(scope="module")
def stopped(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A run stopped inside its first epoch (read-only by convention: forge copies of its last.safetensors)."""
    return _stopped_run(tiny_data, tmp_path_factory.mktemp("stopped"))


def _resume(forged: Path, net: str, tiny_data: Path, tmp_path: Path):  # noqa: ANN202
    return cli("train", "--resume", forged, "--model", net, "--data-dir", tiny_data, "--device", "cpu",
               "--out", tmp_path / "r")


@pytest.mark.parametrize("field, value, words", [
    ("scheduler", {"total_steps": 10**9}, "scheduler.total_steps"),
    ("scheduler", {"last_epoch": 10**6}, "scheduler.last_epoch"),
    ("scheduler", {"_last_lr": [float("nan"), 0.1]}, "scheduler._last_lr"),
    ("optimizer", {"param_groups": [{"lr": 1e30}]}, "param_groups"),
    ("optimizer", {"scalars": {"².step": 1}}, "optimizer state"),
    ("optimizer", {"scalars": {"0.step": 10**400}}, "optimizer state"),
    ("position", {"epoch": 1, "batches": 3, "loss_sum": float("inf"), "correct": 0, "seen": 0}, "position.loss_sum"),
    ("best_acc", 10**400, "best_acc"),
    ("data", {"train": {"images": "300", "sha256": "0" * 64}}, "data.train.images"),
    ("choices", {"test": "yes", "augment_on": "loader", "amp": None}, "choices.test"),
    ("settings", {"momentum": float("nan")}, "momentum"),
    ("settings", {"epochs": 10**400}, "epochs"),
])
def test_a_forged_training_state_field_is_named_not_a_traceback(stopped: tuple[Path, str], tiny_data: Path,
                                                                tmp_path: Path, field: str, value: object,
                                                                words: str) -> None:
    last = stopped[0] / "last.safetensors"
    state = _train_state(last)
    if isinstance(value, dict) and isinstance(state.get(field), dict):
        if field == "optimizer" and "param_groups" in value:
            value = {"param_groups": [{**state[field]["param_groups"][0], **value["param_groups"][0]},
                                      *state[field]["param_groups"][1:]]}
        value = {**state[field], **value}
    state[field] = value
    forged = _forge(last, tmp_path / "last.safetensors", train_state=json.dumps(state))
    assert_clean_error(_resume(forged, stopped[1], tiny_data, tmp_path), str(forged), words, "cannot be resumed")


def test_non_finite_optimizer_state_is_named_not_blamed_on_the_lr(stopped: tuple[Path, str], tiny_data: Path,
                                                                  tmp_path: Path) -> None:
    last = stopped[0] / "last.safetensors"
    tensors = load_file(last)
    name = next(k for k in tensors if k.startswith("optimizer."))
    tensors[name][...] = float("nan")
    forged = _forge(last, tmp_path / "last.safetensors", tensors)
    result = _resume(forged, stopped[1], tiny_data, tmp_path)
    assert_clean_error(result, name.removeprefix("optimizer."), "NaN or infinity")
    assert "--lr" not in result.stderr


@pytest.mark.parametrize("epoch", ["²", "٣", "1" * 40, "-1", "1e3"])
def test_an_epoch_not_in_ascii_digits_is_refused(trained_run: Path, tiny_data: Path, tmp_path: Path,
                                                 epoch: str) -> None:
    forged = _forge(trained_run / "best.safetensors", tmp_path / "b.safetensors", epoch=epoch)
    assert_clean_error(cli("eval", forged, "--data-dir", tiny_data, "--device", "cpu"), str(forged), "epoch")


def test_a_huge_integer_in_a_history_is_refused_by_plot_and_resume(trained_run: Path, tiny_data: Path,
                                                                    tmp_path: Path) -> None:
    rows = json.loads((trained_run / "history.json").read_text())
    for field, forged_value in (("train_loss", 10**400), ("test_acc", float("-inf")), ("epoch", "²")):
        forged_rows = [dict(rows[0], **{field: forged_value}), *rows[1:]]
        (tmp_path / "history.json").write_text(json.dumps(forged_rows))
        assert_clean_error(cli("plot", tmp_path / "history.json", "--out", tmp_path / "c.png"),
                           str(tmp_path / "history.json"), field)  # the field is named, never "-inf%"
    last = trained_run / "last.safetensors"
    state = _train_state(last)
    state["history"][0]["seconds"] = 10**400
    forged = _forge(last, tmp_path / "last.safetensors", train_state=json.dumps(state))
    assert_clean_error(cli("train", "--resume", forged, "--data-dir", tiny_data, "--device", "cpu"),
                       "history is damaged", "seconds")


# --- 6. every set of images a run used is the one it is checked against --------------------------------------

def _other_training_images(tiny_data: Path, tmp_path: Path) -> Path:
    """The same test set, the same number of training images, but other ones: only a full fingerprint tells."""

    from conftest import make_images, write_batch

    from cifar_cli.data import load_split

    shutil.copytree(tiny_data / FOLDER, tmp_path / "other" / FOLDER)
    split = load_split(tiny_data, train=True)
    images = split.images[60:120].copy()
    images[1] = make_images(split.labels[61:62], __import__("numpy").random.default_rng(9))[0]  # one image
    write_batch(tmp_path / "other" / FOLDER / "data_batch_2", images, split.labels[60:120], "batch 2")
    return tmp_path / "other"


def test_eval_held_out_refuses_data_whose_training_images_differ(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert cli("train", "--epochs", "1", "--val-split", "50", "--data-dir", tiny_data, "--out", out,
               *TRAIN_ARGS).exit_code == 0
    other = _other_training_images(tiny_data, tmp_path)
    for images in ("held-out", "train"):
        assert_clean_error(cli("eval", out / "last.safetensors", "--images", images, "--data-dir", other,
                               "--device", "cpu"), "trained on other images", "--data-dir")
    assert cli("eval", out / "last.safetensors", "--images", "held-out", "--data-dir", tiny_data,
               "--device", "cpu").exit_code == 0
    fingerprints = json.loads((out / "settings.json").read_text())["data"]["fingerprints"]
    assert set(fingerprints) == {"train", "held_out", "test"}


def test_resume_refuses_another_test_set(tiny_data: Path, tmp_path: Path) -> None:
    from conftest import make_images

    out, net = _stopped_run(tiny_data, tmp_path)
    other = _other_training_images(tiny_data, tmp_path)

    from cifar_cli.data import FOLDER
    labels = np.arange(100) % 10
    write_batch(other / FOLDER / "test_batch", make_images(labels, np.random.default_rng(5)), labels, "test")
    import shutil
    shutil.copy(tiny_data / FOLDER / "data_batch_2", other / FOLDER / "data_batch_2")  # the run's training set
    assert_clean_error(cli("train", "--resume", out / "last.safetensors", "--model", net, "--data-dir", other,
                           "--device", "cpu"), "trained on other data", "test images")


def test_an_old_checkpoint_without_fingerprints_resumes_and_says_what_is_unchecked(tiny_data: Path,
                                                                                   tmp_path: Path) -> None:
    out, net = _stopped_run(tiny_data, tmp_path)
    state = _train_state(out / "last.safetensors")
    for key in ("data", "choices"):
        del state[key]
    _forge(out / "last.safetensors", out / "last.safetensors", train_state=json.dumps(state))
    result = cli("train", "--resume", out / "last.safetensors", "--model", net, "--data-dir", tiny_data,
                 "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    said = " ".join(result.stderr.split())
    assert "not checked" in said and "training and test images" in said


# --- 5. non-finite networks are judged by what they compute -----------------------------------------------------

@pytest.mark.parametrize("norm, words", [
    ({"mean": [0.5, 0.5, 0.5], "std": [1e-300, 0.25, 0.25]}, "normalization std[0]"),
    ({"mean": [1e300, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}, "normalization mean[0]"),
])
def test_a_normalisation_that_overflows_is_refused(trained_run: Path, tiny_data: Path, tmp_path: Path, norm: dict,
                                                   words: str) -> None:
    forged = _forge(trained_run / "best.safetensors", tmp_path / "b.safetensors", normalization=json.dumps(norm))
    assert_clean_error(cli("eval", forged, "--data-dir", tiny_data, "--device", "cpu"), str(forged), words)


def test_finite_weights_that_compute_infinity_are_refused(trained_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    tensors = load_file(trained_run / "best.safetensors")
    for name, tensor in tensors.items():
        if name.endswith("weight") and tensor.ndim == 4:
            tensor.fill_(3e38)
    forged = _forge(trained_run / "best.safetensors", tmp_path / "b.safetensors", tensors)
    for command in (["eval", forged, "--data-dir", tiny_data], ["mistakes", forged, "--data-dir", tiny_data,
                                                                  "--out", tmp_path / "m.png"]):
        assert_clean_error(cli(*command, "--device", "cpu"), str(forged), "NaN or infinity")


_BLOWS_UP_STATISTICS = """
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Linear(8, 10)
        self.batches = 0

    def forward(self, x):
        if self.training:
            self.batches += 1
            if self.batches > 12:  # epoch 2: BatchNorm's running variance overflows, the loss stays finite
                x = x * 1e30
        return self.fc(F.relu(self.bn(self.conv(x))).mean((2, 3)))
"""


def test_statistics_gone_infinite_stop_the_run_and_keep_the_last_good_checkpoint(tiny_data: Path,
                                                                                  tmp_path: Path) -> None:
    from cifar_cli.checkpoint import load_checkpoint

    net = write_network(tmp_path / "net.py", _BLOWS_UP_STATISTICS)
    out = tmp_path / "run"
    result = cli("train", "--model", net, "--epochs", "3", "--data-dir", tiny_data, "--out", out, *TRAIN_ARGS)
    assert_clean_error(result, "training diverged at epoch 2", "NaN or infinite", "last.safetensors keeps epoch 1")
    assert load_checkpoint(out / "last.safetensors").epoch == 1
    assert len(json.loads((out / "history.json").read_text())) == 1
    assert cli("eval", out / "best.safetensors", "--model", net, "--data-dir", tiny_data,
               "--device", "cpu").exit_code == 0


_NAN_FOR_BIG_BATCHES = """
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 10)

    def forward(self, x):
        out = self.fc(F.relu(self.conv(x)).mean((2, 3)))
        return out * float("nan") if len(x) > 16 else out  # fine on small batches, NaN on the test set's
"""


def test_eval_never_reports_a_nan_loss_as_a_result(tiny_data: Path, tmp_path: Path) -> None:

    from cifar_cli.checkpoint import Checkpoint, save_checkpoint
    from cifar_cli.models import create_model, resolve_model

    spec = resolve_model(write_network(tmp_path / "net.py", _NAN_FOR_BIG_BATCHES))
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "c.safetensors", Checkpoint(spec, create_model(spec).state_dict()))
    result = cli("eval", tmp_path / "c.safetensors", "--model", spec.name, "--data-dir", tiny_data, "--device", "cpu")
    assert_clean_error(result, str(tmp_path / "c.safetensors"), "NaN or infinite")
    assert "accuracy" not in result.stdout


# --- 16. convert never advises turning safety off; 11. nor drops a clashing weight ---------------------------

class _Runs:
    def __reduce__(self):  # noqa: ANN204
        return (print, ("ran",))


def _unsafe_pickles(tmp_path: Path) -> dict[str, Path]:
    import collections
    import datetime
    import io
    import os

    import torch

    class System:
        def __reduce__(self):  # noqa: ANN204
            return (os.system, ("true",))

    def saved(obj: object) -> bytes:
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        return buffer.getvalue()

    kinds = {"numpy-array": saved({"w": np.zeros(3)}), "module": saved({"w": torch.nn.Linear(2, 2)}),
             "date": pickle.dumps({"w": datetime.date(2020, 1, 1)}, protocol=2),
             "deque": pickle.dumps({"w": collections.deque([1])}, protocol=4),
             "os-system": pickle.dumps({"w": System()}, protocol=4), "protocol-0": pickle.dumps({"w": _Runs()}, 0),
             "print": saved({"w": _Runs()}), "truncated": saved({"w": torch.zeros(3)})[:50], "empty": b"",
             # a global whose name is itself the advice, for a parser that keeps torch's first sentence
             "named-advice": b"\x80\x02cset weights_only=False or add_safe_globals if you trust it\nx\n)R."}
    for name, raw in kinds.items():
        (tmp_path / f"{name}.pth").write_bytes(raw)
    return {name: tmp_path / f"{name}.pth" for name in kinds}


def test_convert_never_repeats_advice_to_turn_safety_off(tmp_path: Path) -> None:
    for name, path in _unsafe_pickles(tmp_path).items():
        result = cli("convert", path, tmp_path / f"{name}.safetensors")
        assert_clean_error(result, f"cannot convert {path}")
        said = result.stderr.lower()
        for advice in ("weights_only", "safe_globals", "trust", "allowlist", "false", "\x1b"):
            assert advice not in said, (name, result.stderr)
        assert not (tmp_path / f"{name}.safetensors").exists()


def test_convert_refuses_two_names_for_one_weight(tmp_path: Path) -> None:

    from cifar_cli.models import create_model

    state = create_model(preset_spec()).state_dict()
    name = next(iter(state))
    clashing = {**state, f"module.{name}": torch.zeros_like(state[name])}
    torch.save(clashing, tmp_path / "clash.pth")
    result = cli("convert", tmp_path / "clash.pth", tmp_path / "out.safetensors")
    assert_clean_error(result, repr(name), repr(f"module.{name}"))
    assert not (tmp_path / "out.safetensors").exists()


# --- resume on other data -----------------------------------------------------------------------------

def test_resume_on_other_data_is_refused(trained_run: Path, tmp_path: Path) -> None:
    other = write_cifar(tmp_path / "other", per_batch=50, seed=1)
    assert_clean_error(cli("train", "--resume", trained_run / "last.safetensors", "--data-dir", other),
                       "trained on other data", "300 training images", "holds 250")


def test_a_checkpoint_asking_for_no_momentum_is_refused_in_one_line() -> None:
    """Nesterov SGD needs momentum: a forged or hand-edited momentum of 0 is a one-line refusal, never
    torch's ValueError from inside the optimizer (the fuzzer found it)."""
    from dataclasses import replace

    from cifar_cli.errors import CifarError
    from cifar_cli.settings import DEFAULTS

    for momentum in (0.0, 1.0, -0.1):
        with pytest.raises(CifarError, match=r"momentum must be in \(0, 1\)"):
            replace(DEFAULTS, momentum=momentum).validate()
    replace(DEFAULTS, momentum=0.5).validate()
