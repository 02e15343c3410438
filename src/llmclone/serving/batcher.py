"""Requests queued onto the one model, decoded together: whatever waits when the model is free is one batch.

A GPU reads the weights once per decode step whatever the batch size, so 16 conversations answered together
cost little more than one (benchmarks/gpu_inference.py measures it). Jobs keep their arrival order, their own
sampling settings and their own streaming callbacks; a job whose client went away stops at the next token.
On shutdown (`stop`) the batch being decoded stops at its next token and every job fails with `Stopping`.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any


class Stopping(RuntimeError):
    """The server is shutting down: the job was stopped or never started."""


@dataclass
class Job:
    history: list[dict[str, str]]
    sampling: dict[str, Any]
    on_message: Callable[[str], None] | None = None
    cancelled: Callable[[], bool] | None = None
    chat: str | None = None  # the chat's key, for memory (LLMClone.reply)
    future: Future = field(default_factory=Future)


class Batcher:
    def __init__(self, clone: Any, max_batch: int = 16, gather_seconds: float = 0.005,
                 longest_gather: float = 0.05) -> None:
        self.clone, self.max_batch, self.gather, self.longest = clone, max_batch, gather_seconds, longest_gather
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.batches: list[int] = []  # sizes of the batches run (for tests and /health)
        self.stopping = threading.Event()
        self.lock = threading.Lock()  # no job is queued behind the stop marker
        self.pending = 0  # submitted and not yet answered (/health)
        self.thread = threading.Thread(target=self._run, name="llmclone-batcher", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> Future:
        with self.lock:
            if self.stopping.is_set():
                job.future.set_exception(Stopping())
                return job.future
            self.pending += 1
            self.jobs.put(job)
        job.future.add_done_callback(self._answered)
        return job.future

    def _answered(self, _: Future) -> None:
        with self.lock:
            self.pending -= 1

    def stop(self) -> None:
        """Shut down now: the batch being decoded stops at its next token; it and every waiting job fail."""
        with self.lock:
            self.stopping.set()
            self.jobs.put(None)

    def close(self) -> None:
        self.jobs.put(None)
        self.thread.join(timeout=5)

    def _gone(self, job: Job) -> Callable[[], bool]:
        return lambda: self.stopping.is_set() or (job.cancelled is not None and job.cancelled())

    def _run(self) -> None:
        while (first := self.jobs.get()) is not None:
            if self.stopping.is_set():
                first.future.set_exception(Stopping())
                continue
            batch = [first]
            # Requests that arrive together come a little apart (each is parsed first): gather while the next
            # comes within `gather` of the last, for at most `longest`; a batch started without them would
            # make them wait for its whole reply.
            latest = time.monotonic() + self.longest
            while len(batch) < self.max_batch:
                try:
                    job = self.jobs.get(timeout=max(0.0, min(self.gather, latest - time.monotonic())))
                except queue.Empty:
                    break
                if job is None:
                    self.jobs.put(None)  # stop after this batch
                    break
                batch.append(job)
            live = [j for j in batch if not (j.cancelled is not None and j.cancelled())]
            for j in batch:
                if j not in live:
                    j.future.cancel()
            if not live:
                continue
            self.batches.append(len(live))
            try:
                replies = self.clone.replies([j.history for j in live], on_messages=[j.on_message for j in live],
                                             samplings=[j.sampling for j in live],
                                             cancelled=[self._gone(j) for j in live], chats=[j.chat for j in live])
            except BaseException as err:  # each waiting request gets the error, the worker goes on
                for j in live:
                    j.future.set_exception(err)
                continue
            for j, r in zip(live, replies, strict=True):
                if self.stopping.is_set():
                    j.future.set_exception(Stopping())
                else:
                    j.future.set_result(r)
        while True:  # stopped: whatever still waits fails too, none is left hanging
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                job.future.set_exception(Stopping())
