"""The one exception type a user is meant to see: the CLI prints its message on one line and exits 2."""


class CifarError(Exception):
    """Bad input from the user (a file, a folder, an option): never a bug in cifar-cli."""
