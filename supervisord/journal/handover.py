"""Work handed from the event loop to the sequencer's thread: gathered per loop iteration,
run records allowed to wait a little for company, drained in one go by the thread; and
what a commit hands back to the loop."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from supervisord.core.runtypes import RunRequest
from supervisord.journal.batch import Batch, Finished, Started

# Seconds run start/end records may wait for company before their commit (see _linger).
RUN_RECORD_LINGER: Final = 0.02
# Run records alone wait this long on the loop before they are handed over: every hand-over
# wakes the journal thread, and on a host busy with callbacks each wake-up can cost the
# loop its CPU (two per run cost ~15 % of the loop thread in bench/b_e2e.py).
RECORD_HANDOVER_DELAY: Final = 0.01


class Handover:
    """The queue between the loop (``submit``) and the sequencer's thread (``_drain``,
    ``_linger``); the sequencer sets the attributes named here."""

    _loop: asyncio.AbstractEventLoop
    _queue: queue.SimpleQueue[list[Any]]
    _outbox: list[Any]
    _outbox_lock: threading.Lock
    _soon: bool
    _later: bool
    _on_commit: Callable[[list[RunRequest], float | None], None]
    open_breakers: dict[str, dict[str, Any]]

    def submit(self, item: Any) -> None:
        """Queue work, from the loop thread. What one loop iteration submits goes over in
        one hand-over after it: eight clients answered at once send eight events that wake
        this thread once and share one commit, instead of the first of them committing
        alone while the loop is still reading the others."""
        record = isinstance(item, Started | Finished)
        with self._outbox_lock:
            self._outbox.append(item)
            soon = not record and not self._soon
            later = record and not self._soon and not self._later
            self._soon |= soon
            self._later |= later
        if soon:
            self._loop.call_soon(self._hand_over)
        elif later:  # run records may wait a little: they share a wake-up with others
            self._loop.call_later(RECORD_HANDOVER_DELAY, self._hand_over)

    def _hand_over(self) -> None:
        with self._outbox_lock:
            items, self._outbox = self._outbox, []
            self._soon = self._later = False
        if items:
            self._queue.put(items)

    def _drain(self, items: list[Any]) -> None:
        while True:
            try:
                items += self._queue.get_nowait()
            except queue.Empty:
                return

    def _linger(self, items: list[Any]) -> None:
        """Run records alone need no prompt commit: an unrecorded start or end only means a
        run may be repeated after a crash, which at-least-once allows. Gather them for up to
        RUN_RECORD_LINGER so one fsync serves many runs; anything else ends the wait."""
        deadline = time.monotonic() + RUN_RECORD_LINGER
        while (left := deadline - time.monotonic()) > 0:
            try:
                more = self._queue.get(timeout=left)
            except queue.Empty:
                return
            items += more
            if not all(isinstance(i, Started | Finished) for i in more):
                self._drain(items)
                return

    def _deliver(self, batch: Batch, deadline: float | None) -> None:
        """On the loop: replies go out, new runs are scheduled, queries resolve."""
        if batch.breakers is not None:
            self.open_breakers = batch.breakers
        self._on_commit(batch.new_requests, deadline)
        for future, value in batch.results:
            if not future.done():
                future.set_result(value)
        for done, replies in batch.replies:
            done(replies)
        for future, value, exc in batch.queries:
            if future.done():
                continue
            if exc is not None:
                future.set_exception(exc)
            else:
                future.set_result(value)
