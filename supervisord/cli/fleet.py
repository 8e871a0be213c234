"""``qbsupervisor fleet`` and the member column of ``history`` (SPEC §8): text from replies."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from datetime import tzinfo
from typing import Any, Final

from supervisord.cli.common import EX_ERROR, EX_OK, connect, say, show
from supervisord.core import textfmt

FLEET_HEADERS: Final = ("MEMBER", "ROLE", "HOST", "PID", "HEARTBEAT", "RUNNING", "VERSION", "STATE")
# textfmt.format_history's columns; MEMBER goes in before LOG, the long path that ends a row.
HISTORY_HEADERS: Final = (
    "RUN", "SEQ", "CALLBACK", "JOB", "OUTCOME", "EXIT", "STARTED", "DURATION", "LOG",
)  # fmt: skip
_MEMBER_AT: Final = HISTORY_HEADERS.index("LOG")


def format_age(seconds: Any) -> str:
    """A heartbeat's age as it reads on a terminal: ``0.4s ago``, ``3m07s ago``, ``2h05m ago``."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        return "-"
    seconds = max(0.0, float(seconds))  # another host's clock may run a little ahead
    if seconds < 59.95:  # below what .1f would round up to 60.0
        return f"{seconds:.1f}s ago"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s ago"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m ago"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h ago"


def fleet_row(member: Mapping[str, Any]) -> list[str]:
    keys = ("member", "role", "host", "pid")
    return [
        *(textfmt.format_value(member.get(k)) for k in keys),
        format_age(member.get("heartbeat_age_s")),
        textfmt.format_value(member.get("running")),
        textfmt.format_value(member.get("version")),
        textfmt.format_value(member.get("state")),
    ]


def format_fleet(members: Sequence[Mapping[str, Any]]) -> str:
    """The members of a ``status`` reply's ``fleet``, one row each, sorted by member name."""
    if not members:
        return "(no members)"
    ordered = sorted(members, key=lambda m: str(m.get("member") or ""))
    return textfmt.format_table(FLEET_HEADERS, [fleet_row(m) for m in ordered])


def format_runs(runs: Sequence[Mapping[str, Any]], tz: tzinfo | None = None) -> str:
    """``history`` as textfmt prints it, plus a MEMBER column when the runs were not all run
    by one member (a single daemon names itself on every row: no column for that)."""
    if len({run.get("member") or None for run in runs}) < 2:
        return textfmt.format_history(runs, tz)
    headers = list(HISTORY_HEADERS)
    headers.insert(_MEMBER_AT, "MEMBER")
    rows = []
    for run in runs:
        row = textfmt.history_row(run, tz)
        row.insert(_MEMBER_AT, textfmt.format_value(run.get("member") or None))
        rows.append(row)
    return textfmt.format_table(headers, rows)


def no_fleet_message(reply: Mapping[str, Any]) -> str:
    version = textfmt.format_value(reply.get("version"))
    return (
        f"qbsupervisor: the daemon (version {version}) reports no fleet in its status:"
        " it is older than this command; upgrade it, or use `qbsupervisor status`"
    )


def cmd_fleet(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """``status``'s ``fleet`` as a table; ``--json``: the list itself."""
    with connect(args, env) as client:
        reply = client.request({"op": "status"})
    if reply.get("ok") is not True:
        return show(args, reply, lambda _: "")  # the error (raw with --json), as elsewhere
    members = reply.get("fleet")
    if not isinstance(members, list):
        say(no_fleet_message(reply), sys.stderr)
        return EX_ERROR
    say(json.dumps(members, ensure_ascii=False) if args.json else format_fleet(members))
    return EX_OK
