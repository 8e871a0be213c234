"""The run queue: bounded concurrency, per-job order, and `wait` bookkeeping."""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final

from supervisord.core.runtypes import RunRequest
from supervisord.run.fairshare import ReadyQueue

log = logging.getLogger(__name__)

# Default queued runs beyond which intake stops reading new requests (replies are delayed,
# nothing is dropped); it resumes below half of it. Each queued run costs about 2 KiB.
DEFAULT_QUEUE_LIMIT: Final = 20_000
# Events numbered plus runs finished since the last `on_idle` call before the next one is
# due: releasing memory costs a few milliseconds, so a daemon that drains after every run
# at low load pays it once per this much work (bench/b_rss.py).
IDLE_WORK: Final = 1000

# A job's chain: the seq groups of its events whose runs have not all finished, oldest
# first; the first is released (its runs are ready or running). A list, not a deque: most
# chains hold one group, and a deque costs about 630 bytes however short it is.
_Group = tuple[int, list[RunRequest], float]  # (seq, its runs, monotonic time queued)


def _job_key(req: RunRequest) -> Any:
    job = req.event_doc.get("job")
    return job.get("id") if isinstance(job, dict) else None


class Scheduler:
    """Starts runs in order, at most `concurrency` at once; a job's later event waits for
    every run of its earlier events to finish when `per_job_order` is on."""

    def __init__(
        self,
        concurrency: int,
        per_job_order: bool,
        execute: Callable[[RunRequest], Awaitable[None]],
        queue_limit: int = DEFAULT_QUEUE_LIMIT,
    ) -> None:
        self.concurrency = concurrency
        self.queue_limit = queue_limit
        self.per_job_order = per_job_order
        self._execute = execute
        self._ready = ReadyQueue()  # round robin over callbacks, within their caps
        self._chains: dict[Any, list[_Group]] = {}
        self._chain_left: dict[Any, int] = {}
        self._held = 0
        self.running = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._outstanding: dict[int, int] = {}
        self._heap: list[int] = []
        self._waiters: list[tuple[int, asyncio.Future[bool]]] = []
        self.last_seq = 0
        self.closing = False
        self.on_drained: Callable[[], None] | None = None
        # Called when nothing runs or waits any more, once IDLE_WORK has been done since
        # the previous call: the moment to give memory back (supervisord/daemon/memory.py).
        self.on_idle: Callable[[], None] | None = None
        self._work = 0
        self._token_timer: asyncio.TimerHandle | None = None

    @property
    def queued(self) -> int:
        return len(self._ready) + self._held

    def oldest_queued_age(self) -> float:
        """Seconds the longest-waiting queued run has waited (0 when nothing waits)."""
        oldest = self._ready.oldest()
        since = [] if oldest is None else [oldest]
        since += [chain[1][2] for chain in self._chains.values() if len(chain) > 1]
        return max(0.0, time.monotonic() - min(since)) if since else 0.0

    def submit(self, reqs: Iterable[RunRequest]) -> None:
        now = time.monotonic()
        by_seq: dict[int, list[RunRequest]] = {}
        for req in reqs:
            by_seq.setdefault(req.seq, []).append(req)
            if req.seq not in self._outstanding:
                heapq.heappush(self._heap, req.seq)
            self._outstanding[req.seq] = self._outstanding.get(req.seq, 0) + 1
        for seq, group in by_seq.items():
            key = _job_key(group[0])
            # Retries and replays are not held back by the job's later events (SPEC §7.2).
            first = group[0].attempt == 1 and not group[0].replayed
            if not self.per_job_order or key is None or not first:
                self._ready.extend((req, now) for req in group)
                continue
            chain = self._chains.setdefault(key, [])
            chain.append((seq, group, now))
            if len(chain) == 1:
                self._release(key)
            else:
                self._held += len(group)
        self._dispatch()

    def note_seq(self, last_seq: int) -> None:
        """The sequencer numbered events up to `last_seq`: waiters may be done now."""
        self._work += max(0, last_seq - self.last_seq)
        self.last_seq = max(self.last_seq, last_seq)
        self._wake_waiters()

    async def wait(self, seq: int, timeout: float) -> bool:
        if self.is_done_through(seq):
            return True
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        entry = (seq, future)
        self._waiters.append(entry)
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return False
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)

    def is_done_through(self, seq: int) -> bool:
        while self._heap and self._heap[0] not in self._outstanding:
            heapq.heappop(self._heap)
        lowest = self._heap[0] if self._heap else None
        return seq <= self.last_seq and (lowest is None or lowest > seq)

    async def drain(self) -> None:
        """Stop starting runs; wait for the running ones (each bounded by its timeout)."""
        self.closing = True
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- internals -------------------------------------------------------------------------

    def _release(self, key: Any) -> None:
        chain = self._chains[key]
        _, group, since = chain[0]
        self._chain_left[key] = len(group)
        self._ready.extend((req, since) for req in group)

    def per_callback(self) -> dict[str, dict[str, Any]]:
        """Runs running and ready to start, by callback file."""
        return self._ready.counts()

    def set_policies(self, policy_of: Callable[[Any], Any]) -> None:
        """Caps for the runs not yet started (at start and at reload)."""
        self._ready.policy_of = policy_of
        self._dispatch()

    def _dispatch(self) -> None:
        while self._ready and self.running < self.concurrency and not self.closing:
            ready = self._ready.pop(time.monotonic())
            if ready is None:  # every waiting callback is at its cap or out of tokens
                self._wake_at_next_token()
                return
            req = ready[0]
            self.running += 1
            task = asyncio.ensure_future(self._run(req))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, req: RunRequest) -> None:
        try:
            await self._execute(req)
        except Exception:  # contained: one failed run never stops the queue
            log.exception("run crashed run_id=%d seq=%d", req.run_id, req.seq)
        finally:
            self.running -= 1
            self._ready.finished(req)
            self._finished(req)
            self._dispatch()

    def _wake_at_next_token(self) -> None:
        at = self._ready.next_token
        if at is None or self._token_timer is not None:
            return
        loop = asyncio.get_running_loop()

        def wake() -> None:
            self._token_timer = None
            self._dispatch()

        self._token_timer = loop.call_later(max(0.0, at - time.monotonic()), wake)

    def _finished(self, req: RunRequest) -> None:
        left = self._outstanding[req.seq] - 1
        if left:
            self._outstanding[req.seq] = left
        else:
            del self._outstanding[req.seq]
        key = _job_key(req)
        if key in self._chain_left:
            self._advance_chain(key)
        self._work += 1
        self._note_idle()  # before the waiters: what they ask next sees the memory given back
        self._wake_waiters()
        if self.on_drained is not None:
            self.on_drained()

    def _note_idle(self) -> None:
        if self.running or self.queued or self._work < IDLE_WORK:
            return
        self._work = 0
        # A dict keeps the table of its largest size: start afresh once empty.
        if not self._outstanding:
            self._outstanding = {}
        if not self._chains:
            self._chains, self._chain_left = {}, {}
        if self.on_idle is not None:
            self.on_idle()

    def _advance_chain(self, key: Any) -> None:
        self._chain_left[key] -= 1
        if self._chain_left[key]:
            return
        chain = self._chains[key]
        del chain[0]
        del self._chain_left[key]
        if not chain:
            del self._chains[key]
            return
        self._held -= len(chain[0][1])
        self._release(key)

    def _wake_waiters(self) -> None:
        for seq, future in list(self._waiters):
            if not future.done() and self.is_done_through(seq):
                future.set_result(True)
