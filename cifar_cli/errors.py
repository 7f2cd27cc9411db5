"""What a user is meant to see of a problem: the one exception type (the CLI prints its message on one
line and exits 2), and the commands that messages suggest."""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from pathlib import Path


class CifarError(Exception):
    """Bad input from the user (a file, a folder, an option): never a bug in cifar-cli."""


def shell_command(argv: Iterable[str | Path]) -> str:
    """A command a message suggests, quoted so that it works pasted into a shell as printed (a path with
    spaces or quotes stays one argument). Every suggested command and option is built here."""
    return shlex.join(str(arg) for arg in argv)
