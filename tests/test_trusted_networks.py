"""Networks trained here are remembered, safely: a checkpoint of a network file the user trained with
`--model` runs without it while the file is unchanged; anything else imports nothing and is refused as
before. A planted file that writes a marker when imported proves what was not imported."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifar_cli.checkpoint import load_checkpoint, save_checkpoint
from tests.conftest import SMALL_NET, assert_clean_error, cli, write_network

STORE = Path("cifar-cli") / "trusted-networks.json"
RUN = ("--device", "cpu", "--batch-size", "32", "--lr", "0.05")


@dataclasses.dataclass(frozen=True)
class Trained:
    run: Path
    source: Path
    store: str  # the trust store's text after training


@pytest.fixture(scope="module")
def mine(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trained]:
    """mynet.py trained for one epoch with --model, in a config folder of its own."""
    home, config = tmp_path_factory.mktemp("mine"), tmp_path_factory.mktemp("config-mine")
    model = write_network(home / "mynet.py", SMALL_NET)
    saved = os.environ["XDG_CONFIG_HOME"]
    os.environ["XDG_CONFIG_HOME"] = str(config)
    try:
        result = cli("train", "--model", model, "--epochs", "1", "--data-dir", tiny_data, "--out", home / "run", *RUN)
    finally:
        os.environ["XDG_CONFIG_HOME"] = saved
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    assert f"remembered {home / 'mynet.py'}:Net as trained here" in " ".join(result.stderr.split())
    yield Trained(home / "run", home / "mynet.py", (config / STORE).read_text())


def _trust(config: Path, mine: Trained) -> Path:
    """This test's trust store holds what training mynet.py recorded."""
    (config / STORE).parent.mkdir(parents=True, exist_ok=True)
    (config / STORE).write_text(mine.store)
    return config / STORE


def _planted(folder: Path) -> tuple[Path, Path]:
    """A network file that, if ever imported, writes a marker file; returns (file, marker)."""
    marker = folder / "IMPORTED"
    source = folder / "planted.py"
    write_network(source, f"open({str(marker)!r}, 'w').close()\n" + SMALL_NET)
    return source, marker


def _forged(mine: Trained, name: str, sha: str, to: Path) -> Path:
    """mynet's checkpoint, its record of the network rewritten to name `name` with source hash `sha`."""
    ckpt = load_checkpoint(mine.run / "last.safetensors")  # resumable, for train --resume
    save_checkpoint(to, dataclasses.replace(ckpt, model=dataclasses.replace(ckpt.model, name=name,
                                                                            source_sha256=sha)))
    return to


def _one_line(result: object) -> str:
    return " ".join(result.stderr.split())  # type: ignore[attr-defined]


def test_train_records_the_file_it_imported(mine: Trained) -> None:
    (entry,) = json.loads(mine.store)["networks"]
    assert entry == {"path": str(mine.source.resolve()), "name": "Net",
                     "sha256": hashlib.sha256(mine.source.read_bytes()).hexdigest()}


def test_a_network_trained_here_runs_from_its_run_folder_without_model(mine: Trained, own_trust_store: Path,
                                                                       tiny_data: Path, tmp_path: Path) -> None:
    _trust(own_trust_store, mine)
    picture = tmp_path / "boat.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(picture)
    data = ("--data-dir", tiny_data, "--device", "cpu")
    for args in (("eval", mine.run, *data), ("predict", picture, "-c", mine.run, "--device", "cpu"),
                 ("gradcam", picture, "-c", mine.run / "best.safetensors", "--out", tmp_path / "g.png", *data),
                 ("mistakes", mine.run, "--out", tmp_path / "m.png", *data)):
        result = cli(*args)
        assert result.exit_code == 0, (args[0], result.stdout, result.stderr, result.exception)
        sha = hashlib.sha256(mine.source.read_bytes()).hexdigest()
        assert f"mynet.py:Net: trained here, source unchanged (sha256 {sha[:12]}" in _one_line(result), args[0]
    # resuming gets past the network too: the run is finished, and that is what it is told
    assert_clean_error(cli("train", "--resume", mine.run, *data), "already finished its 1 epoch")
    assert (own_trust_store / STORE).read_text() == mine.store  # running a checkpoint records nothing


def test_editing_the_source_after_training_brings_the_refusal_back(mine: Trained, own_trust_store: Path) -> None:
    _trust(own_trust_store, mine)
    text = mine.source.read_text()
    try:
        mine.source.write_text(text + "# an edit\n")
        assert_clean_error(cli("eval", mine.run, "--device", "cpu"), "never imports code that a checkpoint names",
                           f"--model {mine.source}:Net")
    finally:
        mine.source.write_text(text)


def test_without_the_trust_store_a_checkpoint_is_refused_as_ever(mine: Trained, own_trust_store: Path,
                                                                 tiny_data: Path) -> None:
    store = _trust(own_trust_store, mine)
    assert cli("eval", mine.run, "--data-dir", tiny_data, "--device", "cpu").exit_code == 0
    store.unlink()
    result = cli("eval", mine.run, "--data-dir", tiny_data, "--device", "cpu")
    assert_clean_error(result, "never imports code that a checkpoint names", f"--model {mine.source}:Net")
    assert "trained here" not in result.stderr


def test_a_damaged_trust_store_is_empty_with_one_warning(mine: Trained, own_trust_store: Path, tiny_data: Path,
                                                         tmp_path: Path) -> None:
    store = _trust(own_trust_store, mine)
    store.write_text('{"networks": [{"path": ')
    result = cli("eval", mine.run, "--device", "cpu")
    assert_clean_error(result, "never imports code that a checkpoint names")
    assert sum(line.startswith("warning:") for line in result.stderr.splitlines()) == 1
    assert "treating it as empty" in _one_line(result)
    # training records into a fresh store and keeps the damaged one beside it
    model = write_network(tmp_path / "other.py", SMALL_NET)
    trained = cli("train", "--model", model, "--epochs", "1", "--data-dir", tiny_data, "--out", tmp_path / "r", *RUN)
    assert trained.exit_code == 0, (trained.stdout, trained.stderr, trained.exception)
    assert "treating it as empty" in _one_line(trained)
    assert store.with_name(store.name + ".damaged").read_text() == '{"networks": [{"path": '
    assert [e["path"] for e in json.loads(store.read_text())["networks"]] == [str((tmp_path / "other.py").resolve())]


def test_a_checkpoint_naming_a_file_never_trained_here_imports_nothing(mine: Trained, own_trust_store: Path,
                                                                       tmp_path: Path) -> None:
    _trust(own_trust_store, mine)
    planted, marker = _planted(tmp_path)
    sha = hashlib.sha256(planted.read_bytes()).hexdigest()  # honest about its file: still not trained here
    forged = _forged(mine, f"{planted}:Net", sha, tmp_path / "foreign.safetensors")
    for command in (("eval", forged), ("train", "--resume", forged), ("mistakes", forged)):
        result = cli(*command, "--device", "cpu")
        assert_clean_error(result, f"--model {planted}:Net")
        assert not marker.exists(), command[0]
    assert (own_trust_store / STORE).read_text() == mine.store


def test_a_trusted_hash_never_imports_the_file_a_checkpoint_names(mine: Trained, own_trust_store: Path,
                                                                  tiny_data: Path, tmp_path: Path) -> None:
    _trust(own_trust_store, mine)
    planted, marker = _planted(tmp_path)
    sha = hashlib.sha256(mine.source.read_bytes()).hexdigest()
    # the trusted content under another file's name: the trusted file is the one imported
    forged = _forged(mine, f"{planted}:Net", sha, tmp_path / "renamed.safetensors")
    result = cli("eval", forged, "--data-dir", tiny_data, "--device", "cpu")
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    assert "mynet.py:Net: trained here" in _one_line(result) and not marker.exists()
    # and under a NAME that was never trained: refused
    other = _forged(mine, f"{planted}:Other", sha, tmp_path / "other.safetensors")
    assert_clean_error(cli("eval", other, "--device", "cpu"), f"--model {planted}:Other")
    assert not marker.exists()


def test_a_copy_of_a_trusted_file_elsewhere_is_not_what_runs(mine: Trained, own_trust_store: Path,
                                                             tmp_path: Path) -> None:
    """The store trusts a file at its path: the trusted file moved away, its checkpoint is refused."""
    store = _trust(own_trust_store, mine)
    moved = tmp_path / "mynet.py"
    shutil.copy(mine.source, moved)
    entries = json.loads(store.read_text())
    entries["networks"][0]["path"] = str(tmp_path / "gone.py")
    store.write_text(json.dumps(entries))
    assert_clean_error(cli("eval", mine.run, "--device", "cpu"), "never imports code that a checkpoint names")
