"""Validation of client event documents (SPEC §3.1) into Event values."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

from .errors import EventError
from .model import CLIENT_TYPES, EVENT_NAMES, Event

# Long enough for "<farm>-<host>-<counter>" ids, short enough to index cheaply.
MAX_EVENT_ID: Final = 128
_MISSING: Final = object()
_NAMES_TEXT: Final = ", ".join(sorted(EVENT_NAMES))
_TYPES_TEXT: Final = ", ".join(CLIENT_TYPES)


def describe(value: Any) -> str:
    """A short description of a JSON value for error messages: ``string '12'``."""
    if value is _MISSING:
        return "nothing"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {'true' if value else 'false'}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"float {value!r}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"string {shown!r}"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    return type(value).__name__


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _fail(field: str, expected: str, value: Any) -> EventError:
    return EventError(field, f"expected {expected}, got {describe(value)}")


def validate_event(doc: Mapping[str, Any], now: float) -> Event:
    """Check ``doc`` against SPEC §3.1 and build an Event; raise EventError naming the field."""
    if not isinstance(doc, Mapping):
        raise _fail("event", "a JSON object", doc)
    op = doc.get("op", "event")
    if op != "event":
        raise _fail("op", "'event'", op)
    name = doc.get("name", _MISSING)
    if not isinstance(name, str) or name not in EVENT_NAMES:
        raise _fail("name", f"an event name ({_NAMES_TEXT})", name)
    kind = doc.get("type", _MISSING)
    if not isinstance(kind, str) or kind not in CLIENT_TYPES:
        raise _fail("type", f"an event type ({_TYPES_TEXT})", kind)
    job_id = _job_id(doc.get("job", _MISSING))
    subid = _subid(doc.get("subid", _MISSING), required=kind == "subjob")
    work = _work(doc.get("work", _MISSING), required=kind == "work")
    host = _host(doc.get("host", _MISSING), required=kind == "host")
    time = doc.get("time")
    if time is None:
        time = now
    elif not _is_number(time):
        raise _fail("time", "a number (Unix seconds)", time)
    event_id = _event_id(doc.get("event_id"))
    fields = {key: value for key, value in doc.items() if key != "op"}
    fields["time"] = time
    if work is not None:
        fields["work"] = work
    return Event(
        name=name,
        type=kind,
        job_id=job_id,
        subid=subid,
        work=work,
        host=host,
        time=float(time),
        event_id=event_id,
        doc=fields,
    )


def _job_id(job: Any) -> int:
    if not isinstance(job, Mapping):
        raise _fail("job", "an object with an 'id'", job)
    job_id = job.get("id", _MISSING)
    if not _is_int(job_id) or job_id < 0:
        raise _fail("job.id", "a non-negative integer", job_id)
    return int(job_id)


def _subid(value: Any, *, required: bool) -> int | None:
    if (value is None or value is _MISSING) and not required:
        return None
    if not _is_int(value) or value < 0:
        raise _fail("subid", "a non-negative integer", value)
    return int(value)


def _work(value: Any, *, required: bool) -> str | None:
    if (value is None or value is _MISSING) and not required:
        return None
    if _is_int(value):
        return str(value)
    if not isinstance(value, str) or value == "":
        raise _fail("work", "a work name (a non-empty string or an integer)", value)
    return value


def _host(value: Any, *, required: bool) -> str | None:
    if (value is None or value is _MISSING) and not required:
        return None
    if not isinstance(value, str) or value == "":
        raise _fail("host", "a host name (a non-empty string)", value)
    return value


def _event_id(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_EVENT_ID:
        raise _fail("event_id", f"a string of 1 to {MAX_EVENT_ID} characters", value)
    return value
