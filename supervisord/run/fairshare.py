"""Runs ready to start, taken round robin over callbacks within their caps (SPEC §7.5).

One FIFO per callback (named by its file, as policy.yaml names it); the next free slot goes
to the next callback in turn that has a run waiting and room under its ``concurrency`` and
``rate``. A flood of one slow callback so delays another callback's next run by at most one
turn, instead of by the whole flood.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from supervisord.core.delivery import TokenBucket
from supervisord.core.model import Callback
from supervisord.core.policy import DEFAULT_POLICY, Policy
from supervisord.core.runtypes import RunRequest

Ready = tuple[RunRequest, float]  # a run and the monotonic time it was queued


def no_policy(_cb: Callback) -> Policy:
    return DEFAULT_POLICY


class ReadyQueue:
    """The ready runs of every callback; `pop` gives the next one allowed to start."""

    def __init__(self, policy_of: Callable[[Callback], Policy] = no_policy) -> None:
        self.policy_of = policy_of  # swapped by reload; caps apply to runs not yet started
        self._queues: dict[str, deque[Ready]] = {}
        self._ring: deque[str] = deque()  # callbacks with runs waiting, in turn order
        self._served: str | None = None  # the callback that had the last turn
        self._running: dict[str, int] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self._size = 0
        self.next_token: float | None = None  # when a rate-capped callback may start again

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def push(self, req: RunRequest, since: float) -> None:
        file = req.callback.file
        queue = self._queues.get(file)
        if queue is None:
            queue = self._queues[file] = deque()
            ring = self._ring
            if ring and ring[-1] == self._served:  # ahead of the one that just had its turn
                ring.insert(len(ring) - 1, file)
            else:
                ring.append(file)
        queue.append((req, since))
        self._size += 1

    def extend(self, items: Iterable[Ready]) -> None:
        for req, since in items:
            self.push(req, since)

    def pop(self, now: float) -> Ready | None:
        """The next run allowed to start, its callback's turn taken; None if none may now."""
        self.next_token = None
        for _ in range(len(self._ring)):
            file = self._ring[0]
            self._ring.rotate(-1)
            queue = self._queues[file]
            if not self._may_start(file, queue[0][0].callback, now):
                continue
            item = queue.popleft()
            self._served = file
            self._size -= 1
            if not queue:
                del self._queues[file]
                self._ring.remove(file)
            self._running[file] = self._running.get(file, 0) + 1
            return item
        return None

    def _may_start(self, file: str, cb: Callback, now: float) -> bool:
        policy = self.policy_of(cb)
        if policy.is_default:
            return True
        cap = policy.concurrency
        if cap is not None and self._running.get(file, 0) >= cap:
            return False
        if policy.rate is None:
            return True
        bucket = self._buckets.get(file)
        if bucket is None:
            bucket = self._buckets[file] = TokenBucket(policy.rate, now)
        wait = bucket.take(now)
        if wait > 0:
            at = now + wait
            self.next_token = at if self.next_token is None else min(self.next_token, at)
            return False
        return True

    def finished(self, req: RunRequest) -> None:
        file = req.callback.file
        left = self._running.get(file, 1) - 1
        if left:
            self._running[file] = left
        else:
            self._running.pop(file, None)

    def oldest(self) -> float | None:
        """The monotonic time the longest-waiting ready run was queued."""
        return min((q[0][1] for q in self._queues.values()), default=None)

    def counts(self) -> dict[str, dict[str, Any]]:
        """Per callback: runs running and ready to start."""
        names = self._running.keys() | self._queues.keys()
        return {
            name: {"running": self._running.get(name, 0), "queued": len(self._queues.get(name, ()))}
            for name in names
        }
