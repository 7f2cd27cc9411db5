"""The Python API (docs/api.md): what it returns agrees with the commands on the same checkpoint, its loaded
networks are plain modules, a network handed over trains in place, and bad input is a CifarError."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TRAIN_ARGS, cli, history_without_times, make_images, network_with_event, write_network
from PIL import Image
from safetensors.torch import load_file
from torch import nn

import cifar_cli
from cifar_cli import CifarError, build, evaluate, load, predict, train

ROOT = Path(__file__).resolve().parents[1]
SMALL = "s9-reference"  # the smallest preset (cifar models)
TINY = {"widths": (8, 16, 16, 16), "pairs": (0, 0, 0, 0)}  # cifarnet-ds's settings, for a quick run
QUICK = {"epochs": 2, "batch_size": 32, "lr": 0.05, "device": "cpu", "progress": False}


class Net(nn.Module):
    """A student's own small network, defined where they work (a notebook, this file)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def _picture(path: Path, label: int) -> Path:
    Image.fromarray(make_images(np.array([label]), np.random.default_rng(label))[0]).resize((48, 40)).save(path)
    return path


@pytest.fixture(scope="module")
def preset_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory):
    return train(build("cifarnet-ds", **TINY), data_dir=tiny_data, out=tmp_path_factory.mktemp("api") / "run",
                 **QUICK)


def test_import_cifar_cli_loads_no_torch_until_the_api_is_used() -> None:
    code = ("import sys, cifar_cli; print('torch' in sys.modules); cifar_cli.build; "
            "print('torch' in sys.modules)")
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert shown == ["False", "True"]


def test_train_then_evaluate_agrees_with_cifar_eval(preset_run, tiny_data: Path) -> None:
    assert [r.epoch for r in preset_run.history] == [1, 2]
    assert preset_run.accuracy == preset_run.history[-1].test_acc and preset_run.accuracy_on == "test"
    assert preset_run.last.is_file() and (preset_run.out_dir / "history.json").is_file()
    judged = evaluate(preset_run.last, data_dir=tiny_data, device="cpu")
    shown = cli("eval", preset_run.last, "--data-dir", tiny_data, "--device", "cpu", "--json")
    assert shown.exit_code == 0, shown.stderr
    command = json.loads(shown.stdout)
    assert (judged.accuracy, judged.loss, judged.images) == (command["accuracy"], command["loss"], command["images"])
    assert judged.confusion.tolist() == command["confusion"] and judged.per_class == command["per_class"]
    # the trained module holds last.safetensors's weights: judged as a module, the same figures
    assert evaluate(preset_run.model, data_dir=tiny_data, device="cpu").accuracy == judged.accuracy


def test_load_gives_a_plain_module_with_the_networks_own_keys(preset_run) -> None:
    net = load(preset_run.last)  # a preset built with settings is recorded as that preset: the file rebuilds it
    recorded = json.loads((preset_run.out_dir / "settings.json").read_text())["model"]
    assert recorded["name"] == "cifarnet-ds" and recorded["config"]["widths"] == [8, 16, 16, 16]
    assert not net.training and type(net) is type(build("cifarnet-ds"))
    assert list(net.state_dict()) == list(build("cifarnet-ds", **TINY).state_dict())
    for name, value in preset_run.model.state_dict().items():
        assert torch.equal(net.state_dict()[name], value.cpu()), name


def test_predict_agrees_with_cifar_predict(preset_run, tmp_path: Path) -> None:
    picture = _picture(tmp_path / "boat.png", 8)
    shown = cli("predict", picture, "-c", preset_run.last, "--device", "cpu", "--json")
    assert shown.exit_code == 0, shown.stderr
    command = json.loads(shown.stdout)["predictions"][0]["top"]
    for given in (picture, Image.open(picture), np.asarray(Image.open(picture).convert("RGB"))):
        guess, = predict(preset_run.last, [given], device="cpu")
        assert [c for c, _ in guess.top] == [t["class"] for t in command]
        assert [p for _, p in guess.top] == pytest.approx([t["probability"] for t in command], abs=1e-6)
    from_module, = predict(load(preset_run.last), picture, top=1, device="cpu")
    assert from_module.top[0][0] == command[0]["class"] and from_module.probabilities.shape == (10,)


def test_a_network_handed_over_trains_in_place_and_loads_only_into_the_users_network(
        tiny_data: Path, tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    net = Net()
    run = train(net, data_dir=tiny_data, out=tmp_path / "mine", **{**QUICK, "epochs": 1, "progress": True})
    assert run.model is net and type(net) is Net and not net.training  # the user's own module, trained in place
    assert "epoch 1/1" in capfd.readouterr().err  # progress: cifar train's epoch line
    with pytest.raises(CifarError, match="never imports code"):
        load(run.last)
    for given in (Net(), Net):
        loaded = load(run.last, model=given)
        assert type(loaded) is Net
        assert list(loaded.state_dict()) == list(Net().state_dict())
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in net.state_dict().items())
    assert evaluate(run.last, model=Net, data_dir=tiny_data, device="cpu").accuracy == pytest.approx(run.accuracy)


def test_a_network_file_trains_by_name_and_a_stop_says_what_was_saved(tiny_data: Path, tmp_path: Path) -> None:
    spec = write_network(tmp_path / "mynet.py", network_with_event(3, "os.kill(os.getpid(), signal.SIGINT)"))
    with pytest.raises(KeyboardInterrupt, match=re.escape(f"saved {tmp_path / 'run' / 'last.safetensors'}")):
        train(spec, data_dir=tiny_data, out=tmp_path / "run", **QUICK)
    assert load(tmp_path / "run" / "last.safetensors", model=spec).training is False


def test_a_network_file_trained_here_loads_from_its_run_folder_without_model(tiny_data: Path, tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture) -> None:
    spec = write_network(tmp_path / "mynet.py", SMALL_NET)
    run = train(spec, data_dir=tiny_data, out=tmp_path / "run", val_split=60, **QUICK)
    net = load(tmp_path / "run")  # the run folder's best.safetensors; the file is trusted: trained here, unchanged
    said = capsys.readouterr().err
    assert f"using {tmp_path / 'run' / 'best.safetensors'}" in said and "trained here" in said
    for name, value in load(run.best, model=spec).state_dict().items():
        assert torch.equal(net.state_dict()[name], value), name
    (tmp_path / "mynet.py").write_text((tmp_path / "mynet.py").read_text() + "\n# edited\n")
    with pytest.raises(CifarError, match="--model"):
        load(tmp_path / "run")


SMALL_NET = """
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(F.relu(self.bn(self.conv(x))).mean((2, 3)))
"""


def test_a_run_by_name_is_the_run_cifar_train_makes(tiny_data: Path, tmp_path: Path) -> None:
    spec = write_network(tmp_path / "mynet.py", SMALL_NET)
    shown = cli("train", "--model", spec, "--epochs", "2", "--seed", "4", "--data-dir", tiny_data,
                "--out", tmp_path / "command", *TRAIN_ARGS)
    assert shown.exit_code == 0, shown.stderr
    train(spec, seed=4, data_dir=tiny_data, out=tmp_path / "api", **QUICK)  # the same settings as TRAIN_ARGS
    assert history_without_times(tmp_path / "api") == history_without_times(tmp_path / "command")
    ours, theirs = (load_file(tmp_path / run / "last.safetensors") for run in ("api", "command"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.parametrize("given, words", [
    ({"learning_rate": 0.1}, "'learning_rate' is not a training setting"),
    ({"epochs": "2"}, "setting epochs must be an integer, not '2'"),
    ({"lr": -1.0}, "--lr must be a positive number"),
])
def test_bad_settings_are_refused_before_any_data_is_read(given: dict, words: str, tmp_path: Path) -> None:
    with pytest.raises(CifarError, match=re.escape(words)):
        train(SMALL, data_dir=tmp_path / "no data here", device="cpu", **given)


@pytest.mark.parametrize("model, words", [
    (nn.Conv2d(3, 10, 1), "expected (2, 10) logits"),
    ("no-such-net", "not a preset"),
    (42, "expected a preset name"),
])
def test_networks_that_are_not_cifar_networks_are_refused(model: object, words: str) -> None:
    with pytest.raises(CifarError, match=re.escape(words)):
        build(model)


def test_a_presets_settings_are_checked() -> None:
    with pytest.raises(CifarError, match="unknown model config fields: depth"):
        build(SMALL, depth=3)


def test_the_readme_example_runs(tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (ROOT / "README.md").read_text()
    example = re.search(r"^## Python API\n.*?^```python\n(.*?)^```", readme, re.S | re.M).group(1)
    assert len(example.strip().splitlines()) <= 12
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CIFAR_DATA_DIR", str(tiny_data))
    _picture(tmp_path / "boat.jpg", 8)
    seen: dict = {}
    exec(compile(example, "README.md", "exec"), seen)  # noqa: S102 - our own README's example
    assert len(seen["run"].history) == 2 and seen["report"].confusion.shape == (10, 10)
    assert seen["guess"].image == "boat.jpg" and len(seen["guess"].top) == 3
    assert seen["cifar"] is cifar_cli and (tmp_path / "runs" / "notebook" / "last.safetensors").is_file()
