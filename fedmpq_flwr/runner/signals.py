"""Stop signals as an exception, so that cleanup runs: shared by the runner and the launcher.

`timeout`, batch schedulers and `kill -TERM -PGID` signal a whole process group, and Python's
default SIGTERM action ends a process without running `finally` blocks. Inside `stop_signals()`
the first SIGTERM, SIGINT (Ctrl-C) or SIGHUP raises `Stopped` in the main thread; later ones are
ignored, so the cleanup it triggers is not cut short by a second signal. Other threads (the
runner's `--jobs` workers) cannot be interrupted: they ask `stop_received()`.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_received: list[int] = []  # the stop signal that arrived inside the current `stop_signals()` block


class Stopped(BaseException):
    """A stop signal arrived; like KeyboardInterrupt, not caught by `except Exception`."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a process ended by it."""
        return 128 + self.signum


@contextmanager
def stop_signals() -> Iterator[None]:
    """Within the block, stop signals raise `Stopped` once; the previous handlers come back after it."""
    _received.clear()

    def handler(signum: int, frame: object) -> None:
        if _received:
            return
        _received.append(signum)
        raise Stopped(signum)

    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
        _received.clear()


def stop_received() -> int:
    """The stop signal that arrived inside `stop_signals()` (0: none): how a thread other than the
    main one learns that the process is stopping."""
    return _received[0] if _received else 0
