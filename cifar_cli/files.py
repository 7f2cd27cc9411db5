"""Files from users and for users: inputs checked before they are read whole, outputs written atomically,
and never through a link: every file cifar-cli writes goes through `write_atomic`, `open_own` or
`create_own`, which refuse a symbolic link, folder, fifo or device where our file should be, so a link
planted in a run folder cannot point our writes at a file elsewhere."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from cifar_cli.errors import CifarError

# Open flags that never follow a link at the last step and never block on a fifo; absent on Windows,
# which has no fifos and whose links need privileges to make.
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


def read_input(path: Path, limit: int, what: str) -> bytes:
    """The bytes of a regular file of at most `limit` bytes; a device, a fifo or a huge file is refused
    before anything is read (/dev/zero would otherwise fill memory)."""
    path = Path(path)
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise CifarError(f"{what} {path} is not a regular file")
        if info.st_size > limit:
            raise CifarError(f"{what} {path} is {info.st_size:,} bytes, more than the {limit:,} this reads")
        return path.read_bytes()
    except FileNotFoundError:
        raise CifarError(f"{what} not found: {path}") from None
    except OSError as e:
        raise CifarError(f"cannot read {what} {path}: {e.strerror or e}") from None


def _kind(mode: int) -> str:
    kinds = {stat.S_ISLNK: "a symbolic link", stat.S_ISDIR: "a folder", stat.S_ISFIFO: "a fifo",
             stat.S_ISSOCK: "a socket", stat.S_ISCHR: "a device", stat.S_ISBLK: "a device"}
    return next((name for test, name in kinds.items() if test(mode)), "not a regular file")


def what_sits_at(path: Path, what: str = "") -> int | None:
    """The mode of what sits at `path`, the link itself if it is one (never followed); None if nothing."""
    try:
        return os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    except OSError as e:
        raise CifarError(f"cannot check {what + ' ' if what else ''}{path}: {e.strerror or e}") from None


def refuse_unless_ours(path: Path, what: str = "") -> None:
    """Refuse `path` when something other than a regular file sits there (a link is not followed to see
    what it points at): cifar-cli writes its files in place of regular files only."""
    mode = what_sits_at(path, what)
    if mode is not None and not stat.S_ISREG(mode):
        raise CifarError(f"{what + ' ' if what else ''}{path} is {_kind(mode)}; cifar-cli writes no file "
                         "through a link, folder or device: remove it or choose another place")


def check_output(path: Path, suffix: str, what: str) -> Path:
    """An output file name that says what it holds, and is not a link, device or folder we would write into."""
    path = Path(path).expanduser()
    if path.suffix.lower() != suffix:
        raise CifarError(f"{what} {path} must end in {suffix}: that is the format written")
    refuse_unless_ours(path, what)
    return path


def open_own(path: Path, what: str) -> int:
    """A read-write descriptor of our own small file at `path` (a lock), created if missing; a link, a
    non-regular file or a file with other names (a hard link to someone's file) is refused, not opened."""
    refuse_unless_ours(path, what)  # before opening: opening a device may already act on it
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o644)  # a link planted since: ELOOP
    except OSError as e:
        raise CifarError(f"cannot open {what} {path}: {e.strerror or e}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        kind = _kind(info.st_mode) if not stat.S_ISREG(info.st_mode) else f"a file with {info.st_nlink} names"
        raise CifarError(f"{what} {path} is {kind}, not a file cifar-cli made; remove it and run again")
    return fd


def create_own(path: Path, what: str) -> int:
    """A write descriptor of a new file at `path`, which must not exist yet (O_EXCL: even a dangling link
    there is refused, never followed)."""
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644)
    except FileExistsError:
        refuse_unless_ours(path, what)
        raise CifarError(f"{what} {path} already exists; remove it and run again") from None


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a reader sees the old file or the new one, never half of either.

    The new file is made under a fresh name (O_EXCL, O_NOFOLLOW) and renamed over `path`; a link, folder
    or device at `path` is refused first (CifarError), and rename never writes through a link anyway.
    """
    path = Path(path)
    refuse_unless_ours(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a saved result should read like any file
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    sync_folder(path.parent)


def sync_folder(folder: Path) -> None:
    """Make renames and deletions in `folder` durable."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory; the files themselves are safe


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
