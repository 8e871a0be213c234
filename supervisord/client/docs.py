"""Event documents as the socket takes them (SPEC §3.1): built, and made ready to send."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Protocol

from supervisord.core.errors import EventError


class IdSource(Protocol):
    def next(self) -> str: ...


def event(
    name: str,
    type: str,
    job: int | Mapping[str, Any],
    *,
    subid: int | None = None,
    work: str | None = None,
    host: str | None = None,
    event_id: str | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """An event document as the socket takes it (SPEC §3.1), for ``Client.emit_many``.

    ``job`` is the job id, or the whole job object (with ``id``); None arguments are left
    out; ``fields`` are further top-level fields (``time``, site fields), kept as given.
    """
    doc: dict[str, Any] = {"op": "event", "name": name, "type": type}
    doc["job"] = {"id": job} if isinstance(job, int) else dict(job)
    optional = {"subid": subid, "work": work, "host": host, "event_id": event_id}
    return doc | {key: value for key, value in optional.items() if value is not None} | fields


def prepare(given: Mapping[str, Any], ids: IdSource) -> dict[str, Any]:
    """The doc as sent: op ``event``, an event_id, and the time it was emitted, so that a
    resend or a flush an hour later does not change when the event happened."""
    doc = dict(given)
    if doc.setdefault("op", "event") != "event":
        raise ValueError(f"not an event: op {doc['op']!r} (emit sends events only)")
    if doc.get("event_id") is None:
        doc["event_id"] = ids.next()
    doc.setdefault("time", time.time())
    return doc


def invalid_reply(exc: EventError) -> dict[str, Any]:
    """The reply the daemon gives an invalid event (SPEC §3.1), made here."""
    error = {"code": "invalid_event", "message": str(exc)}
    return {"ok": False, "error": error, "field": exc.field}
