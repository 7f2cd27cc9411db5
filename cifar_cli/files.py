"""Files from users and for users: inputs checked before they are read whole, outputs written atomically."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from cifar_cli.errors import CifarError


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


def check_output(path: Path, suffix: str, what: str) -> Path:
    """An output file name that says what it holds, and is not a device or folder we would write into."""
    path = Path(path).expanduser()
    if path.suffix.lower() != suffix:
        raise CifarError(f"{what} {path} must end in {suffix}: that is the format written")
    if path.exists() and not path.is_file():
        raise CifarError(f"{what} {path} exists and is not a regular file")
    return path


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a reader sees the old file or the new one, never half of either."""
    path = Path(path)
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
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory; the file itself is safe


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
