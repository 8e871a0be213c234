"""``Client``: events sent until acknowledged, spooled when the daemon stays away; thin calls."""

from __future__ import annotations

import logging
import os
import socket as _socket
import time
from collections.abc import Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, Final, cast

from supervisord.client.acks import (
    Ack,
    BatchRejected,
    FlushReport,
    Rejected,
    SpoolError,
    Undelivered,
)
from supervisord.client.connection import Connection
from supervisord.client.docs import event, invalid_reply, prepare
from supervisord.client.locate import find_qbconf, find_socket
from supervisord.client.send import EventIds, Sender
from supervisord.client.spool import Spool
from supervisord.core.errors import EventError
from supervisord.core.events import validate_event

log = logging.getLogger(__name__)

DEFAULT_DEADLINE_S: Final = 60.0  # a daemon restarted for an upgrade is back well within it
DEFAULT_TIMEOUT_S: Final = 30.0  # for one reply: a healthy daemon answers in milliseconds
DEFAULT_WAIT_S: Final = 660.0  # the default callback timeout, the kill grace, and some room


class Client:
    """A job submission client of the qbcallbacks daemon.

    ``socket`` is found as the command line finds it when not given (``config``, else
    ``$QB_CONF``, ``/etc/qb.conf``, ``$QBDIR/etc/qb.conf``, else the default path; an
    invalid qb.conf raises ConfigErrors). Every event is given an ``event_id`` if it has
    none, and sent; after a lost reply, a refused or missing socket or an ``unavailable``
    reply it is sent again, unchanged, with backoff, until acknowledged or until
    ``deadline`` seconds pass without an answer. Then it is written to the ``spool``
    directory if there is one, else ``Undelivered`` is raised. The daemon runs an event id
    once, so resending is always safe. ``timeout`` bounds the wait for one reply; ``env``
    replaces ``os.environ`` for finding the socket. Not thread-safe: one Client per thread.
    """

    def __init__(
        self,
        socket: str | None = None,
        config: str | None = None,
        *,
        deadline: float = DEFAULT_DEADLINE_S,
        spool: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        env: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if env is None else env
        self.socket_path, self.socket_how = find_socket(socket, find_qbconf(config, env), env)
        self.deadline = deadline
        self.spool = Spool(spool) if spool else None
        self._sender = Sender(self.socket_path, timeout)
        self._ids = EventIds(_socket.gethostname())

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (the next call opens a new one)."""
        self._sender.close()

    @property
    def last_error(self) -> str:
        """Why the last failed attempt to deliver failed, in words."""
        return self._sender.last_error

    # --- events ---

    def emit(
        self,
        name: str,
        type: str,
        job: int | Mapping[str, Any],
        *,
        subid: int | None = None,
        work: str | None = None,
        host: str | None = None,
        event_id: str | None = None,
        **fields: Any,
    ) -> Ack:
        """Send one event and return its acknowledgement (``spooled`` if it went to the spool).

        Spooled events are delivered first, in order. Raises Rejected when the daemon
        refuses the event (``invalid_event``: never retried) and Undelivered when it was
        neither acknowledged before the deadline nor spooled.
        """
        doc = event(name, type, job, subid=subid, work=work, host=host, event_id=event_id, **fields)
        (outcome,) = self.emit_each([doc])
        if isinstance(outcome, Rejected):
            raise outcome
        return outcome

    def emit_many(self, events: Iterable[Mapping[str, Any]]) -> list[Ack]:
        """Send events pipelined on one connection; one Ack per event, in order.

        Each event is a document as ``event()`` builds it. After a reconnect the ones not
        yet acknowledged are sent again, in order. Raises BatchRejected, once every other
        event is delivered or spooled, when the daemon refused some; Undelivered as emit.
        """
        results = list(self.emit_each(events))
        refused = [result for result in results if isinstance(result, Rejected)]
        if refused:
            raise BatchRejected(refused[0], results)
        return cast(list[Ack], results)

    def emit_each(self, events: Iterable[Mapping[str, Any]]) -> Iterator[Ack | Rejected]:
        """``emit_many`` as a generator that reads ``events`` lazily (a stream may be
        endless) and yields a refusal as a Rejected instead of raising it."""
        docs = (prepare(doc, self._ids) for doc in events)
        reason = self._flush_first()
        if reason is not None:  # sending ahead of the spooled events would reorder them
            yield from self._spool_or_raise(list(docs), reason)
            return
        undelivered = []
        for doc, outcome in self._sender.deliver(docs, self.deadline):
            if outcome is None:
                undelivered.append(doc)
            else:
                yield outcome
        if undelivered:
            yield from self._spool_or_raise(undelivered, self._sender.last_error)

    def flush(self) -> FlushReport:
        """Deliver the spooled events, oldest first, removing each only once acknowledged.

        One client flushes a spool at a time; another waits up to the deadline for its
        turn, then gives up (``busy``). The daemon runs an event id once, so a flush cut off
        midway and repeated runs nothing twice.
        """
        if self.spool is None:
            raise SpoolError("this Client has no spool")
        spool = self.spool
        if not spool.has_events():
            return FlushReport()
        with spool.flushing(self.deadline) as held:
            if not held:
                return FlushReport(busy=True)
            snap = spool.snapshot()
            docs = [doc for _, doc in snap.entries]
            outcomes = [outcome for _, outcome in self._sender.deliver(docs, self.deadline)]
            keep: list[bytes] = []
            refused = [(line, "not a JSON object") for line in snap.bad]
            for (line, _), outcome in zip(snap.entries, outcomes, strict=True):
                if outcome is None:
                    keep.append(line)
                elif isinstance(outcome, Rejected):
                    refused.append((line, str(outcome)))
            spool.reject(refused)
            spool.commit(snap, keep)
        delivered = sum(isinstance(outcome, Ack) for outcome in outcomes)
        if refused:
            log.warning("spool rejected count=%d file=%s", len(refused), spool.rejected_path)
        log.info(
            "spool flushed delivered=%d left=%d spool=%s", delivered, len(keep), spool.directory
        )
        return FlushReport(delivered, len(refused), len(keep))

    def _flush_first(self) -> str | None:
        """None once the spool is empty (or there is none); else why it could not be."""
        if self.spool is None or not self.spool.has_events():
            return None
        try:
            report = self.flush()
        except (OSError, SpoolError) as exc:  # a broken spool must not stop live events
            log.warning("spool unusable spool=%s error=%r", self.spool.directory, str(exc))
            return None
        if report.busy:
            return f"another client kept spool {self.spool.directory} locked"
        return self._sender.last_error if report.left else None

    def _spool_or_raise(self, docs: list[dict[str, Any]], reason: str) -> list[Ack | Rejected]:
        """Spool the docs (those the daemon would refuse are refused here instead)."""
        count = f"{len(docs)} event{'s' if len(docs) != 1 else ''}"
        why = f"{count} not delivered in {self.deadline:g} s: {reason}"
        if self.spool is None:
            raise Undelivered(self.socket_path, why, docs)
        results: list[Ack | Rejected] = []
        good = []
        for doc in docs:
            try:
                validate_event(doc, time.time())
            except EventError as exc:
                results.append(Rejected(invalid_reply(exc), doc.get("event_id")))
                continue
            good.append(doc)
            results.append(Ack(str(doc["event_id"]), None, spooled=True))
        try:
            self.spool.append(good)
        except (OSError, SpoolError) as exc:
            failed = f"{why}; spooling to {self.spool.directory} failed too: {exc}"
            raise Undelivered(self.socket_path, failed, docs) from exc
        log.info("spooled count=%d spool=%s reason=%r", len(good), self.spool.directory, reason)
        return results

    # --- thin calls: one request each, no resend ---

    def request(self, doc: Mapping[str, Any], *, timeout: float | None = None) -> dict[str, Any]:
        """Send any request once and return its reply as it came, ``ok`` or not.

        Raises Unreachable or ProtocolError; ``timeout`` overrides the Client's for this
        reply. Events sent this way get no event_id and no resend: use emit.
        """
        return self._sender.request(dict(doc), timeout)

    def status(self) -> dict[str, Any]:
        """The daemon's status reply (SPEC §3.2): counts, config, breakers."""
        return self._call({"op": "status"})

    def history(
        self,
        *,
        job: int | None = None,
        callback: str | None = None,
        outcome: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Callback runs, newest first (the daemon's default limit is 100)."""
        fields = {"job": job, "callback": callback, "outcome": outcome, "limit": limit}
        doc = {"op": "history"} | {key: value for key, value in fields.items() if value is not None}
        return list(self._call(doc).get("runs") or [])

    def match(
        self, name: str, type: str, job: int | Mapping[str, Any], **fields: Any
    ) -> tuple[str, ...]:
        """The callbacks the event would fire now: a dry run, nothing stored or run."""
        doc = event(name, type, job, **fields) | {"op": "match"}
        return tuple(self._call(doc).get("matched") or ())

    def wait(self, seq: int, timeout: float = DEFAULT_WAIT_S) -> bool:
        """Whether every callback of the events up to ``seq`` finished within ``timeout`` s."""
        doc = {"op": "wait", "seq": seq, "timeout": timeout}
        return self._call(doc, timeout + self._sender.timeout).get("done") is True

    def subscribe(self, since: int | None = None) -> Iterator[dict[str, Any]]:
        """Action lines (SPEC §3.2 ``subscribe``), after ``since`` when given, until the
        connection ends. Uses a connection of its own."""
        doc: dict[str, Any] = {"op": "subscribe"}
        return self._stream(doc if since is None else doc | {"since": since})

    def tail(self) -> Iterator[dict[str, Any]]:
        """Run lines as callbacks start and end, until the connection ends."""
        return self._stream({"op": "tail"})

    def _call(self, doc: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        reply = self.request(doc, timeout=timeout)
        if reply.get("ok") is not True:
            raise Rejected(reply)
        return reply

    def _stream(self, doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
        with Connection(self.socket_path, self._sender.timeout) as conn:
            reply = conn.request(doc)
            if reply.get("ok") is not True:
                raise Rejected(reply)
            conn.settimeout(None)  # a quiet farm sends nothing for hours
            yield from conn.stream()
