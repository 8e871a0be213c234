"""What every client command shares: exit codes, connecting, showing a reply, common options."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, TextIO

from supervisord.cli.events import event_request
from supervisord.client.connection import Connection, Unreachable
from supervisord.client.locate import find_qbconf, find_socket
from supervisord.core import textfmt

# Exit codes (sysexits.h where one fits): SPEC §5.
EX_OK: Final = 0
EX_ERROR: Final = 1
EX_USAGE: Final = 2
EX_UNAVAILABLE: Final = 69
EX_CONFIG: Final = 78
EX_INTERRUPTED: Final = 130  # the shell's code for ^C (128 + SIGINT)

DEFAULT_TIMEOUT: Final = 30.0  # seconds: a healthy daemon answers in milliseconds
# Seconds `emit --wait` waits by default: the default callback timeout (600 s) plus
# the kill grace and some room for queueing.
DEFAULT_WAIT_TIMEOUT: Final = 660.0

Handler = Callable[[argparse.Namespace, Mapping[str, str]], int]
Render = Callable[[dict[str, Any]], str]
Option = tuple[tuple[str, ...], dict[str, Any]]  # add_argument's args and kwargs


def event_or_usage(args: argparse.Namespace, op: str) -> dict[str, Any]:
    """The request for the event options of ``emit``/``match``; a usage error exits 2."""
    fields = {"subid": args.subid, "work": args.work, "host": args.host}
    fields |= {"event_id": args.event_id, "time": args.time}
    try:
        return event_request(op, args.event, args.job, args.set, fields)
    except ValueError as exc:
        parser: argparse.ArgumentParser = args.parser
        parser.error(str(exc))  # exits 2 with the command's usage, like argparse's own errors


def say(text: str, stream: TextIO | None = None) -> None:
    print(text, file=stream or sys.stdout, flush=True)


def connect(args: argparse.Namespace, env: Mapping[str, str]) -> Connection:
    path, how = find_socket(args.socket, find_qbconf(args.config, env), env)
    try:
        return Connection(path, args.timeout)
    except Unreachable as exc:
        raise Unreachable(path, f"{exc.reason}; socket path {how}") from exc


def show(args: argparse.Namespace, reply: dict[str, Any], render: Render) -> int:
    """Print one reply (raw with --json) and return its exit code."""
    ok = reply.get("ok") is True
    if args.json:
        say(json.dumps(reply, ensure_ascii=False))
    elif ok:
        say(render(reply))
    else:
        say(textfmt.format_error(reply), sys.stderr)
    return EX_OK if ok else EX_ERROR


def simple(op: str, render: Render, fields: Sequence[str] = ()) -> Handler:
    """A command that sends one request (``op`` plus the given options) and shows its reply."""

    def handler(args: argparse.Namespace, env: Mapping[str, str]) -> int:
        doc = {"op": op} | {f: getattr(args, f) for f in fields if getattr(args, f) is not None}
        with connect(args, env) as client:
            return show(args, client.request(doc), render)

    return handler


def wait_for(args: argparse.Namespace, client: Connection, seq: int) -> int:
    timeout = float(args.wait_timeout)
    client.settimeout(timeout + (args.timeout or DEFAULT_TIMEOUT))  # the reply may take that long
    reply = client.request({"op": "wait", "seq": seq, "timeout": timeout})
    status = show(args, reply, lambda r: textfmt.format_wait(r, seq, timeout))
    return status if status or reply.get("done") is True else EX_ERROR


COMMON: Final[tuple[Option, ...]] = (
    (("--config",), {"metavar": "F", "help": "qb.conf to read (default: discovered)"}),
    (("--socket",), {"metavar": "S", "help": "intake socket (default: from qb.conf)"}),
    (("--json",), {"action": "store_true", "help": "print raw replies, one JSON line each"}),
    (("--timeout",), {"type": float, "default": DEFAULT_TIMEOUT, "metavar": "S"}),
)
EVENT: Final[tuple[Option, ...]] = (
    (("event",), {"metavar": "NAME-TYPE", "help": "e.g. complete-job, failed-work"}),
    (("--job",), {"type": int, "metavar": "ID"}),
    (("--subid",), {"type": int, "metavar": "N"}),
    (("--work",), {"metavar": "W"}),
    (("--host",), {"metavar": "H"}),
    (("--set",), {"action": "append", "default": [], "metavar": "KEY=VALUE"}),
    (("--event-id",), {"metavar": "X"}),
    (("--time",), {"type": float, "metavar": "T", "help": "Unix seconds"}),
)
WAIT: Final[tuple[Option, ...]] = (
    (("--wait",), {"action": "store_true", "help": "until their callbacks have finished"}),
    (("--wait-timeout",), {"type": float, "default": DEFAULT_WAIT_TIMEOUT, "metavar": "S"}),
)
