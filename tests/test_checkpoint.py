"""Checkpoints: exact round trips, atomic writes, and clean refusals of every kind of bad file."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from conftest import Exploit, assert_clean_error, cli, safetensors_header
from safetensors.torch import load_file, save_file

from cifar_cli.checkpoint import Checkpoint, load_checkpoint, model_from_checkpoint, save_checkpoint
from cifar_cli.data import CLASSES, MEAN, STD
from cifar_cli.errors import CifarError
from cifar_cli.models import ModelSpec, create_model, preset_spec


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    model = create_model(preset_spec()).eval()
    with torch.no_grad():  # make BatchNorm statistics non-trivial so they must round-trip too
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, Checkpoint(preset_spec(), model.state_dict(), epoch=7, metrics={"test_acc": 0.5}))
    return path, model


def test_round_trip_reproduces_outputs_exactly(saved: tuple[Path, torch.nn.Module]) -> None:
    path, model = saved
    loaded = load_checkpoint(path)
    assert (loaded.epoch, loaded.metrics, loaded.classes) == (7, {"test_acc": 0.5}, CLASSES)
    assert (loaded.mean, loaded.std, loaded.model) == (MEAN, STD, preset_spec())
    rebuilt = model_from_checkpoint(loaded).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))


def test_every_header_length_loads(saved: tuple[Path, torch.nn.Module]) -> None:
    """A header length whose first byte is 0x80 (pickle's PROTO opcode) must not read as a pickle."""
    path, model = saved
    first_bytes = set()
    for pad in range(0, 300, 8):  # the header grows 8 bytes at a time: every low byte comes round
        save_checkpoint(path, Checkpoint(preset_spec(), model.state_dict(), metrics={"pad": "x" * pad}))
        first_bytes.add(path.read_bytes()[0])
        assert load_checkpoint(path).metrics["pad"] == "x" * pad
    assert 0x80 in first_bytes


@pytest.mark.parametrize("record", [
    {"model": {"name": "cifarnet-ds", "config": {"widths": [32, 64, 128, 192], "num_classes": 10, "dropout": 0.05}}},
    {"model": {"name": "cifarnet-ds"}},  # settings left out: the preset's own
    {"model_config": {"arch": "cifarnet-ds", "widths": [32, 64, 128, 192]}},  # how the oldest checkpoints wrote it
])
def test_checkpoints_of_the_first_default_network_still_load(tmp_path: Path, record: dict) -> None:
    """cifarnet-ds48 replaced cifarnet-ds as the default; files holding cifarnet-ds must not change meaning."""
    torch.manual_seed(0)
    old = create_model(preset_spec("cifarnet-ds")).eval()
    path = tmp_path / "old.safetensors"
    save_checkpoint(path, Checkpoint(preset_spec("cifarnet-ds"), old.state_dict()))
    metadata = {k: v for k, v in _metadata(path).items() if k != "model"} | {
        key: json.dumps(value) for key, value in record.items()}
    save_file({f"model.{k}": v for k, v in old.state_dict().items()}, path, metadata=metadata)

    loaded = load_checkpoint(path)
    assert loaded.model == preset_spec("cifarnet-ds") != preset_spec()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model_from_checkpoint(loaded).eval()(x), old(x))


def test_a_preset_fills_settings_a_file_leaves_out_from_its_own() -> None:
    """Two presets share NetConfig; a file naming cifarnet-ds48 with no widths is still 48 wide."""
    spec = ModelSpec.from_dict({"name": "cifarnet-ds48", "config": {"dropout": 0.05}})
    assert spec == preset_spec("cifarnet-ds48") and spec.config["widths"] == [48, 96, 128, 160]


def test_checkpoints_of_the_second_default_network_still_load() -> None:
    """cifarnet-ds48 files predate NetConfig's pairs, activation and separable_c2: they stay one pair per
    block, ReLU and a full 3x3 entry into C2."""
    written_then = {"widths": [48, 96, 128, 160], "num_classes": 10, "dropout": 0.05}
    spec = ModelSpec.from_dict({"name": "cifarnet-ds48", "config": written_then})
    assert spec == preset_spec("cifarnet-ds48") != preset_spec()
    model = create_model(spec)
    assert sum(p.numel() for p in model.parameters()) == 196_538
    assert not any(isinstance(m, torch.nn.GELU) for m in model.modules())


def test_write_is_atomic(saved: tuple[Path, torch.nn.Module], monkeypatch: pytest.MonkeyPatch) -> None:
    path, model = saved
    before = path.read_bytes()

    def crash(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(CifarError, match="No space left"):
        save_checkpoint(path, Checkpoint(preset_spec(), model.state_dict(), epoch=8))
    assert path.read_bytes() == before
    assert os.listdir(path.parent) == [path.name]  # no temp file left behind


def _metadata(path: Path) -> dict[str, str]:
    return safetensors_header(path.read_bytes())[0]["__metadata__"]


def _bad_files(saved_path: Path, tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, words the error must contain)"""
    raw = saved_path.read_bytes()
    files: dict[str, tuple[Path, str]] = {}

    def put(name: str, data: bytes, words: str, suffix: str = ".safetensors") -> None:
        files[name] = (tmp / f"{name}{suffix}", words)
        files[name][0].write_bytes(data)

    put("empty", b"", "not a safetensors checkpoint")
    put("truncated", raw[: len(raw) // 2], "corrupt")
    put("header_only", raw[:100], "truncated")
    put("random", os.urandom(5000), "safetensors")
    put("huge_header", (10**12).to_bytes(8, "little") + b"{}", "truncated")
    put("pickle", b"\x80\x02}q\x00.", "PyTorch pickle", suffix=".pth")
    foreign = tmp / "foreign.safetensors"
    save_file({"weight": torch.zeros(3)}, foreign, metadata={"producer": "someone else"})
    files["foreign"] = (foreign, "not a cifar-cli checkpoint")

    state = load_checkpoint(saved_path)
    other_arch = tmp / "other_arch.safetensors"
    meta = _metadata(saved_path) | {"model": json.dumps({"name": "resnet18"})}
    save_file({f"model.{k}": v for k, v in state.model_state.items()}, other_arch, metadata=meta)
    files["other_arch"] = (other_arch, "another architecture")
    wrong_widths = tmp / "wrong_widths.safetensors"
    narrow = {"name": "cifarnet-ds", "config": {"widths": [16, 32, 64, 96]}}
    meta = _metadata(saved_path) | {"model": json.dumps(narrow)}
    save_file({f"model.{k}": v for k, v in state.model_state.items()}, wrong_widths, metadata=meta)
    files["wrong_widths"] = (wrong_widths, "does not match")
    odd_activation = tmp / "odd_activation.safetensors"
    named = {"name": "cifarnet-ds", "config": {"activation": "__import__('os').system"}}
    meta = _metadata(saved_path) | {"model": json.dumps(named)}
    save_file({f"model.{k}": v for k, v in state.model_state.items()}, odd_activation, metadata=meta)
    files["odd_activation"] = (odd_activation, "activation must be one of relu, gelu")
    odd_stem = tmp / "odd_stem.safetensors"
    named = {"name": "cifarnet-ds", "config": {"widths": [33, 64, 128, 192], "whitened_stem": True}}
    meta = _metadata(saved_path) | {"model": json.dumps(named)}
    save_file({f"model.{k}": v for k, v in state.model_state.items()}, odd_stem, metadata=meta)
    files["odd_stem"] = (odd_stem, "a whitened stem needs an even C1 width up to 54")
    bad_json = tmp / "bad_json.safetensors"
    save_file({f"model.{k}": v for k, v in state.model_state.items()}, bad_json,
              metadata=_metadata(saved_path) | {"metrics": "{not json"})
    files["bad_json"] = (bad_json, "not valid JSON")
    return files


def test_bad_checkpoints_are_refused_with_a_clean_error(saved: tuple[Path, torch.nn.Module], tmp_path: Path,
                                                        tiny_data: Path) -> None:
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    for name, (path, words) in _bad_files(saved[0], bad_dir).items():
        with pytest.raises(CifarError, match=words):
            model_from_checkpoint(load_checkpoint(path))
        result = cli("eval", path, "--data-dir", tiny_data, "--device", "cpu")
        assert_clean_error(result, words)
        assert len(result.stderr.strip().splitlines()) == 1, (name, result.stderr)


# --- checkpoint contents are validated, not trusted ------------------------------------------------------

def _forge(source: Path, target: Path, tensors: dict | None = None, **metadata: str) -> Path:
    meta = safetensors_header(source.read_bytes())[0]["__metadata__"]
    save_file(tensors if tensors is not None else load_file(source), target, metadata={**meta, **metadata})
    return target


def test_checkpoint_contents_are_validated(trained_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    best = trained_run / "best.safetensors"
    norm = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.0, 0.25]}
    poisoned = load_file(best)
    poisoned["model.c1.0.0.weight"][0, 0, 0, 0] = float("nan")
    classes = json.dumps([f"class {i}" for i in range(12)])
    cases = [({"normalization": json.dumps(norm)}, None, "divide by zero"),
             ({"normalization": json.dumps({"mean": [0.5, "nan", 0.5], "std": [1, 1, 1]})}, None, "finite"),
             ({"epoch": "true"}, None, "not a whole number"),
             ({"model": json.dumps({"name": "cifarnet-ds", "config": {"num_classes": True}})}, None,
              "another architecture"),
             ({"model": json.dumps({"name": "cifarnet-ds", "config": {"num_classes": 12}}), "classes": classes},
              None, "CIFAR-10 has 10"),
             ({}, poisoned, "non-finite weights")]
    for i, (metadata, tensors, words) in enumerate(cases):
        forged = _forge(best, tmp_path / f"case{i}.safetensors", tensors, **metadata)
        assert_clean_error(cli("eval", forged, "--data-dir", tiny_data, "--device", "cpu"), words)


@pytest.mark.parametrize("damage", [{"best_epoch": "3"}, {"best_epoch": 99}, {"position": {
    "epoch": 7, "batches": -1, "loss_sum": 0.0, "correct": 0, "seen": 0}}, {"scheduler": [1, 2]},
    {"history": [], "best_epoch": 0, "position": {"epoch": 1, "batches": 10**9, "loss_sum": 0.0, "correct": 0,
                                                  "seen": 0}}])
def test_a_training_state_with_wrong_types_or_impossible_values_is_refused(trained_run: Path, tiny_data: Path,
                                                                          tmp_path: Path, damage: dict) -> None:
    last = trained_run / "last.safetensors"
    state = json.loads(safetensors_header(last.read_bytes())[0]["__metadata__"]["train_state"])
    forged = _forge(last, tmp_path / "last.safetensors", train_state=json.dumps({**state, **damage}))
    assert_clean_error(cli("train", "--resume", forged, "--data-dir", tiny_data), "cannot be resumed")


def test_a_safetensors_file_is_known_by_its_content_whatever_its_name(trained_run: Path, tiny_data: Path,
                                                                      tmp_path: Path) -> None:
    renamed = tmp_path / "weights.pth"
    shutil.copy(trained_run / "best.safetensors", renamed)
    assert cli("eval", renamed, "--data-dir", tiny_data, "--device", "cpu").exit_code == 0


# --- convert ---------------------------------------------------------------------------------------------

def test_convert_handles_tied_weights_nested_wrappers_and_its_own_input(tiny_data: Path, tmp_path: Path) -> None:
    model = create_model(preset_spec()).eval()
    tied = {f"module._orig_mod.{k}": v for k, v in model.state_dict().items()}  # DDP around torch.compile
    tied["module._orig_mod.head.2.bias"] = tied["module._orig_mod.head.2.weight"][:, 0]  # one storage, two names
    torch.save(tied, tmp_path / "tied.pth")
    result = cli("convert", tmp_path / "tied.pth", tmp_path / "tied.safetensors")
    assert result.exit_code == 0, result.stderr
    assert cli("eval", tmp_path / "tied.safetensors", "--data-dir", tiny_data, "--device", "cpu").exit_code == 0

    assert_clean_error(cli("convert", tmp_path / "tied.pth", tmp_path / "tied.pth"), "must end in .safetensors")
    shutil.copy(tmp_path / "tied.pth", tmp_path / "same.safetensors")
    assert_clean_error(cli("convert", tmp_path / "same.safetensors", tmp_path / "same.safetensors"), "onto itself")
    assert_clean_error(cli("convert", tmp_path / "tied.pth", tmp_path / "tied.safetensors"), "exists", "--overwrite")


def test_convert_states_the_global_torch_refused(tmp_path: Path) -> None:
    class Planted:
        def __reduce__(self):  # noqa: ANN204
            return (print, ("ran",))

    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"w": Planted()}, protocol=2))
    result = cli("convert", tmp_path / "evil.pth", tmp_path / "out.safetensors")
    assert_clean_error(result, "GLOBAL print was not an allowed global")
    assert "weights_only" not in result.stderr and "trusted" not in result.stderr


# --- files that would run code: pickles are refused, converted only as tensors --
def test_pytorch_pickles_are_refused_and_can_be_converted(tiny_data: Path, tmp_path: Path) -> None:
    model = create_model(preset_spec()).eval()
    legacy = tmp_path / "legacy.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, legacy)
    assert_clean_error(cli("eval", legacy, "--data-dir", tiny_data), "pickle", "can run any code",
                       f"cifar convert {legacy}")

    converted = tmp_path / "converted.safetensors"
    assert cli("convert", legacy, converted).exit_code == 0
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        rebuilt = model_from_checkpoint(load_checkpoint(converted)).eval()
        assert torch.equal(model(x), rebuilt(x))
    assert cli("eval", converted, "--data-dir", tiny_data, "--device", "cpu").exit_code == 0


def test_converting_a_malicious_pickle_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"weight": Exploit(marker)}, protocol=2))
    assert_clean_error(cli("convert", evil, tmp_path / "out.safetensors"), "cannot convert")
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()
    other = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, other)
    assert_clean_error(cli("convert", other, tmp_path / "out.safetensors"), "does not match")


def test_a_damaged_training_state_cannot_be_resumed(trained_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(trained_run / "last.safetensors")
    meta = safetensors_header((trained_run / "last.safetensors").read_bytes())[0]["__metadata__"]
    state = json.loads(meta["train_state"])
    for damage, words in [({"history": [{"epoch": 1, "bogus": 2}]}, "history is damaged"),
                          ({"surprise": 1}, "incomplete"),
                          ({"settings": {"epochs": "many"}}, "cannot be resumed")]:
        damaged = tmp_path / "last.safetensors"
        save_file(tensors, damaged, metadata={**meta, "train_state": json.dumps({**state, **damage})})
        assert_clean_error(cli("train", "--resume", damaged, "--data-dir", tiny_data, "--device", "cpu"), words)
