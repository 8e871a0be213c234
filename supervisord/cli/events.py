"""Events from command-line pieces and NDJSON streams, sent through one Client."""

from __future__ import annotations

import json
import queue
from collections.abc import Generator, Iterable, Iterator, Mapping
from typing import Any

from supervisord.client import Client, Rejected


def split_event_spec(spec: str) -> tuple[str, str]:
    """``failed-job`` -> (``failed``, ``job``): split at the first ``-``."""
    name, dash, type_ = spec.partition("-")
    if not (name and dash and type_):
        raise ValueError(f"expected NAME-TYPE such as complete-job, got {spec!r}")
    return name, type_


def parse_set(item: str) -> tuple[str, Any]:
    """``key=value``: the value as JSON when it parses, else as the string itself."""
    key, eq, text = item.partition("=")
    if not (key and eq):
        raise ValueError(f"--set expects key=value, got {item!r}")
    try:
        return key, json.loads(text)
    except ValueError:
        return key, text


def event_request(
    op: str, spec: str, job: int | None, sets: Iterable[str], fields: Mapping[str, Any]
) -> dict[str, Any]:
    """An ``event``/``match`` request from command-line pieces; ValueError names the
    bad one. ``sets`` go into ``job`` (``job`` wins over ``id=``); None fields are left out.
    """
    name, type_ = split_event_spec(spec)
    if job is None:
        raise ValueError("--job is required")
    job_doc = dict(parse_set(item) for item in sets) | {"id": job}
    doc: dict[str, Any] = {"op": op, "name": name, "type": type_, "job": job_doc}
    return doc | {key: value for key, value in fields.items() if value is not None}


Entry = tuple[int, dict[str, Any] | str]  # (line number, request, or why it cannot be sent)


def read_ndjson(lines: Iterable[str]) -> Iterator[Entry]:
    """Number the non-blank lines of an NDJSON stream and parse each."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except ValueError as exc:
            yield number, f"not JSON: {exc}"
            continue
        yield number, doc if isinstance(doc, dict) else "not a JSON object"


def send_entries(client: Client, entries: Iterable[Entry]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Send the sendable entries through ``client`` (pipelined, resent, spooled as it
    does); yield ``(number, reply)`` for every entry, in order: the daemon's reply, or
    the ack's or refusal's reply form (``spooled: true`` for a spooled event).

    An entry that cannot be sent gets a local ``bad_json`` reply in its place.
    """
    order: queue.SimpleQueue[Entry] = queue.SimpleQueue()

    def docs() -> Iterator[dict[str, Any]]:
        for number, doc in entries:
            if isinstance(doc, dict) and doc.get("op", "event") != "event":
                doc = f"not an event (op {doc.get('op')!r}): emit sends events only"
            order.put((number, doc))  # before it is sent, so it is queued when its reply arrives
            if isinstance(doc, dict):
                yield doc

    for outcome in client.emit_each(docs()):
        number = yield from _until_sendable(order)
        yield number, outcome.reply if isinstance(outcome, Rejected) else outcome.as_reply()
    yield from _until_sendable(order)


def _until_sendable(
    order: queue.SimpleQueue[Entry],
) -> Generator[tuple[int, dict[str, Any]], None, int]:
    """Yield local replies for the unsendable entries queued before the next sendable
    one; return that one's number (0 when none is left)."""
    while not order.empty():
        number, doc = order.get()
        if isinstance(doc, dict):
            return number
        yield number, {"ok": False, "line": number, "error": {"code": "bad_json", "message": doc}}
    return 0
