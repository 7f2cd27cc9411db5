"""Whether a KeyboardInterrupt is the user's Ctrl-C or something code raised itself.

A user's network may raise KeyboardInterrupt (or SystemExit); that is its fault, and must not pass for a
real Ctrl-C, which stops a run cleanly. Real SIGINT and SIGTERM are noted here as they arrive.
"""

from __future__ import annotations

import signal
import threading

_arrived: set[int] = set()  # the signals that really reached this process during the current command


def signal_arrived() -> bool:
    """Whether SIGINT or SIGTERM really reached this process during the current command."""
    return bool(_arrived)


def note_signal(signum: int) -> None:
    _arrived.add(signum)


def interrupt_now(signum: int, frame: object) -> None:
    """Python's own SIGINT handler (raise KeyboardInterrupt), noting that a real signal came."""
    note_signal(signum)
    raise KeyboardInterrupt


class NotedInterrupts:
    """For the length of a command: Ctrl-C interrupts as Python's default handler does, and is noted."""

    def __enter__(self) -> NotedInterrupts:
        _arrived.clear()
        self._previous = None
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, interrupt_now)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
