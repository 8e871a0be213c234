"""What sending an event comes to: the acknowledgement, and the errors that end a delivery."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from supervisord.client.connection import ProtocolError, Unreachable
from supervisord.core.errors import QbError


@dataclass(frozen=True, slots=True)
class Ack:
    """The daemon's acknowledgement of one event (SPEC §3.1), or the spool's.

    ``seq`` is the event's number in the daemon's journal and ``matched`` the callbacks it
    fires. ``duplicate`` is true when the daemon already had this ``event_id`` — from an
    earlier emit, another client, or an earlier attempt of this one whose reply was lost —
    and then nothing new runs and ``matched`` is empty. ``spooled`` is true when the event
    could not be delivered before the deadline and was written to the spool instead: then
    ``seq`` is None and ``matched`` is empty; a later emit or ``flush`` delivers it.
    """

    event_id: str
    seq: int | None
    matched: tuple[str, ...] = ()
    duplicate: bool = False
    spooled: bool = False

    @classmethod
    def from_reply(cls, reply: Mapping[str, Any], sent_id: str) -> Ack:
        """The ack in an ``ok`` reply; ProtocolError when it is not one."""
        seq, matched = reply.get("seq"), reply.get("matched", [])
        if not isinstance(seq, int) or not isinstance(matched, list):
            raise ProtocolError(f"an event reply without seq or matched: {dict(reply)!r}")
        event_id = reply.get("event_id")
        return cls(
            event_id=event_id if isinstance(event_id, str) else sent_id,
            seq=seq,
            matched=tuple(str(name) for name in matched),
            duplicate=reply.get("duplicate") is True,
        )

    def as_reply(self) -> dict[str, Any]:
        """The ack as the daemon's reply line reads (plus ``spooled`` when it was)."""
        doc: dict[str, Any] = {"ok": True, "seq": self.seq, "event_id": self.event_id}
        doc |= {"duplicate": self.duplicate, "matched": list(self.matched)}
        return doc | ({"spooled": True} if self.spooled else {})


@dataclass(frozen=True, slots=True)
class FlushReport:
    """What one flush of the spool did.

    ``delivered`` events were acknowledged and removed; ``rejected`` ones were refused by the
    daemon (``invalid_event`` ...) and moved to ``rejected.ndjson`` in the spool directory;
    ``left`` are still spooled because the daemon could not be reached before the deadline.
    ``busy`` is true when another client held the spool's flush lock until the deadline:
    then this flush sent nothing.
    """

    delivered: int = 0
    rejected: int = 0
    left: int = 0
    busy: bool = False


class Rejected(QbError):
    """The daemon refused a request for good (an ``ok: false`` reply other than
    ``unavailable``): resending it would be refused again, so it is never retried."""

    def __init__(self, reply: Mapping[str, Any], event_id: str | None = None) -> None:
        error = reply.get("error")
        error = error if isinstance(error, Mapping) else {}
        self.code = str(error.get("code", "internal"))
        self.message = str(error.get("message", "no message"))
        self.reply = dict(reply)
        self.event_id = event_id
        where = f" (event_id {event_id})" if event_id else ""
        super().__init__(f"{self.code}: {self.message}{where}")


class BatchRejected(Rejected):
    """``emit_many``: at least one event was refused. Every other event was delivered or
    spooled all the same; ``results`` has one Ack or Rejected per event, in order, and
    the exception itself is the first refusal."""

    def __init__(self, first: Rejected, results: Sequence[Ack | Rejected]) -> None:
        super().__init__(first.reply, first.event_id)
        self.results = list(results)


class Undelivered(Unreachable):
    """Events neither acknowledged before the deadline nor spooled (no spool was given, or
    writing it failed). ``events`` are the wire documents, each with its ``event_id``: sent
    again later, they run nothing twice."""

    def __init__(self, path: str, reason: str, events: Sequence[dict[str, Any]]) -> None:
        self.events = tuple(events)
        super().__init__(path, reason)


class SpoolError(QbError):
    """The spool could not be used: its directory is not writable, or its lock stayed taken."""


def classify(reply: Mapping[str, Any], sent_id: str) -> Ack | Rejected | None:
    """An event's reply as an Ack, a final Rejected, or None: ``unavailable``, send it again."""
    if reply.get("ok") is True:
        return Ack.from_reply(reply, sent_id)
    error = reply.get("error")
    if isinstance(error, Mapping) and error.get("code") == "unavailable":
        return None
    return Rejected(reply, sent_id)
