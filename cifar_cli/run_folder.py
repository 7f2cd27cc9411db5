"""A run's folder on disk: one run at a time (a lock), writability checked up front, no file written through a
link planted there, --overwrite's replaced run kept until the new one has a checkpoint, history.json and
settings.json, what a stopped run leaves and how to resume it, and the signals that ask a run to stop."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

from cifar_cli import schema
from cifar_cli.errors import CifarError, shell_command
from cifar_cli.files import create_own, open_own, read_input, refuse_unless_ours, sync_folder, write_atomic
from cifar_cli.interrupts import interrupt_now, note_signal
from cifar_cli.records import EpochRecord, history_from_rows

LAST, BEST, HISTORY, SETTINGS = "last.safetensors", "best.safetensors", "history.json", "settings.json"
RUN_FILES = (LAST, BEST, HISTORY, SETTINGS)
LOCK, PROBE = ".lock", ".write-test"
REPLACED = ".replaced"  # where --overwrite keeps the old run until the new one has saved its first checkpoint
_NAMES = "names"  # in REPLACED: which of RUN_FILES the old run had, written before any of them moves
MAX_HISTORY_BYTES = 64 * 2**20  # a 10,000-epoch history is about 3 MB


# What a run folder means where a checkpoint is asked for, by what it is for, each file in order of preference.
# Weights to judge (eval, predict, mistakes, gradcam) are the best epoch's, else the last epoch's where the run
# kept no best; a run to continue (train --resume) and what only the run's own state records (the images it
# held out or trained on) are in last.safetensors.
JUDGE, RESUME, RUN_RECORD = "judge", "resume", "run record"
NATURAL_FILES = {JUDGE: (BEST, LAST), RESUME: (LAST,), RUN_RECORD: (LAST,)}


def checkpoint_in(path: Path, purpose: str) -> tuple[Path, str | None]:
    """The checkpoint `path` means for `purpose` (JUDGE, RESUME or RUN_RECORD): a file is itself; a run folder
    means its natural file (NATURAL_FILES). Returns the file and, for a folder, a line saying which it is."""
    path = Path(path).expanduser()
    if not path.is_dir():
        return path, None
    wanted = NATURAL_FILES[purpose]
    for name in wanted:
        if (path / name).is_file():
            instead = f" (it has no {wanted[0]})" if name != wanted[0] else ""
            return path / name, f"run folder {path}: using {path / name}{instead}"
    try:
        there = sorted(p.name for p in path.iterdir() if not p.name.startswith("."))
    except OSError as e:
        raise CifarError(f"cannot read the folder {path}: {e.strerror or e}") from None
    held = ", ".join(there[:8]) + (", ..." if len(there) > 8 else "") if there else "nothing"
    raise CifarError(f"{path} is a folder without {' or '.join(wanted)}, so not a run folder to "
                     f"{'resume' if purpose == RESUME else 'read a checkpoint from'}; it holds {held}")


def default_out_dir(resume: Path | None) -> Path:
    """Where a run writes when --out is not given: the resumed checkpoint's folder, else runs/<date-time>."""
    return resume.parent if resume else Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")


def check_run_folder(out_dir: Path) -> None:
    """Refuse a run folder where a link, folder, fifo or device sits in place of a file we write, before
    anything is written: our writes never go through it, and an hour of training is not spent first."""
    for name in (*RUN_FILES, LOCK, PROBE):
        refuse_unless_ours(out_dir / name)
    aside = out_dir / REPLACED
    if os.path.lexists(aside) and not (aside.is_dir() and not aside.is_symlink()):
        raise CifarError(f"--out {out_dir} holds {aside}, which is not the folder cifar-cli keeps a replaced run "
                         "in; remove it or choose another --out")


@contextmanager
def lock_out_dir(out_dir: Path) -> Iterator[None]:
    """One run per output folder: a second `cifar train --out` the same folder is refused, not interleaved.
    Creates the folder; refuses one holding something other than our files under our names."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CifarError(f"--out {out_dir} is not writable: {e.strerror or e}") from None
    check_run_folder(out_dir)
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; runs are trusted not to share a folder
        yield
        return
    fd = open_own(out_dir / LOCK, "the lock file")
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            raise CifarError(f"--out {out_dir} is in use by another cifar train (pid {holder}); "
                             "wait for it or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield  # the kernel drops the lock if this process dies, even by kill -9
    finally:
        os.close(fd)


def ensure_writable(out_dir: Path) -> None:
    """Fail before an hour of training, not after it, if results cannot be saved. Call under the lock."""
    probe = out_dir / PROBE
    try:
        if os.path.lexists(probe):  # a kill between our create and unlink; check_run_folder saw a plain file
            probe.unlink()
        os.close(create_own(probe, "the write test"))
        probe.unlink()
    except OSError as e:
        raise CifarError(f"--out {out_dir} is not writable: {e.strerror or e}") from None


def claim(out_dir: Path, continuing: bool, overwrite: bool) -> Replaced | None:
    """Make `out_dir` this run's: never silently over another run, and without our stale temp files.

    `continuing`: this run resumes from the last.safetensors in `out_dir` itself. With `overwrite`, the
    old run's files are set aside (returned), not deleted. Call under the lock, after `recover`.
    """
    existing = [name for name in RUN_FILES if os.path.lexists(out_dir / name)]
    replaced = None
    if existing and not continuing:
        if not overwrite:
            raise CifarError(_refusal(out_dir, existing))
        replaced = Replaced.set_aside(out_dir, existing)
    for name in (*RUN_FILES, _NAMES):  # write_atomic's temp files, left behind by a kill -9 in mid-write
        for folder in (out_dir, out_dir / REPLACED):
            for stale in folder.glob(f".{name}.*.tmp"):
                stale.unlink(missing_ok=True)
    return replaced


def _refusal(out_dir: Path, existing: list[str]) -> str:
    if LAST in existing:
        return (f"--out {out_dir} already holds a run ({LAST}); continue it with "
                f"{shell_command(['--resume', out_dir / LAST])}, choose a fresh --out, or pass --overwrite to "
                "replace it")
    return (f"--out {out_dir} holds files of a run that saved no checkpoint ({', '.join(existing)}); choose a "
            "fresh --out, or pass --overwrite to replace them")


class Replaced:
    """The files of a run that --overwrite replaces, moved into `out_dir/.replaced` (a list of their names
    first). They are put back if the new run stops before its first checkpoint, and deleted once it has one;
    a crash in between is settled by `recover` at the next start, by whether last.safetensors exists."""

    def __init__(self, out_dir: Path, names: list[str]):
        self.out_dir, self.folder, self.names, self.pending = out_dir, out_dir / REPLACED, names, True

    @classmethod
    def set_aside(cls, out_dir: Path, names: list[str]) -> Replaced:
        aside = cls(out_dir, [n for n in RUN_FILES if n in names])
        try:
            aside.folder.mkdir()
            write_atomic(aside.folder / _NAMES, "".join(f"{n}\n" for n in aside.names).encode())
            for name in sorted(aside.names, key=lambda n: n != LAST):  # last.safetensors first: see recover
                os.replace(out_dir / name, aside.folder / name)
            sync_folder(out_dir)
        except OSError as e:
            raise CifarError(f"cannot move the run in {out_dir} aside into {aside.folder}: {e.strerror or e}; "
                             "its files are in one of the two") from None
        return aside

    def put_back(self) -> str:
        """Make the folder hold the old run again, whatever of the new one it holds (last.safetensors moves
        back last, so that until it does, `recover` knows to go on putting back); returns that, in words."""
        try:
            for name in RUN_FILES:
                if name not in self.names:
                    (self.out_dir / name).unlink(missing_ok=True)  # the new run's, with no old one to restore
            for name in sorted(self.names, key=lambda n: n == LAST):
                if os.path.lexists(self.folder / name):
                    os.replace(self.folder / name, self.out_dir / name)
            self._remove_folder()
        except OSError as e:
            raise CifarError(f"cannot put back the replaced run: {e.strerror or e}; its files are in "
                             f"{self.folder}, and the next cifar train --out {self.out_dir} puts them back") from None
        return f"the run it was replacing is back in {self.out_dir}"

    def drop(self) -> None:
        """The new run has saved its first checkpoint: the old run's files go."""
        for name in self.names:
            (self.folder / name).unlink(missing_ok=True)
        self._remove_folder()

    def _remove_folder(self) -> None:
        (self.folder / _NAMES).unlink(missing_ok=True)
        try:
            self.folder.rmdir()
        except OSError:
            pass  # something not ours is in it: left to its owner
        sync_folder(self.out_dir)
        self.pending = False


def recover(out_dir: Path) -> str | None:
    """Settle a replacement a crash left half done: the old run is put back if the new one never saved a
    checkpoint, else deleted. Returns what was done, in words, or None. Call under the lock."""
    folder = out_dir / REPLACED
    if not folder.is_dir():
        return None
    if not (folder / _NAMES).is_file():  # stopped before the list was written: nothing had moved yet
        _remove_empty(folder)
        return None
    listed = read_input(folder / _NAMES, 4096, "list of replaced files").decode(errors="replace").split()
    replaced = Replaced(out_dir, [n for n in RUN_FILES if n in listed])
    if (out_dir / LAST).is_file():
        replaced.drop()
        return f"deleted the run in {folder}: the run that replaced it had saved its first checkpoint"
    replaced.put_back()
    return f"put back the run in {out_dir} that an interrupted --overwrite had moved into {folder}"


def _remove_empty(folder: Path) -> None:
    for stale in folder.glob(f".{_NAMES}.*.tmp"):
        stale.unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        raise CifarError(f"{folder} holds files that cifar-cli did not put there; move them out and run "
                         "again") from None


def what_survives(out_dir: Path, saved_epoch: int | None, resumed_from: Path | None) -> str:
    """What a run that stopped without saving leaves, in words that name only files that exist now.
    `saved_epoch`: the epoch this run last saved in out_dir, if any."""
    last = out_dir / LAST
    if saved_epoch is not None and last.is_file():
        return f"{last} keeps epoch {saved_epoch}"
    if resumed_from is not None and resumed_from.is_file():
        unsaved = "" if last.is_file() and last.samefile(resumed_from) else f"no checkpoint was written to {out_dir}; "
        return f"{unsaved}{resumed_from} keeps the state this run resumed from"
    return "no checkpoint was written yet"


def what_is_saved(out_dir: Path) -> str:
    """What a run interrupted outside its epochs (before training began, or by a second Ctrl-C) leaves."""
    last = out_dir / LAST
    return f"{last} holds the last saved state" if last.is_file() else "no checkpoint was written"


def resume_command(checkpoint: Path, data_dir: Path | None = None, model: str | None = None,
                   device: str = "auto", tensorboard: bool = False) -> str:
    """resume_argv as a line to paste into a shell (quoted)."""
    return shell_command(resume_argv(checkpoint, data_dir, model, device, tensorboard))


def resume_argv(checkpoint: Path, data_dir: Path | None = None, model: str | None = None,
                device: str = "auto", tensorboard: bool = False) -> list[str]:
    """The command that continues a stopped run: what it cannot read from the checkpoint is repeated (the
    data, the user's own network, which is never imported because a file names it, the device, and
    --tensorboard, an output the run's settings do not hold); the run's own choices (settings, --no-test,
    --augment-on, --amp) are kept by the resumed run."""
    return ["cifar", "train", "--resume", str(checkpoint),
            *(["--data-dir", str(data_dir)] if data_dir else []),
            *(["--model", model] if model and ":" in model else []),
            *(["--device", device] if device != "auto" else []),
            *(["--tensorboard"] if tensorboard else [])]


def _write_json(path: Path, data: Any) -> None:
    try:
        write_atomic(path, (json.dumps(data, indent=1) + "\n").encode())
    except OSError as e:
        raise CifarError(f"cannot write {path}: {e.strerror or e}") from None


def write_history(path: Path, history: list[EpochRecord]) -> None:
    _write_json(path, [asdict(r) for r in history])


def write_settings(out_dir: Path, settings: dict[str, Any]) -> None:
    """settings.json beside the weights: exactly what this run was asked to do, for people to read."""
    _write_json(out_dir / SETTINGS, settings)


def read_history(path: Path) -> list[EpochRecord]:
    """A run's history.json (or the run folder holding it) as records."""
    path = Path(path)
    if path.is_dir():
        path = path / HISTORY
    try:
        if path.stat().st_size > MAX_HISTORY_BYTES or not path.is_file():
            raise CifarError(f"{path} is not a cifar train history.json (not a regular file of a sensible size)")
        rows = json.loads(path.read_text())
        history = history_from_rows(rows)
    except FileNotFoundError:
        raise CifarError(f"history not found: {path}") from None
    except OSError as e:
        raise CifarError(f"cannot read {path}: {e.strerror or e}") from None
    except schema.Invalid as e:  # a field out of its kind or range: say which
        raise CifarError(f"{path} is not a cifar train history.json: {e}") from None
    except (ValueError, TypeError, RecursionError):  # RecursionError: "[[[[..." nested a million deep
        raise CifarError(f"{path} is not a cifar train history.json") from None
    if not history:
        raise CifarError(f"{path} holds no epochs")
    return history


class StopSignals:
    """Turns SIGINT/SIGTERM into a request to stop after the current step; a second SIGINT stops at once."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: object) -> None:
        self.received = signum
        note_signal(signum)
        signal.signal(signal.SIGINT, interrupt_now)  # impatient second Ctrl-C: quit now

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
