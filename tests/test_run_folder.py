"""A run folder is ours to write only where we put our own files: links planted there are refused, never
followed; --overwrite loses nothing until the new run has a checkpoint; messages name only files that
exist and suggest commands that work pasted; an epoch's writes failing part-way leave a consistent run."""

from __future__ import annotations

import errno
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import (
    TRAIN_ARGS,
    TURN_NON_FINITE,
    SignalAt,
    assert_clean_error,
    cli,
    network_with_event,
    write_network,
)

from cifar_cli import checkpoint as checkpoint_module
from cifar_cli import run_folder
from cifar_cli.checkpoint import load_checkpoint
from cifar_cli.errors import CifarError
from cifar_cli.files import write_atomic
from cifar_cli.models import create_model, resolve_model
from cifar_cli.settings import TrainSettings
from cifar_cli.training.loop import train
from cifar_cli.training.session import TrainingInterrupted

QUICK = ("--epochs", "1", *TRAIN_ARGS)
CPU = torch.device("cpu")
WRITTEN_BY_TRAIN = ("last.safetensors", "best.safetensors", "history.json", "settings.json", ".lock", ".write-test")
VICTIM_BYTES = b"someone else's file, which no cifar command may change\n"


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file outside every run folder that planted links point at."""
    path = tmp_path / "elsewhere" / "precious.txt"
    path.parent.mkdir()
    path.write_bytes(VICTIM_BYTES)
    return path


def _plant(path: Path, kind: str, victim: Path) -> None:
    if kind == "symlink":
        path.symlink_to(victim)
    elif kind == "dangling symlink":
        path.symlink_to(victim.parent / "not-yet.txt")
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")}


# --- 3. nothing is written through a link planted where our file goes ----------------------------------------

@pytest.mark.parametrize("kind", ["symlink", "dangling symlink", "fifo", "folder"])
@pytest.mark.parametrize("name", WRITTEN_BY_TRAIN)
def test_train_refuses_a_folder_with_something_else_under_a_name_it_writes(name: str, kind: str, victim: Path,
                                                                           tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    _plant(out / name, kind, victim)
    # --overwrite: even a run allowed to replace what is there must not write through it
    result = cli("train", "--data-dir", tiny_data, "--out", out, "--overwrite", *QUICK)
    assert_clean_error(result, str(out / name))
    assert victim.read_bytes() == VICTIM_BYTES and not (victim.parent / "not-yet.txt").exists()
    assert not any((out / n).is_file() and not (out / n).is_symlink() for n in run_folder.RUN_FILES)


def test_a_hard_link_in_place_of_the_lock_is_refused(victim: Path, tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    os.link(victim, out / ".lock")
    assert_clean_error(cli("train", "--data-dir", tiny_data, "--out", out, *QUICK), str(out / ".lock"), "2 names")
    assert victim.read_bytes() == VICTIM_BYTES


def test_resuming_into_a_folder_with_a_planted_link_is_refused(splits: tuple, victim: Path, tiny_data: Path,
                                                               tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):  # a genuine unfinished run: stopped inside its first epoch
        train(TrainSettings(epochs=2, batch_size=16, lr=0.05, seed=3), *splits, out, CPU,
              observer=SignalAt(signal.SIGINT, epoch=1, step=10))
    (out / "history.json").unlink(missing_ok=True)
    (out / "history.json").symlink_to(victim)
    result = cli("train", "--resume", out / "last.safetensors", "--data-dir", tiny_data)
    assert_clean_error(result, str(out / "history.json"), "symbolic link")
    assert victim.read_bytes() == VICTIM_BYTES


def test_a_replaced_folder_that_is_a_link_is_refused(trained_run: Path, victim: Path, tiny_data: Path,
                                                     tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(trained_run, out)
    (out / ".replaced").symlink_to(victim.parent, target_is_directory=True)
    assert_clean_error(cli("train", "--data-dir", tiny_data, "--out", out, "--overwrite", *QUICK),
                       str(out / ".replaced"))
    assert sorted(p.name for p in victim.parent.iterdir()) == ["precious.txt"]
    assert _files(out) == _files(trained_run)


@pytest.mark.parametrize("kind", ["symlink", "dangling symlink", "folder"])
def test_plot_writes_no_picture_through_a_link(trained_run: Path, victim: Path, tmp_path: Path, kind: str) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "curves.png").unlink(missing_ok=True)
    _plant(run / "curves.png", kind, victim)
    assert_clean_error(cli("plot", run), str(run / "curves.png"))
    _plant(tmp_path / "mine.png", kind, victim)
    assert_clean_error(cli("plot", run, "--out", tmp_path / "mine.png"), str(tmp_path / "mine.png"))
    assert victim.read_bytes() == VICTIM_BYTES and not (victim.parent / "not-yet.txt").exists()


def test_every_picture_command_refuses_a_link_as_its_output(tiny_data: Path, victim: Path, tmp_path: Path) -> None:
    (tmp_path / "grid.png").symlink_to(victim)
    assert_clean_error(cli("augment-preview", "--data-dir", tiny_data, "--out", tmp_path / "grid.png"),
                       "symbolic link")
    (tmp_path / "net.safetensors").symlink_to(victim)
    torch.save({"w": torch.zeros(1)}, tmp_path / "w.pth")
    assert_clean_error(cli("convert", tmp_path / "w.pth", tmp_path / "net.safetensors", "--overwrite"),
                       str(tmp_path / "net.safetensors"), "symbolic link")
    assert victim.read_bytes() == VICTIM_BYTES


def test_the_atomic_writer_never_writes_through_a_link_and_replaces_hard_links(victim: Path, tmp_path: Path) -> None:
    (tmp_path / "link.json").symlink_to(victim)
    with pytest.raises(CifarError, match="symbolic link"):
        write_atomic(tmp_path / "link.json", b"new")
    assert victim.read_bytes() == VICTIM_BYTES and (tmp_path / "link.json").is_symlink()
    os.link(victim, tmp_path / "hard.json")  # a snapshot of a run made with cp -al: the other name keeps its bytes
    write_atomic(tmp_path / "hard.json", b"new")
    assert victim.read_bytes() == VICTIM_BYTES and (tmp_path / "hard.json").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "hard.json", "link.json"]  # no temp file


# --- 4. --overwrite keeps the old run until the new one has a checkpoint ---------------------------------------

def test_an_overwrite_that_diverges_in_its_first_epoch_puts_the_old_run_back(trained_run: Path, tiny_data: Path,
                                                                              tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(trained_run, out)
    result = cli("train", "--data-dir", tiny_data, "--out", out, "--overwrite", "--epochs", "1", "--device", "cpu",
                 "--batch-size", "16", "--lr", "1e6")
    assert_clean_error(result, "diverged", f"the run it was replacing is back in {out}")
    assert "last.safetensors keeps" not in result.stderr
    assert f"kept in {out / '.replaced'}" in " ".join(result.stdout.split())  # said when it happened
    assert _files(out) == _files(trained_run) and not (out / ".replaced").exists()


def test_an_overwrite_stopped_in_its_first_epoch_puts_the_old_run_back(trained_run: Path, splits: tuple,
                                                                        tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(trained_run, out)
    settings = TrainSettings(epochs=2, batch_size=16, lr=0.05, seed=3)
    with pytest.raises(TrainingInterrupted) as stopped:
        train(settings, *splits, out, CPU, overwrite=True, observer=SignalAt(signal.SIGINT, epoch=1, step=10))
    assert stopped.value.checkpoint is None and f"back in {out}" in stopped.value.kept
    assert _files(out) == _files(trained_run) and not (out / ".replaced").exists()


def test_an_overwrite_whose_first_save_fails_puts_the_old_run_back(trained_run: Path, splits: tuple, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    shutil.copytree(trained_run, out)
    _fail_writing(monkeypatch, "last.safetensors", nth=1)
    with pytest.raises(CifarError, match="No space left"):
        train(TrainSettings(epochs=2, batch_size=16, lr=0.05, seed=3), *splits, out, CPU, overwrite=True)
    assert _files(out) == _files(trained_run) and not (out / ".replaced").exists()


def test_a_finished_overwrite_replaces_the_old_run(trained_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(trained_run, out)
    result = cli("train", "--data-dir", tiny_data, "--out", out, "--overwrite", *QUICK)
    assert result.exit_code == 0, result.stderr
    assert len(json.loads((out / "history.json").read_text())) == 1
    assert load_checkpoint(out / "last.safetensors").epoch == 1
    assert not (out / ".replaced").exists()
    help_text = " ".join(cli("train", "--help").stdout.replace("│", " ").split())
    assert "kept in --out/.replaced until the new run saves its first checkpoint" in help_text


def test_a_kill_9_during_an_overwrite_leaves_the_old_run_where_it_says_and_the_next_start_puts_it_back(
        trained_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(trained_run, out)
    stalls = write_network(tmp_path / "stalls.py", network_with_event(1, "__import__('time').sleep(600)"))
    process = subprocess.Popen([sys.executable, "-m", "cifar_cli", "train", "--data-dir", str(tiny_data), "--out",
                                str(out), "--overwrite", "--model", stalls, *QUICK], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (out / "settings.json").exists() or not (out / ".replaced" / "settings.json").exists():
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            pytest.fail(f"the run never reached its first step: {process.communicate()}")
        time.sleep(0.01)
    time.sleep(0.5)  # into its first step, which stalls
    process.kill()
    stdout, _ = process.communicate(timeout=60)
    assert f"kept in {out / '.replaced'}" in " ".join(stdout.split())
    aside = {n: b for n, b in _files(out / ".replaced").items() if n != "names"}
    assert aside == {n: b for n, b in _files(trained_run).items() if n in run_folder.RUN_FILES}

    result = cli("train", "--data-dir", tiny_data, "--out", out, *QUICK)  # not --overwrite: refused, once put back
    assert_clean_error(result, "already holds a run")
    assert "put back the run" in " ".join(result.stdout.split())
    assert _files(out) == _files(trained_run) and not (out / ".replaced").exists()


def test_a_crash_after_the_new_runs_first_checkpoint_keeps_the_new_run(trained_run: Path, tiny_data: Path,
                                                                       tmp_path: Path) -> None:
    new = tmp_path / "new"
    assert cli("train", "--data-dir", tiny_data, "--out", new, *QUICK).exit_code == 0
    (new / ".replaced").mkdir()  # as a kill between the new run's first save and deleting the old one leaves it
    for name in run_folder.RUN_FILES:
        shutil.copy(trained_run / name, new / ".replaced" / name)
    (new / ".replaced" / "names").write_text("\n".join(run_folder.RUN_FILES))
    kept = _files(new)
    result = cli("train", "--data-dir", tiny_data, "--out", new, *QUICK)
    assert_clean_error(result, "already holds a run")
    assert _files(new) == kept and not (new / ".replaced").exists()


# --- 15. messages name only files that exist, and suggest commands that work pasted ------------------------------

def test_a_folder_whose_run_saved_nothing_is_not_offered_for_resume(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    diverged = cli("train", "--data-dir", tiny_data, "--out", out, "--epochs", "1", "--device", "cpu",
                   "--batch-size", "16", "--lr", "1e6")
    assert_clean_error(diverged, "no checkpoint was written yet")
    again = cli("train", "--data-dir", tiny_data, "--out", out, *QUICK)
    assert_clean_error(again, "saved no checkpoint", "settings.json", "--overwrite")
    assert "--resume" not in again.stderr and "last.safetensors" not in again.stderr


def test_the_refusal_to_write_over_a_run_quotes_its_resume_path(trained_run: Path, tiny_data: Path,
                                                                tmp_path: Path) -> None:
    out = tmp_path / "my runs" / "it's here"
    shutil.copytree(trained_run, out)
    result = cli("train", "--data-dir", tiny_data, "--out", out, *QUICK)
    assert_clean_error(result, "already holds a run")
    suggested = " ".join(result.stderr.split()).split("continue it with ", 1)[1].split(", choose", 1)[0]
    assert shlex.split(suggested) == ["--resume", str(out / "last.safetensors")]


# Stops the run (as Ctrl-C does) on its 25th training batch: epoch 2, step 6, at 19 steps an epoch.
_STOPS = network_with_event(25, "os.kill(os.getpid(), signal.SIGINT)")
MID = ("--epochs", "2", "--batch-size", "16", "--lr", "0.05", "--seed", "2", "--device", "cpu")


def test_the_resume_command_works_pasted_from_a_folder_with_spaces(tiny_data: Path, tmp_path: Path) -> None:
    (tmp_path / "net work").mkdir()
    model = write_network(tmp_path / "net work" / "stops.py", _STOPS)
    out, data = tmp_path / "a run", tmp_path / "data set"
    shutil.copytree(tiny_data, data)
    stopped = cli("train", "--data-dir", data, "--out", out, "--model", model, *MID)
    assert stopped.exit_code == 130, stopped.stderr
    printed = " ".join(stopped.stderr.split()).split("Resume with: ", 1)[1]
    argv = shlex.split(printed)
    assert argv[:4] == ["cifar", "train", "--resume", str(out / "last.safetensors")]
    assert argv[argv.index("--data-dir") + 1] == str(data) and argv[argv.index("--model") + 1] == model
    assert run_folder.resume_argv(out / "last.safetensors", data, model, "cpu") == argv


def test_a_run_resumed_into_a_fresh_folder_names_the_checkpoint_that_exists(tiny_data: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    stops = write_network(tmp_path / "stops.py", _STOPS)
    assert cli("train", "--data-dir", tiny_data, "--out", first, "--model", stops, *MID).exit_code == 130
    # the same layers, now diverging (another file: a module once imported stays as it was)
    diverges = write_network(tmp_path / "diverges.py", network_with_event(2, TURN_NON_FINITE))
    result = cli("train", "--resume", first / "last.safetensors", "--out", second, "--model", diverges,
                 "--data-dir", tiny_data, "--device", "cpu")
    assert_clean_error(result, f"no checkpoint was written to {second}",
                       f"{first / 'last.safetensors'} keeps the state this run resumed from")
    assert str(second / "last.safetensors") not in result.stderr


def test_the_convert_hint_for_a_pickle_works_pasted(tmp_path: Path, tiny_data: Path) -> None:
    folder = tmp_path / "my nets"
    folder.mkdir()
    model = write_network(folder / "net.py", network_with_event(10**9, "pass"))
    torch.save(create_model(resolve_model(model)).state_dict(), folder / "weights.pt")
    result = cli("eval", folder / "weights.pt", "--model", model, "--data-dir", tiny_data, "--device", "cpu")
    assert_clean_error(result, "PyTorch pickle")
    argv = shlex.split(" ".join(result.stderr.split()).split("convert it: ", 1)[1])
    assert argv == ["cifar", "convert", str(folder / "weights.pt"), str(folder / "weights.safetensors"), "--model",
                    model]
    assert cli(*argv[1:]).exit_code == 0
    without = cli("eval", folder / "weights.safetensors", "--data-dir", tiny_data, "--device", "cpu")
    assert_clean_error(without, "pass it yourself:")
    assert shlex.split(" ".join(without.stderr.split()).split("pass it yourself: ", 1)[1]) == ["--model", model]


# --- 18. an epoch's writes failing part-way never leave best.safetensors ahead ------------------------------------

def _fail_writing(monkeypatch: pytest.MonkeyPatch, name: str, nth: int) -> list[str]:
    """The `nth` atomic write of a file called `name` fails as on a full disk; returns the names written."""
    written: list[str] = []

    def full_disk(path: Path, data: bytes) -> None:
        written.append(Path(path).name)
        if written.count(name) == nth:
            raise OSError(errno.ENOSPC, "No space left on device")
        write_atomic(path, data)

    for module in (run_folder, checkpoint_module):
        monkeypatch.setattr(module, "write_atomic", full_disk)
    return written


@pytest.mark.parametrize("name", ["history.json", "best.safetensors", "last.safetensors"])
def test_a_write_failing_at_the_end_of_an_epoch_leaves_a_consistent_run(name: str, splits: tuple, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    settings = TrainSettings(epochs=2, batch_size=16, lr=0.05, seed=2)
    whole = train(settings, *splits, tmp_path / "whole", CPU)
    assert whole.best_epoch == 2  # so epoch 2 writes all three
    out = tmp_path / "cut"
    written = _fail_writing(monkeypatch, name, nth=2)
    with pytest.raises(CifarError, match="No space left"):
        train(settings, *splits, out, CPU)
    assert written.count(name) == 2  # the failing write was epoch 2's
    monkeypatch.undo()
    epochs = len(json.loads((out / "history.json").read_text()))
    assert load_checkpoint(out / "best.safetensors").epoch <= epochs  # best never ahead of the history
    resumed = train(settings, *splits, out, CPU, resume=load_checkpoint(out / "last.safetensors"))
    assert resumed.best_epoch == whole.best_epoch
    for file in ("best.safetensors", "last.safetensors"):
        a, b = load_checkpoint(out / file), load_checkpoint(tmp_path / "whole" / file)
        assert a.epoch == b.epoch and all(torch.equal(a.model_state[k], b.model_state[k]) for k in a.model_state)


# --- a run is never written over -------------------------------------------------------------------

def test_a_new_run_never_replaces_an_old_one(trained_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(trained_run, out)
    before = (out / "last.safetensors").read_bytes()
    assert_clean_error(cli("train", "--data-dir", tiny_data, "--out", out, *QUICK),
                       "already holds a run", f"--resume {out / 'last.safetensors'}", "--overwrite")
    assert (out / "last.safetensors").read_bytes() == before

    replaced = cli("train", "--data-dir", tiny_data, "--out", out, "--overwrite", *QUICK)
    assert replaced.exit_code == 0, replaced.stderr
    assert len(json.loads((out / "history.json").read_text())) == 1


def test_a_finished_run_has_nothing_to_resume_and_claims_no_files(trained_run: Path, tiny_data: Path,
                                                                  tmp_path: Path) -> None:
    result = cli("train", "--resume", trained_run / "last.safetensors", "--data-dir", tiny_data,
                 "--out", tmp_path / "b")
    assert_clean_error(result, "already finished its 6 epochs")
    assert "Checkpoints" not in result.stdout and not (tmp_path / "b").exists()


def test_stale_temp_files_of_ours_are_cleaned_at_the_next_start(tiny_data: Path, tmp_path: Path) -> None:
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / ".last.safetensors.k2j3h4.tmp").write_bytes(b"half a checkpoint, from a kill -9")
    (tmp_path / ".notes.tmp").write_text("not ours")
    assert cli("train", "--data-dir", tiny_data, "--out", tmp_path, *QUICK).exit_code == 0
    assert not (tmp_path / ".last.safetensors.k2j3h4.tmp").exists() and (tmp_path / ".notes.tmp").exists()
