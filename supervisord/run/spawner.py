"""The spawn threads: launches handed over from the loop, results handed back in batches."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

# Spawns in flight at once: each thread waits out one child's exec (one was measured
# 0.6-0.75x as fast as two with 8 runs at once; a third was no clear gain).
THREADS: Final = 2

T = TypeVar("T")
log = logging.getLogger(__name__)


class Spawner:
    """Runs launches on a few threads of its own, so that neither the loop nor the GIL
    waits for a child's exec. Hand-overs are kept cheap (each one costs a thread wake-up
    and a GIL transfer): jobs go through a queue, results come back in a deque, and the
    loop is woken once for however many results are waiting."""

    def __init__(self, threads: int = THREADS) -> None:
        self._threads = threads
        self._jobs: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        self._done: collections.deque[tuple[_Job[Any], bool, Any]] = collections.deque()
        self._lock = threading.Lock()
        self._woken = False
        self._workers: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def call(
        self,
        job: Callable[[], T],
        after: Callable[[], None] | None,
        discard: Callable[[T | None], None],
    ) -> asyncio.Future[T]:
        """``job()``'s result, run on a spawn thread; ``after()`` (if any) runs on the loop
        once the job is over, whatever happened. If the caller is cancelled meanwhile the
        job still ends, and ``discard`` then gets its result (None if it raised): a child
        is never left behind."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._start(loop)
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put(_Job(job, future, after, discard))
        return future  # a caller cancelled while awaiting cancels it: _deliver() discards

    def close(self) -> None:
        """Wait for the jobs in flight (each a few ms) and end the threads."""
        for _ in self._workers:
            self._jobs.put(None)
        for worker in self._workers:
            worker.join()
        self._workers = []
        self._loop = None
        self._deliver()

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.close()
        self._loop = loop
        for n in range(self._threads):
            worker = threading.Thread(target=self._work, name=f"qb-spawn-{n}", daemon=True)
            worker.start()
            self._workers.append(worker)

    def _work(self) -> None:
        while (item := self._jobs.get()) is not None:
            try:
                done = (item, True, item.fn())
            except BaseException as exc:  # handed to the caller, never lost in this thread
                done = (item, False, exc)
            self._done.append(done)
            with self._lock:
                if self._woken:
                    continue
                self._woken = True
            loop = self._loop
            if loop is not None:
                with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                    loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            self._woken = False
        while self._done:
            item, ok, value = self._done.popleft()
            try:
                if item.after is not None:
                    item.after()
                if item.future.cancelled():
                    item.discard(value if ok else None)
            except Exception:  # a failed cleanup must not leave the other results waiting
                log.exception("spawn cleanup failed")
            if item.future.done():
                continue
            if ok:
                item.future.set_result(value)
            else:
                item.future.set_exception(value)


@dataclass(frozen=True, slots=True)
class _Job(Generic[T]):
    fn: Callable[[], T]
    future: asyncio.Future[T]
    after: Callable[[], None] | None
    discard: Callable[[T | None], None]
