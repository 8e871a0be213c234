"""``emit`` and ``match``: events from options or NDJSON, sent and shown."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping
from typing import Any, Final

from supervisord.cli.common import (
    EVENT,
    EX_ERROR,
    EX_OK,
    WAIT,
    Handler,
    Option,
    connect,
    event_or_usage,
    say,
    show,
    wait_for,
)
from supervisord.cli.events import Entry, read_ndjson, send_entries
from supervisord.core import textfmt


def cmd_emit(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    if args.event == "-":
        return send_stream(args, env, read_ndjson(sys.stdin))
    doc = event_or_usage(args, "event")
    with connect(args, env) as client:
        reply = client.request(doc)
        status = show(args, reply, textfmt.format_event)
        if status or not args.wait:
            return status
        return wait_for(args, client, int(reply["seq"]))


def cmd_match(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    doc = event_or_usage(args, "match")
    with connect(args, env) as client:
        return show(args, client.request(doc), textfmt.format_matched)


def send_stream(args: argparse.Namespace, env: Mapping[str, str], entries: Iterable[Entry]) -> int:
    """Pipeline the entries on one connection; print one result per entry, in order."""
    failures, last_seq = 0, None
    with connect(args, env) as client:
        for number, reply in send_entries(client, entries):
            failures += _show_line(args, number, reply)
            if reply.get("ok") is True and isinstance(reply.get("seq"), int):
                last_seq = max(reply["seq"], last_seq or 0)
        if args.wait and last_seq is not None:
            failures += wait_for(args, client, last_seq)
    return EX_ERROR if failures else EX_OK


def _show_line(args: argparse.Namespace, number: int, reply: dict[str, Any]) -> int:
    """One result of a stream, on stdout either way so lines stay in input order."""
    ok = reply.get("ok") is True
    if args.json:
        say(json.dumps(reply, ensure_ascii=False))
    else:
        say(textfmt.format_event(reply) if ok else f"line {number}: {textfmt.format_error(reply)}")
    return EX_OK if ok else EX_ERROR


OPTIONS: Final[dict[str, tuple[Option, ...]]] = {"emit": (*EVENT, *WAIT), "match": EVENT}
COMMANDS: Final[tuple[tuple[str, str, Handler], ...]] = (
    ("emit", "send an event (NAME-TYPE, or - for NDJSON on stdin)", cmd_emit),
    ("match", "which callbacks an event would fire now (dry run)", cmd_match),
)
