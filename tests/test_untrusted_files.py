"""Files we did not write: pickles never run, damaged training states are refused with a reason."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch
from conftest import Exploit, assert_clean_error, cli, safetensors_header

from cifar_cli.checkpoint import load_checkpoint, model_from_checkpoint
from cifar_cli.models import create_model, preset_spec


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


