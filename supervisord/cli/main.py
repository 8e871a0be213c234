"""The qbsupervisor command line: argument parsing, the commands, readable output, exit codes."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, TextIO

from supervisord.client.connection import (
    ETC_QBCONF,
    Client,
    Entry,
    ProtocolError,
    Unreachable,
    event_request,
    find_qbconf,
    find_socket,
    read_ndjson,
    read_settings,
    send_entries,
)
from supervisord.core import textfmt
from supervisord.core.errors import ConfigErrors, QbError
from supervisord.core.model import Settings

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
_HISTORY_FIELDS: Final = ("job", "callback", "outcome", "limit")


def _event_or_usage(args: argparse.Namespace, op: str) -> dict[str, Any]:
    """The request for the event options of ``emit``/``match``; a usage error exits 2."""
    fields = {"subid": args.subid, "work": args.work, "host": args.host}
    fields |= {"event_id": args.event_id, "time": args.time}
    try:
        return event_request(op, args.event, args.job, args.set, fields)
    except ValueError as exc:
        parser: argparse.ArgumentParser = args.parser
        parser.error(str(exc))  # exits 2 with the command's usage, like argparse's own errors


def _print(text: str, stream: TextIO | None = None) -> None:
    print(text, file=stream or sys.stdout, flush=True)


def _connect(args: argparse.Namespace, env: Mapping[str, str]) -> Client:
    path, how = find_socket(args.socket, find_qbconf(args.config, env), env)
    try:
        return Client(path, args.timeout)
    except Unreachable as exc:
        raise Unreachable(path, f"{exc.reason}; socket path {how}") from exc


def _show(args: argparse.Namespace, reply: dict[str, Any], render: Render) -> int:
    """Print one reply (raw with --json) and return its exit code."""
    ok = reply.get("ok") is True
    if args.json:
        _print(json.dumps(reply, ensure_ascii=False))
    elif ok:
        _print(render(reply))
    else:
        _print(textfmt.format_error(reply), sys.stderr)
    return EX_OK if ok else EX_ERROR


def _simple(op: str, render: Render, fields: Sequence[str] = ()) -> Handler:
    """A command that sends one request (``op`` plus the given options) and shows its reply."""

    def handler(args: argparse.Namespace, env: Mapping[str, str]) -> int:
        doc = {"op": op} | {f: getattr(args, f) for f in fields if getattr(args, f) is not None}
        with _connect(args, env) as client:
            return _show(args, client.request(doc), render)

    return handler


def _wait(args: argparse.Namespace, client: Client, seq: int) -> int:
    timeout = float(args.wait_timeout)
    client.settimeout(timeout + (args.timeout or DEFAULT_TIMEOUT))  # the reply may take that long
    reply = client.request({"op": "wait", "seq": seq, "timeout": timeout})
    status = _show(args, reply, lambda r: textfmt.format_wait(r, seq, timeout))
    return status if status or reply.get("done") is True else EX_ERROR


def cmd_emit(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    if args.event == "-":
        return _send_stream(args, env, read_ndjson(sys.stdin))
    doc = _event_or_usage(args, "event")
    with _connect(args, env) as client:
        reply = client.request(doc)
        status = _show(args, reply, textfmt.format_event)
        if status or not args.wait:
            return status
        return _wait(args, client, int(reply["seq"]))


def cmd_match(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    doc = _event_or_usage(args, "match")
    with _connect(args, env) as client:
        return _show(args, client.request(doc), textfmt.format_matched)


def _send_stream(args: argparse.Namespace, env: Mapping[str, str], entries: Iterable[Entry]) -> int:
    """Pipeline the entries on one connection; print one result per entry, in order."""
    failures, last_seq = 0, None
    with _connect(args, env) as client:
        for number, reply in send_entries(client, entries):
            failures += _show_line(args, number, reply)
            if reply.get("ok") is True and isinstance(reply.get("seq"), int):
                last_seq = max(reply["seq"], last_seq or 0)
        if args.wait and last_seq is not None:
            failures += _wait(args, client, last_seq)
    return EX_ERROR if failures else EX_OK


def _show_line(args: argparse.Namespace, number: int, reply: dict[str, Any]) -> int:
    """One result of a stream, on stdout either way so lines stay in input order."""
    ok = reply.get("ok") is True
    if args.json:
        _print(json.dumps(reply, ensure_ascii=False))
    else:
        _print(
            textfmt.format_event(reply) if ok else f"line {number}: {textfmt.format_error(reply)}"
        )
    return EX_OK if ok else EX_ERROR


def cmd_tail(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Follow the daemon's run stream until it closes the connection (or ^C: 130)."""
    with _connect(args, env) as client:
        status = _show(args, client.request({"op": "tail"}), lambda _: "following runs (^C stops)")
        if status:
            return status
        client.settimeout(None)  # a quiet farm sends nothing for hours
        for line in client.stream():
            text = json.dumps(line, ensure_ascii=False) if args.json else None
            _print(text or textfmt.format_tail_line(line))
    return EX_OK


def _require_qbconf(args: argparse.Namespace, env: Mapping[str, str]) -> str:
    qbconf = find_qbconf(args.config, env)
    if qbconf is None:
        raise QbError(f"no qb.conf: tried --config, $QB_CONF, {ETC_QBCONF}, $QBDIR/etc/qb.conf")
    return qbconf


def cmd_serve(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    try:
        qbconf = _require_qbconf(args, env)
        with open(qbconf, "rb"):
            pass  # only proves it is readable, for a clear message; the daemon parses it
    except (QbError, OSError) as exc:
        _print(f"qbsupervisor: {exc}", sys.stderr)
        return EX_CONFIG
    from supervisord.daemon.serve import serve  # asyncio and the rest: only serve needs them

    return serve(qbconf, loop=args.loop, log_level=args.log_level, log_format=args.log_format)


def _load(args: argparse.Namespace, env: Mapping[str, str]) -> tuple[Settings, Any]:
    """qb.conf and every callbacks.conf, as ``serve`` would load them."""
    from supervisord.daemon.load import load_callbacks

    settings = read_settings(_require_qbconf(args, env), env)
    return settings, load_callbacks(settings)


def cmd_check(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    try:
        _, loaded = _load(args, env)
    except ConfigErrors as exc:
        # Every error at once, and the callbacks that did load beside them.
        errors = [str(e) for e in exc.errors]
        partial = getattr(exc, "partial", None)
        good = partial.callbacks if partial is not None else ()
        warnings = partial.warnings if partial is not None else ()
        if args.json:
            rows = [textfmt.callback_dict(cb) for cb in good]
            report = {"ok": False, "callbacks": rows, "warnings": list(warnings), "errors": errors}
            _print(json.dumps(report, ensure_ascii=False))
        else:
            _print(textfmt.format_check(good, warnings, errors))
        return EX_ERROR
    if args.json:
        rows = [textfmt.callback_dict(cb) for cb in loaded.callbacks]
        report = {"ok": True, "callbacks": rows, "warnings": list(loaded.warnings)}
        _print(json.dumps(report, ensure_ascii=False))
    else:
        _print(textfmt.format_check(loaded.callbacks, loaded.warnings, ()))
    return EX_OK


def cmd_simulate(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from supervisord.core.simulate import load_scenario, simulate

    try:
        with open(args.scenario, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise QbError(f"cannot read {args.scenario}: {exc.strerror}") from exc
    docs = load_scenario(text, args.scenario)
    if args.run:
        events = ((n, {"op": "event", **doc}) for n, doc in enumerate(docs, 1))
        return _send_stream(args, env, events)
    settings, loaded = _load(args, env)
    lines = simulate(loaded.callbacks, docs, retention=settings.job_retention)
    _print(json.dumps({"ok": True, "lines": lines}) if args.json else "\n".join(lines))
    return EX_OK


Option = tuple[tuple[str, ...], dict[str, Any]]  # add_argument's args and kwargs

_COMMON: Final[tuple[Option, ...]] = (
    (("--config",), {"metavar": "F", "help": "qb.conf to read (default: discovered)"}),
    (("--socket",), {"metavar": "S", "help": "intake socket (default: from qb.conf)"}),
    (("--json",), {"action": "store_true", "help": "print raw replies, one JSON line each"}),
    (("--timeout",), {"type": float, "default": DEFAULT_TIMEOUT, "metavar": "S"}),
)
_EVENT: Final[tuple[Option, ...]] = (
    (("event",), {"metavar": "NAME-TYPE", "help": "e.g. complete-job, failed-work"}),
    (("--job",), {"type": int, "metavar": "ID"}),
    (("--subid",), {"type": int, "metavar": "N"}),
    (("--work",), {"metavar": "W"}),
    (("--host",), {"metavar": "H"}),
    (("--set",), {"action": "append", "default": [], "metavar": "KEY=VALUE"}),
    (("--event-id",), {"metavar": "X"}),
    (("--time",), {"type": float, "metavar": "T", "help": "Unix seconds"}),
)
_WAIT: Final[tuple[Option, ...]] = (
    (("--wait",), {"action": "store_true", "help": "until their callbacks have finished"}),
    (("--wait-timeout",), {"type": float, "default": DEFAULT_WAIT_TIMEOUT, "metavar": "S"}),
)
_OPTIONS: Final[dict[str, tuple[Option, ...]]] = {
    "serve": (
        (("--loop",), {"choices": ("auto", "asyncio", "uvloop"), "default": "auto"}),
        (("--log-level",), {"choices": ("debug", "info", "warning", "error")}),
        (("--log-format",), {"choices": ("text", "json"), "default": "text"}),
    ),
    "emit": (*_EVENT, *_WAIT),
    "match": _EVENT,
    "history": (
        (("--job",), {"type": int, "metavar": "ID"}),
        (("--callback",), {"metavar": "F"}),
        (("--outcome",), {"choices": ("ok", "failed", "timeout", "error")}),
        (("--limit",), {"type": int, "metavar": "N"}),
    ),
    "simulate": (
        (("scenario",), {"metavar": "SCENARIO.yaml"}),
        (("--run",), {"action": "store_true", "help": "send the events to the live daemon"}),
        *_WAIT,
    ),
}


def _history(reply: dict[str, Any]) -> str:
    return textfmt.format_history(reply.get("runs") or [])


def _callbacks(reply: dict[str, Any]) -> str:
    return textfmt.format_callbacks(reply.get("callbacks") or [])


_COMMANDS: Final[tuple[tuple[str, str, Handler], ...]] = (
    ("serve", "run the daemon in the foreground", cmd_serve),
    ("check", "validate qb.conf and every callbacks.conf", cmd_check),
    ("emit", "send an event (NAME-TYPE, or - for NDJSON on stdin)", cmd_emit),
    ("match", "which callbacks an event would fire now (dry run)", cmd_match),
    ("status", "daemon status", _simple("status", textfmt.format_status)),
    ("callbacks", "the loaded callback table", _simple("callbacks", _callbacks)),
    ("history", "callback runs, newest first", _simple("history", _history, _HISTORY_FIELDS)),
    (
        "reload",
        "re-read qb.conf and every callbacks.conf",
        _simple("reload", textfmt.format_reload),
    ),
    ("simulate", "replay a YAML scenario through the matcher", cmd_simulate),
    (
        "metrics",
        "daemon metrics, Prometheus text format",
        _simple("metrics", textfmt.format_metrics),
    ),
    ("tail", "follow callback runs as they start and end", cmd_tail),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qbsupervisor", description="Qube! universal callbacks")
    subs = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text, handler in _COMMANDS:
        sub = subs.add_parser(name, help=help_text, description=help_text)
        for flags, kwargs in (*_OPTIONS.get(name, ()), *_COMMON):
            sub.add_argument(*flags, **kwargs)
        sub.set_defaults(handler=handler, parser=sub)
    return parser


def run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Run the parsed command; turn the errors it may meet into messages and exit codes."""
    handler: Handler = args.handler
    try:
        return handler(args, env)
    except Unreachable as exc:
        _print(f"qbsupervisor: daemon not reachable: {exc}", sys.stderr)
        return EX_UNAVAILABLE
    except (ProtocolError, QbError) as exc:
        _print(f"qbsupervisor: {exc}", sys.stderr)
        return EX_ERROR
    except KeyboardInterrupt:
        return EX_INTERRUPTED
    except BrokenPipeError:
        # stdout closed early (`| head`): point it at /dev/null so the final flush at
        # exit does not raise again, as the Python docs on SIGPIPE recommend.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EX_ERROR


def main(argv: Sequence[str] | None = None, *, env: Mapping[str, str] | None = None) -> int:
    """Entry point; returns the exit code (argparse's usage errors included, as 2)."""
    try:
        args = build_parser().parse_args(argv)
        return run(args, os.environ if env is None else env)
    except SystemExit as exc:  # argparse reports usage errors (2) and --help (0) this way
        if exc.code is None:
            return EX_OK
        return exc.code if isinstance(exc.code, int) else EX_USAGE
