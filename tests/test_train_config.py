"""`cifar train --config FILE`: a run's settings.json (or any JSON or TOML file of settings) re-runs it, the
options given overriding it; and `--init-from CKPT`: a new run from a checkpoint's weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cifar_cli.checkpoint import load_checkpoint
from tests.conftest import SMALL_NET, assert_clean_error, cli, history_without_times, write_network


def _settings(run: Path) -> dict:
    return json.loads((run / "settings.json").read_text())


def _ok(result: object) -> None:
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)  # type: ignore[attr-defined]


def test_a_run_folders_settings_rerun_it_exactly(trained_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    _ok(cli("train", "--config", trained_run, "--data-dir", tiny_data, "--out", again, "--device", "cpu"))
    assert _settings(again)["settings"] == _settings(trained_run)["settings"]
    assert history_without_times(again) == history_without_times(trained_run)  # CPU runs are bit-exact


def test_options_given_override_the_file_and_the_header_says_which(trained_run: Path, tiny_data: Path,
                                                                    tmp_path: Path) -> None:
    out = tmp_path / "short"
    result = cli("train", "--config", trained_run / "settings.json", "--epochs", "1", "--seed", "1",
                 "--data-dir", tiny_data, "--out", out, "--device", "cpu")
    _ok(result)
    header = " ".join(result.stdout.split())
    assert f"settings from {trained_run / 'settings.json'}; given over it: --epochs 1 (file: 6)" in header
    assert "--seed" not in header  # given, but the same as the file's
    expected = {**_settings(trained_run)["settings"], "epochs": 1}
    assert _settings(out)["settings"] == expected


def test_a_toml_file_of_settings(tiny_data: Path, tmp_path: Path) -> None:
    config = tmp_path / "run.toml"
    config.write_text('model = "cifarnet-ds"\nepochs = 1\nbatch_size = 32\n[settings]\nlr = 0.05\nmixup = 0.2\n')
    _ok(cli("train", "--config", config, "--data-dir", tiny_data, "--out", tmp_path / "r", "--device", "cpu"))
    written = _settings(tmp_path / "r")
    assert written["model"]["name"] == "cifarnet-ds"
    assert {k: written["settings"][k] for k in ("epochs", "batch_size", "lr", "mixup")} == \
        {"epochs": 1, "batch_size": 32, "lr": 0.05, "mixup": 0.2}


@pytest.mark.parametrize(("text", "words"), [
    ('{"epochs": 1, "learning_rate": 0.1}', ["unknown setting 'learning_rate'"]),
    ('{"settings": {"epochs": "3"}}', ["epochs must be an integer, not '3'"]),
    ('{"lr": -1}', ["lr:", "--lr must be a positive number"]),
    ('{"tta": 1}', ["tta must be true or false"]),
    ('{"augment_on": "gpu"}', ["augment_on must be one of auto, device, loader"]),
    ('{"model": "no-such-net"}', ["model: unknown network 'no-such-net'"]),
    ('{"epochs": 1,', ["is not a JSON file of settings"]),
    ('[1, 2]', ["not a table"]),
])
def test_a_bad_settings_file_is_one_line_naming_the_key(text: str, words: list[str], tiny_data: Path,
                                                        tmp_path: Path) -> None:
    config = tmp_path / "bad.json"
    config.write_text(text)
    result = cli("train", "--config", config, "--data-dir", tiny_data, "--out", tmp_path / "r", "--device", "cpu")
    assert_clean_error(result, str(config), *words)
    assert not (tmp_path / "r").exists()


def test_a_settings_file_names_your_network_only_under_the_trust_rule(tiny_data: Path, tmp_path: Path,
                                                                      own_trust_store: Path) -> None:
    model = write_network(tmp_path / "mynet.py", SMALL_NET)
    run = ("--data-dir", tiny_data, "--device", "cpu")
    _ok(cli("train", "--model", model, "--epochs", "1", "--batch-size", "32", "--out", tmp_path / "a", *run))
    again = cli("train", "--config", tmp_path / "a", "--epochs", "2", "--out", tmp_path / "b", *run)
    _ok(again)
    assert "mynet.py:Net: trained here, source unchanged" in " ".join(again.stderr.split())
    assert _settings(tmp_path / "b")["settings"]["batch_size"] == 32
    # a file that names a network is no reason to import it: never trained here, it is refused
    marker = tmp_path / "IMPORTED"
    write_network(tmp_path / "planted.py", f"open({str(marker)!r}, 'w').close()\n" + SMALL_NET)
    config = tmp_path / "planted.toml"
    config.write_text(f'model = "{tmp_path / "planted.py"}:Net"\nepochs = 1\n')
    refused = cli("train", "--config", config, "--out", tmp_path / "c", *run)
    assert_clean_error(refused, "never imports code", f"--model {tmp_path / 'planted.py'}:Net")
    assert not marker.exists()
    # and without the trust store, the run's own settings.json is refused as well
    (own_trust_store / "cifar-cli" / "trusted-networks.json").unlink()
    assert_clean_error(cli("train", "--config", tmp_path / "a", "--out", tmp_path / "d", *run),
                       f"--model {tmp_path / 'mynet.py'}:Net")


def test_init_from_starts_from_the_checkpoints_weights(trained_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "tuned"
    result = cli("train", "--init-from", trained_run, "--epochs", "1", "--lr", "1e-9", "--batch-size", "32",
                 "--data-dir", tiny_data, "--out", out, "--device", "cpu")
    _ok(result)
    assert f"starting from the weights of {trained_run / 'best.safetensors'}" in " ".join(result.stdout.split())
    start, tuned = load_checkpoint(trained_run / "best.safetensors"), load_checkpoint(out / "last.safetensors")
    conv = next(k for k, v in start.model_state.items() if v.ndim == 4 and v.requires_grad is False)
    changed = max((tuned.model_state[k] - v).abs().max().item() for k, v in start.model_state.items()
                  if v.is_floating_point() and v.ndim > 1)
    assert changed < 1e-4, conv  # at a learning rate of 1e-9, the weights are still the checkpoint's
    assert not torch.equal(tuned.model_state[conv], torch.zeros_like(tuned.model_state[conv]))


def test_init_from_refuses_another_network_and_resume(trained_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    run = ("--data-dir", tiny_data, "--device", "cpu", "--out", tmp_path / "r")
    assert_clean_error(cli("train", "--init-from", trained_run, "--model", "cifarnet-ds", *run),
                       f"--init-from {trained_run / 'best.safetensors'} holds cifarnet-whiten, not cifarnet-ds")
    assert_clean_error(cli("train", "--init-from", trained_run, "--resume", trained_run, *run),
                       "--resume continues a run with its own settings and weights; --init-from starts a new one")
    assert not (tmp_path / "r").exists()
