"""A run's folder on disk: one run at a time (a lock), writability checked up front, history.json and
settings.json, and the signals that ask a run to stop."""

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

from cifar_cli.errors import CifarError
from cifar_cli.files import write_atomic
from cifar_cli.interrupts import interrupt_now, note_signal
from cifar_cli.records import EpochRecord, history_from_rows

LAST, BEST, HISTORY, SETTINGS = "last.safetensors", "best.safetensors", "history.json", "settings.json"
RUN_FILES = (LAST, BEST, HISTORY, SETTINGS)
MAX_HISTORY_BYTES = 64 * 2**20  # a 10,000-epoch history is about 3 MB


def default_out_dir(resume: Path | None) -> Path:
    """Where a run writes when --out is not given: the resumed checkpoint's folder, else runs/<date-time>."""
    return resume.parent if resume else Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")


@contextmanager
def lock_out_dir(out_dir: Path) -> Iterator[None]:
    """One run per output folder: a second `cifar train --out` the same folder is refused, not interleaved."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; runs are trusted not to share a folder
        yield
        return
    fd = os.open(out_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
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


def claim(out_dir: Path, continuing: bool, overwrite: bool) -> None:
    """Make `out_dir` this run's: never silently over another run, and without our stale temp files.

    `continuing`: this run resumes from the last.safetensors in `out_dir` itself. Call under the lock.
    """
    existing = [name for name in RUN_FILES if (out_dir / name).exists()]
    if existing and not continuing:
        if not overwrite:
            raise CifarError(f"--out {out_dir} already holds a run ({existing[0]}); continue it with --resume "
                             f"{out_dir / LAST}, choose a fresh --out, or pass --overwrite to replace it")
        for name in existing:
            (out_dir / name).unlink()
    for name in RUN_FILES:  # write_atomic's temp files, left behind by a kill -9 in mid-write
        for stale in out_dir.glob(f".{name}.*.tmp"):
            stale.unlink(missing_ok=True)


def ensure_writable(out_dir: Path) -> None:
    """Fail before an hour of training, not after it, if results cannot be saved."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise CifarError(f"--out {out_dir} is not writable: {e.strerror or e}") from None


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
