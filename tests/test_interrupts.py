"""A stop asked for by SIGTERM or Ctrl-C is never lost, even where its exception is swallowed."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmclone import interrupts
from llmclone.dataset.io import atomic_dir


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(interrupts, "_requested", False)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, handler in handlers.items():
        signal.signal(s, handler)


def test_a_stop_swallowed_where_it_arrived_still_leaves_no_output(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt), atomic_dir(out) as tmp:
        (tmp / "part").write_text("half")
        with contextlib.suppress(KeyboardInterrupt):  # as Python does with one raised in a __del__
            interrupts._stop(signal.SIGTERM, None)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_signals_held_while_workers_start_arrive_after_the_start(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(interrupts, "_deferring", 0)
    interrupts.install()
    idle = threading.Event()
    other = threading.Thread(target=idle.wait)  # a thread that does not hold the signal may be the one taking it
    other.start()
    try:
        with pytest.raises(KeyboardInterrupt), interrupts.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            pid = os.fork()  # a worker starting: it inherits the hold, so nothing reaches its start-up
            if pid == 0:
                os._exit(0 if signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, []) else 1)
            _, status = os.waitpid(pid, 0)
            (tmp_path / "started").write_text(str(os.WEXITSTATUS(status)))
    finally:
        idle.set()
        other.join()
    assert (tmp_path / "started").read_text() == "0" and interrupts._requested
