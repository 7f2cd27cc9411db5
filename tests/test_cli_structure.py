"""The command-line face decides nothing twice: a user's network is built once per command."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import COUNTED, TRAIN_ARGS, cli, history_without_times, write_network


def _calls(network: str) -> int:
    """How many times the factory has run, and start counting afresh."""
    calls = Path(network.rpartition(":")[0]).with_suffix(".calls")
    count = len(calls.read_text().splitlines()) if calls.exists() else 0
    calls.unlink(missing_ok=True)
    return count


@pytest.fixture(scope="module")
def counted_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("counted")
    network = write_network(folder / "counted.py", COUNTED)
    result = cli("train", "--epochs", "1", "--model", network, "--data-dir", tiny_data, "--out", folder / "run",
                 *TRAIN_ARGS)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return folder / "run", network


def test_train_builds_a_users_network_once(counted_run: tuple[Path, str]) -> None:
    run, network = counted_run
    assert (run / "last.safetensors").is_file()
    assert _calls(network) == 1


@pytest.mark.parametrize("command", ["summary", "receptive-field"])
def test_inspecting_a_users_network_builds_it_once(counted_run: tuple[Path, str], command: str) -> None:
    _, network = counted_run
    _calls(network)
    result = cli(command, "--model", network, "--json")
    assert result.exit_code in (0, 1), (result.stdout, result.stderr, result.exception)  # summary: 1 if a rule fails
    assert _calls(network) == 1


def test_eval_and_predict_build_a_users_network_once(counted_run: tuple[Path, str], tiny_data: Path,
                                                     tmp_path: Path) -> None:
    run, network = counted_run
    _calls(network)
    result = cli("eval", run / "last.safetensors", "--model", network, "--data-dir", tiny_data, "--device", "cpu",
                 "--json")
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    assert _calls(network) == 1
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "red.png")
    result = cli("predict", tmp_path / "red.png", "-c", run / "last.safetensors", "--model", network,
                 "--device", "cpu", "--json")
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    assert _calls(network) == 1


def test_the_other_commands_build_a_users_network_once(counted_run: tuple[Path, str], tiny_data: Path,
                                                       tmp_path: Path) -> None:
    run, network = counted_run
    last = run / "last.safetensors"
    commands = {
        "mistakes": ["mistakes", last, "-o", tmp_path / "m.png"],
        "gradcam": ["gradcam", "--mistakes", "2", "-c", last, "-o", tmp_path / "g.png"],
        "lr-find": ["lr-find", "--steps", "3", "--batch-size", "32", "-o", tmp_path / "lr.png"],
    }
    for name, args in commands.items():
        _calls(network)
        result = cli(*args, "--model", network, "--data-dir", tiny_data, "--device", "cpu", "--json")
        assert result.exit_code == 0, (name, result.stdout, result.stderr, result.exception)
        assert _calls(network) == 1, name


def test_a_users_network_trained_twice_with_one_seed_learns_the_same(counted_run: tuple[Path, str], tiny_data: Path,
                                                                    tmp_path: Path) -> None:
    """Built once, yet from the run's seed: the weights the factory draws are the seed's, not the process's."""
    _, network = counted_run
    histories = []
    for out in ("a", "b"):
        cli("summary", "--model", network)  # moves the process's random stream between the two runs
        result = cli("train", "--epochs", "1", "--seed", "3", "--model", network, "--data-dir", tiny_data,
                     "--out", tmp_path / out, *TRAIN_ARGS)
        assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
        histories.append(history_without_times(tmp_path / out))
    assert histories[0] == histories[1]
