"""``dead``, ``replay`` and ``resume``: the delivery-policy commands (SPEC §7)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from supervisord.cli.common import Handler, Option, connect, show, simple
from supervisord.core import statusfmt


def _since(text: str) -> float:
    """``--since``: Unix seconds, or an ISO date/time in local time (``2026-12-04 14:00``)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected Unix seconds or a date such as 2026-12-04T14:00, got {text!r}"
        ) from exc


def cmd_replay(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    doc: dict[str, Any] = {"op": "replay"}
    chosen = [bool(args.run_ids), args.dead, args.seq is not None]
    if sum(chosen) != 1:
        parser: argparse.ArgumentParser = args.parser
        parser.error("give run ids, or --dead, or --seq N (exactly one)")
    if args.run_ids:
        doc["runs"] = args.run_ids
    elif args.dead:
        doc.update(dead=True, since=args.since)
    else:
        doc["seq"] = args.seq
    if args.callback is not None:
        doc["callback"] = args.callback
    with connect(args, env) as client:
        return show(args, client.request(doc), statusfmt.format_replay)


OPTIONS: Final[dict[str, tuple[Option, ...]]] = {
    "dead": (
        (("--callback",), {"metavar": "F"}),
        (("--limit",), {"type": int, "metavar": "N"}),
    ),
    "replay": (
        (("run_ids",), {"type": int, "nargs": "*", "metavar": "RUN_ID"}),
        (("--dead",), {"action": "store_true", "help": "every dead run (matching the filters)"}),
        (("--since",), {"type": _since, "metavar": "TIME", "help": "with --dead: ended since"}),
        (("--seq",), {"type": int, "metavar": "N", "help": "a stored event's callbacks"}),
        (("--callback",), {"metavar": "F", "help": "only this callback's runs"}),
    ),
    "resume": ((("callback",), {"metavar": "CALLBACK"}),),
}
COMMANDS: Final[tuple[tuple[str, str, Handler], ...]] = (
    ("dead", "runs dead after their last attempt", simple("dead", statusfmt.format_dead,
                                                         ("callback", "limit"))),
    ("replay", "run callbacks again: RUN_ID..., --dead or --seq N", cmd_replay),
    ("resume", "close a callback's circuit breaker now", simple("resume", statusfmt.format_resume,
                                                               ("callback",))),
)  # fmt: skip
