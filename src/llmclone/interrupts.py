"""SIGTERM and Ctrl-C as a KeyboardInterrupt that is neither lost nor raised half-way through a start-up.

Python raises a signal handler's exception wherever the main thread happens to be. Inside a callback
whose exceptions Python only prints (an at-fork hook as a worker process starts, a `__del__`) the stop
would vanish and the run go on to finish; inside the start of a worker pool it leaves workers that
outlive the cleanup. So the request is also remembered, and `check()` raises it at the points that must
not be passed once a stop was asked for (between batches of work, before an output is committed); and
`deferred()` holds the signals while workers start.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

_SIGNALS = {signal.SIGINT, signal.SIGTERM}
_requested = False
_deferring = 0


def _stop(signum: int, frame: FrameType | None) -> None:
    global _requested
    _requested = True
    if not _deferring:
        raise KeyboardInterrupt


def install() -> None:
    """Make SIGTERM and SIGINT stop the run as Ctrl-C does (temp files removed, workers shut down)."""
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)


def check() -> None:
    """Raise the stop that was asked for, in case its signal arrived where it could not be raised."""
    if _requested:
        raise KeyboardInterrupt


@contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGTERM and Ctrl-C until the block is done, then raise a stop asked for meanwhile. Another thread
    may take the signal (the mask is per thread), so the handler itself waits too; processes started inside
    inherit the mask and call `release()` once their own handlers are set."""
    global _deferring
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    check()


def release() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
