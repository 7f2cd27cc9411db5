"""Checkpoints: exact round trips, atomic writes, and clean refusals of every kind of bad file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import assert_clean_error, cli, safetensors_header
from safetensors.torch import save_file

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
