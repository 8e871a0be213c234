"""``emit``, ``match`` and ``flush``: events from options or NDJSON, sent through the Client."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final

from supervisord.cli.common import (
    DEFAULT_TIMEOUT,
    EVENT,
    EX_ERROR,
    EX_OK,
    EX_UNAVAILABLE,
    WAIT,
    Handler,
    Option,
    connect,
    event_or_usage,
    say,
    show,
)
from supervisord.cli.events import Entry, read_ndjson, send_entries
from supervisord.client import Client, FlushReport, Rejected, Undelivered
from supervisord.client.api import DEFAULT_DEADLINE_S
from supervisord.core import textfmt


def client_for(args: argparse.Namespace, env: Mapping[str, str]) -> Client:
    """The Client the options describe (commands without --deadline/--spool: the defaults)."""
    return Client(
        args.socket,
        args.config,
        deadline=max(0.0, getattr(args, "deadline", DEFAULT_DEADLINE_S)),
        spool=getattr(args, "spool", None),
        timeout=args.timeout or DEFAULT_TIMEOUT,
        env=env,
    )


@contextlib.contextmanager
def _explained(client: Client) -> Iterator[None]:
    """Undelivered, with where the socket path came from (exit 69 in main)."""
    try:
        yield
    except Undelivered as exc:
        reason = f"{exc.reason}; socket path {client.socket_how}"
        raise Undelivered(exc.path, reason, exc.events) from exc


def cmd_emit(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    if args.event == "-":
        return send_stream(args, env, read_ndjson(sys.stdin))
    doc = event_or_usage(args, "event")
    with client_for(args, env) as client:
        with _explained(client):
            (outcome,) = client.emit_each([doc])
        if isinstance(outcome, Rejected):
            return show(args, outcome.reply, textfmt.format_event)
        status = show(args, outcome.as_reply(), lambda reply: _format_ack(reply, client))
        if outcome.spooled and args.wait:
            say("qbsupervisor: not waiting: the event is spooled, its callbacks have not run yet",
                sys.stderr)  # fmt: skip
        if outcome.spooled or not args.wait:
            return status
        assert outcome.seq is not None
        return _wait(args, client, outcome.seq)


def cmd_match(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    doc = event_or_usage(args, "match")
    with connect(args, env) as conn:
        return show(args, conn.request(doc), textfmt.format_matched)


def cmd_flush(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Deliver the spool; 69 when events are left because the daemon stayed away."""
    with client_for(args, env) as client:
        report = client.flush()
        reason = client.last_error if report.left else None
    if args.json:
        say(json.dumps({"ok": _flush_status(report) == EX_OK, "spool": args.spool} | {
            "delivered": report.delivered, "rejected": report.rejected,
            "left": report.left, "busy": report.busy,
        }))  # fmt: skip
    else:
        say(_format_flush(report, args.spool))
    if reason is not None:
        say(f"qbsupervisor: daemon not reachable: {client.socket_path}: {reason}; "
            f"socket path {client.socket_how}", sys.stderr)  # fmt: skip
    return _flush_status(report)


def _flush_status(report: FlushReport) -> int:
    if report.left:
        return EX_UNAVAILABLE
    return EX_ERROR if report.busy or report.rejected else EX_OK


def _format_flush(report: FlushReport, spool: str) -> str:
    if report.busy:
        return f"{spool}: another client is flushing it (its lock stayed taken); nothing sent"
    text = f"{spool}: {report.delivered} delivered, {report.left} left"
    if report.rejected:
        text += f", {report.rejected} refused by the daemon (see {spool}/rejected.ndjson)"
    return text


def _format_ack(reply: Mapping[str, Any], client: Client) -> str:
    if not reply.get("spooled"):
        return textfmt.format_event(reply)
    where = client.spool.directory if client.spool else "?"
    return (
        f"spooled event_id={reply.get('event_id')} to {where}: the daemon was not reachable; "
        f"the next emit or `qbsupervisor flush --spool {where}` delivers it"
    )


def _wait(args: argparse.Namespace, client: Client, seq: int) -> int:
    timeout = float(args.wait_timeout)
    doc = {"op": "wait", "seq": seq, "timeout": timeout}
    reply = client.request(doc, timeout=timeout + (args.timeout or DEFAULT_TIMEOUT))
    status = show(args, reply, lambda r: textfmt.format_wait(r, seq, timeout))
    return status if status or reply.get("done") is True else EX_ERROR


def send_stream(args: argparse.Namespace, env: Mapping[str, str], entries: Iterable[Entry]) -> int:
    """Send the entries through one Client; print one result per entry, in order."""
    failures, last_seq = 0, None
    with client_for(args, env) as client:
        with _explained(client):
            for number, reply in send_entries(client, entries):
                failures += _show_line(args, client, number, reply)
                if reply.get("ok") is True and isinstance(reply.get("seq"), int):
                    last_seq = max(reply["seq"], last_seq or 0)
        if args.wait and last_seq is not None:
            failures += _wait(args, client, last_seq)
    return EX_ERROR if failures else EX_OK


def _show_line(args: argparse.Namespace, client: Client, number: int, reply: dict[str, Any]) -> int:
    """One result of a stream, on stdout either way so lines stay in input order."""
    ok = reply.get("ok") is True
    if args.json:
        say(json.dumps(reply, ensure_ascii=False))
    elif ok:
        say(_format_ack(reply, client))
    else:
        say(f"line {number}: {textfmt.format_error(reply)}")
    return EX_OK if ok else EX_ERROR


DEADLINE: Final[Option] = (
    ("--deadline",),
    {
        "type": float,
        "default": DEFAULT_DEADLINE_S,
        "metavar": "S",
        "help": "resend (same event_id, with backoff) after a lost reply, a missing socket or "
        "'unavailable' until S seconds pass without an answer (default: %(default)g; 0: once)",
    },
)
SPOOL: Final[Option] = (
    ("--spool",),
    {
        "metavar": "DIR",
        "help": "events not delivered by the deadline are written (fsynced) to this spool "
        "directory instead: emit prints 'spooled' and exits 0; the next emit with this spool, "
        "or `flush --spool DIR`, delivers them first. Exit 69 only when neither worked",
    },
)
OPTIONS: Final[dict[str, tuple[Option, ...]]] = {
    "emit": (*EVENT, *WAIT, DEADLINE, SPOOL),
    "match": EVENT,
    "flush": (
        (("--spool",), {"metavar": "DIR", "required": True, "help": "the spool directory"}),
        DEADLINE,
    ),
}
COMMANDS: Final[tuple[tuple[str, str, Handler], ...]] = (
    ("emit", "send an event (NAME-TYPE, or - for NDJSON on stdin), resent until acked", cmd_emit),
    ("match", "which callbacks an event would fire now (dry run)", cmd_match),
    ("flush", "deliver the events spooled in --spool DIR, oldest first", cmd_flush),
)
