"""Delivery with resend: one connection, reopened as needed, and every event sent until acked."""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import secrets
import time
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any, Final

from supervisord.client.acks import Ack, Rejected, classify
from supervisord.client.connection import Connection, ProtocolError, Unreachable

FIRST_DELAY_S: Final = 0.05  # a daemon restarting under systemd is back within tenths of a second
MAX_DELAY_S: Final = 2.0  # an outage of minutes still gets an attempt every 1-2 s
# The last attempt before the deadline still gets this long to be answered: a healthy
# daemon answers in milliseconds, one committing a large batch on a slow disk in tenths.
MIN_ATTEMPT_S: Final = 1.0
MAX_ID_HOST: Final = 64  # keeps an event_id well under the daemon's 128 characters

Outcome = Ack | Rejected
# Refusals of the client itself rather than of one event: raised, so that no event is
# counted as refused (and a flush moves none aside) for what an administrator must fix.
FATAL: Final = frozenset({"not_allowed"})


class EventIds:
    """Event ids unique to this client: host, pid, start time, a random tag and a counter."""

    def __init__(self, host: str) -> None:
        self._stem = host[:MAX_ID_HOST]
        self._start = f"{time.time_ns() // 1000:x}{secrets.token_hex(2)}"
        self._count = itertools.count(1)

    def next(self) -> str:
        # The pid is read each time so that a forked child never repeats its parent's ids.
        return f"{self._stem}-{os.getpid()}-{self._start}-{next(self._count)}"


class Backoff:
    """Exponential delays with jitter: 50 ms doubling to 2 s, each times a factor in [0.5, 1]."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._delay = FIRST_DELAY_S

    def reset(self) -> None:
        self._delay = FIRST_DELAY_S

    def next(self) -> float:
        delay = self._delay * self._rng.uniform(0.5, 1.0)
        self._delay = min(self._delay * 2, MAX_DELAY_S)
        return delay


class _Again(Exception):
    """This attempt failed in a way that a later one may not: reconnect and resend."""


class Sender:
    """One lazily opened connection to ``path`` and the resend loop around it."""

    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self.last_error = "not tried yet"  # why the last attempt failed, in words
        self._conn: Connection | None = None
        self._rng = random.Random()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def connection(self, timeout: float) -> tuple[Connection, bool]:
        """The open connection (True: it is fresh), its timeout set; raises Unreachable."""
        fresh = self._conn is None
        if self._conn is None:
            self._conn = Connection(self.path, timeout)
        self._conn.settimeout(timeout)
        return self._conn, fresh

    def request(self, doc: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """One request, no resend; a reused connection found broken is reopened once, since
        a daemon restarted since the last call closed it."""
        while True:
            conn, fresh = self.connection(self.timeout if timeout is None else timeout)
            try:
                return conn.request(doc)
            except ProtocolError:
                self.close()
                if fresh:
                    raise

    def deliver(
        self, docs: Iterable[dict[str, Any]], deadline: float
    ) -> Iterator[tuple[dict[str, Any], Outcome | None]]:
        """Send each doc until it is acknowledged or refused; yield ``(doc, outcome)`` in order.

        Lost replies, refused or missing sockets and ``unavailable`` replies make it
        reconnect, after a backoff, and resend every unanswered doc, unchanged, in order.
        When ``deadline`` seconds pass without any reply, the docs not yet answered and the
        rest of ``docs`` are yielded with None: not delivered. A ``not_allowed`` reply is
        raised as Rejected. Iterate to the end: leaving early closes the connection.
        """
        source, backlog = iter(docs), deque[dict[str, Any]]()
        backoff = Backoff(self._rng)
        give_up_at = time.monotonic() + deadline
        while True:
            progressed = False
            try:
                for doc, outcome in self._round(source, backlog, give_up_at):
                    progressed = True
                    give_up_at = time.monotonic() + deadline
                    yield doc, outcome
                return
            except (_Again, Unreachable, ProtocolError) as exc:
                self.last_error = exc.reason if isinstance(exc, Unreachable) else str(exc)
            if progressed:
                backoff.reset()
            remaining = give_up_at - time.monotonic()
            if remaining <= 0:
                break
            # A deliberate pause between attempts, not a wait for something to happen.
            time.sleep(min(backoff.next(), remaining))
        for doc in itertools.chain(backlog, source):
            yield doc, None

    def _round(
        self, source: Iterator[dict[str, Any]], backlog: deque[dict[str, Any]], give_up_at: float
    ) -> Iterator[tuple[dict[str, Any], Outcome]]:
        """One connection's worth: resend the backlog, then pipeline the rest of the source.

        ``backlog`` holds the docs taken from the source and not yet answered, oldest first:
        a doc joins it before it is sent, so whatever breaks, it is resent next round.
        """
        timeout = min(self.timeout, max(give_up_at - time.monotonic(), MIN_ATTEMPT_S))
        conn, _ = self.connection(timeout)
        resend = list(backlog)

        def feed() -> Iterator[dict[str, Any]]:  # runs in the connection's sending thread
            yield from resend
            for doc in source:
                backlog.append(doc)
                yield doc

        finished = False
        try:
            with contextlib.closing(conn.pipeline(feed())) as replies:
                for reply in replies:
                    doc = backlog[0]
                    outcome = classify(reply, str(doc.get("event_id")))
                    if outcome is None:  # shutting down, or its journal cannot write: later
                        raise _Again(f"unavailable: {reply['error'].get('message')}")
                    if isinstance(outcome, Rejected) and outcome.code in FATAL:
                        raise outcome  # about this client, not this event: stop, keep the rest
                    backlog.popleft()
                    yield doc, outcome
            finished = True
        finally:
            if not finished:  # an error, or the caller left early: replies are still owed
                self.close()
