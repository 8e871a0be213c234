"""The qbsupervisor command line: the parser, the daemon-side commands, errors as exit codes."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Final

from supervisord.cli import emit, fleet, policy
from supervisord.cli.common import (
    COMMON,
    EX_CONFIG,
    EX_ERROR,
    EX_INTERRUPTED,
    EX_OK,
    EX_UNAVAILABLE,
    EX_USAGE,
    WAIT,
    Handler,
    Option,
    connect,
    say,
    show,
    simple,
)
from supervisord.cli.emit import send_stream
from supervisord.client.connection import ProtocolError, Unreachable
from supervisord.client.locate import ETC_QBCONF, find_qbconf, read_settings
from supervisord.core import statusfmt, textfmt
from supervisord.core.errors import ConfigErrors, QbError
from supervisord.core.model import Settings

_HISTORY_FIELDS: Final = ("job", "callback", "outcome", "limit", "dead")


def cmd_tail(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Follow the daemon's run stream until it closes the connection (or ^C: 130)."""
    with connect(args, env) as client:
        status = show(args, client.request({"op": "tail"}), lambda _: "following runs (^C stops)")
        if status:
            return status
        client.settimeout(None)  # a quiet farm sends nothing for hours
        for line in client.stream():
            text = json.dumps(line, ensure_ascii=False) if args.json else None
            say(text or textfmt.format_tail_line(line))
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
        say(f"qbsupervisor: {exc}", sys.stderr)
        return EX_CONFIG
    from supervisord.daemon.serve import serve  # asyncio and the rest: only serve needs them

    return serve(qbconf, loop=args.loop, log_level=args.log_level, log_format=args.log_format)


def _load(args: argparse.Namespace, env: Mapping[str, str]) -> tuple[Settings, Any]:
    """qb.conf and every callbacks.conf, as ``serve`` would load them."""
    from supervisord.daemon.policies import load_config

    settings = read_settings(_require_qbconf(args, env), env)
    return settings, load_config(settings)[0]


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
            say(json.dumps(report, ensure_ascii=False))
        else:
            say(textfmt.format_check(good, warnings, errors))
        return EX_ERROR
    if args.json:
        rows = [textfmt.callback_dict(cb) for cb in loaded.callbacks]
        report = {"ok": True, "callbacks": rows, "warnings": list(loaded.warnings)}
        say(json.dumps(report, ensure_ascii=False))
    else:
        say(textfmt.format_check(loaded.callbacks, loaded.warnings, ()))
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
        return send_stream(args, env, events)
    settings, loaded = _load(args, env)
    lines = simulate(loaded.callbacks, docs, retention=settings.job_retention)
    say(json.dumps({"ok": True, "lines": lines}) if args.json else "\n".join(lines))
    return EX_OK


_OPTIONS: Final[dict[str, tuple[Option, ...]]] = (
    emit.OPTIONS
    | policy.OPTIONS
    | {
        "serve": (
            (("--loop",), {"choices": ("auto", "asyncio", "uvloop"), "default": "auto"}),
            (("--log-level",), {"choices": ("debug", "info", "warning", "error")}),
            (("--log-format",), {"choices": ("text", "json"), "default": "text"}),
        ),
        "history": (
            (("--job",), {"type": int, "metavar": "ID"}),
            (("--callback",), {"metavar": "F"}),
            (("--outcome",), {"choices": ("ok", "failed", "timeout", "error")}),
            (("--limit",), {"type": int, "metavar": "N"}),
            (
                ("--dead",),
                {
                    "action": "store_const",
                    "const": True,
                    "help": "only runs dead after their last attempt",
                },
            ),
        ),
        "simulate": (
            (("scenario",), {"metavar": "SCENARIO.yaml"}),
            (("--run",), {"action": "store_true", "help": "send the events to the live daemon"}),
            *WAIT,
        ),
    }
)


def _history(reply: dict[str, Any]) -> str:
    return fleet.format_runs(reply.get("runs") or [])


def _callbacks(reply: dict[str, Any]) -> str:
    return textfmt.format_callbacks(reply.get("callbacks") or [])


_COMMANDS: Final[tuple[tuple[str, str, Handler], ...]] = (
    ("serve", "run the daemon in the foreground", cmd_serve),
    ("check", "validate qb.conf and every callbacks.conf", cmd_check),
    ("status", "daemon status", simple("status", statusfmt.format_status)),
    ("fleet", "the members sharing this journal (--json: the list)", fleet.cmd_fleet),
    ("callbacks", "the loaded callback table", simple("callbacks", _callbacks)),
    ("history", "callback runs, newest first", simple("history", _history, _HISTORY_FIELDS)),
    (
        "reload",
        "re-read qb.conf and every callbacks.conf",
        simple("reload", textfmt.format_reload),
    ),
    ("simulate", "replay a YAML scenario through the matcher", cmd_simulate),
    (
        "metrics",
        "daemon metrics, Prometheus text format",
        simple("metrics", textfmt.format_metrics),
    ),
    ("tail", "follow callback runs as they start and end", cmd_tail),
    *emit.COMMANDS,
    *policy.COMMANDS,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qbsupervisor", description="Qube! universal callbacks")
    subs = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text, handler in _COMMANDS:
        sub = subs.add_parser(name, help=help_text, description=help_text)
        for flags, kwargs in (*_OPTIONS.get(name, ()), *COMMON):
            sub.add_argument(*flags, **kwargs)
        sub.set_defaults(handler=handler, parser=sub)
    return parser


def run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Run the parsed command; turn the errors it may meet into messages and exit codes."""
    handler: Handler = args.handler
    try:
        return handler(args, env)
    except Unreachable as exc:
        say(f"qbsupervisor: daemon not reachable: {exc}", sys.stderr)
        return EX_UNAVAILABLE
    except (ProtocolError, QbError) as exc:
        say(f"qbsupervisor: {exc}", sys.stderr)
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
