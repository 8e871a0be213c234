"""Readable text for the daemon's replies and the check table (pure: dicts in, str out)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, tzinfo
from typing import Any, Final

from supervisord.core.model import Callback

# The order status keys read best in; anything the daemon adds later follows them,
# and the nested ``config`` block comes last.
STATUS_ORDER: Final = (
    "version",
    "uptime_s",
    "callbacks",
    "running",
    "queued",
    "events_total",
    "runs_total",
    "runs_failed",
)
NONE: Final = "(none)"


def format_value(value: Any) -> str:
    """One scalar or list as it reads on a terminal."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(format_value(v) for v in value) or NONE
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns, two spaces apart; the last column is not padded."""
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    lines = []
    for row in [headers, *rows]:
        cells = [cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def _flatten(doc: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for key, value in doc.items():
        if isinstance(value, Mapping):
            pairs.extend(_flatten(value, f"{prefix}{key}."))
        else:
            pairs.append((f"{prefix}{key}", format_value(value)))
    return pairs


def format_mapping(reply: Mapping[str, Any], order: Sequence[str] = ()) -> str:
    """``key: value`` lines, aligned; nested objects become ``outer.inner`` keys."""
    keys = [k for k in order if k in reply] + [k for k in reply if k not in order]
    doc = {k: reply[k] for k in keys if k != "ok"}
    pairs = _flatten(doc)
    width = max((len(k) for k, _ in pairs), default=0) + 1
    return "\n".join(f"{(k + ':').ljust(width)} {v}" for k, v in pairs)


def format_status(reply: Mapping[str, Any]) -> str:
    ordered = {k: v for k, v in reply.items() if k != "config"}
    if "config" in reply:
        ordered["config"] = reply["config"]
    return format_mapping(ordered, STATUS_ORDER)


def format_error(reply: Mapping[str, Any]) -> str:
    """An error reply as ``error: code: message``, then every ``errors`` entry."""
    error = reply.get("error")
    if isinstance(error, Mapping):
        head = f"error: {error.get('code', 'unknown')}: {error.get('message', '')}"
    else:
        head = f"error: {format_value(error)}"
    extra = reply.get("errors")
    lines = [str(e) for e in extra] if isinstance(extra, list) else []
    return "\n".join([head, *lines])


def format_matched(reply: Mapping[str, Any]) -> str:
    return f"matched: {format_value(reply.get('matched') or [])}"


def format_event(reply: Mapping[str, Any]) -> str:
    """An event acknowledgement: ``seq=17 event_id=X matched: a.py, b.pl``."""
    head = f"seq={reply.get('seq')} event_id={reply.get('event_id')}"
    if reply.get("duplicate"):
        return f"{head} duplicate: accepted before, nothing new runs"
    return f"{head} {format_matched(reply)}"


def format_wait(reply: Mapping[str, Any], seq: int, timeout: float) -> str:
    if reply.get("done"):
        return f"done: every callback up to seq={seq} finished"
    return f"not done: callbacks up to seq={seq} still running after {timeout:g} s"


def format_reload(reply: Mapping[str, Any]) -> str:
    return f"reloaded: {reply.get('callbacks')} callbacks"


def callback_row(cb: Mapping[str, Any]) -> list[str]:
    where = f"{cb.get('dir')}/callbacks.conf:{cb.get('line')}"
    return [str(cb.get("file")), str(cb.get("language")), str(cb.get("trigger")), where]


def callback_dict(cb: Callback) -> dict[str, Any]:
    """A loaded callback as the ``callbacks`` operation lists it (SPEC §3.2)."""
    return {
        "file": cb.file,
        "dir": cb.dir,
        "line": cb.line,
        "language": cb.language,
        "trigger": cb.trigger_text,
    }


def format_callbacks(callbacks: Sequence[Mapping[str, Any]]) -> str:
    if not callbacks:
        return "(no callbacks)"
    rows = [callback_row(cb) for cb in callbacks]
    return format_table(["FILE", "LANGUAGE", "TRIGGER", "WHERE"], rows)


def format_check(
    callbacks: Sequence[Callback], warnings: Sequence[str], errors: Sequence[str]
) -> str:
    """What ``check`` prints: the table, then warnings, then every error."""
    parts = [format_callbacks([callback_dict(cb) for cb in callbacks])]
    parts += [f"warning: {w}" for w in warnings]
    parts += list(errors)
    count = len(errors)
    parts.append(f"{count} error{'s' if count != 1 else ''}" if count else "ok")
    return "\n".join(parts)


# Linux's signal numbers (the daemon runs only there: pidfds): the core reads no `signal`
# module, and a history row may come from another host's journal anyway.
_SIGNAL_NAMES: Final = [
    "SIGHUP",
    "SIGINT",
    "SIGQUIT",
    "SIGILL",
    "SIGTRAP",
    "SIGABRT",
    "SIGBUS",
    "SIGFPE",
    "SIGKILL",
    "SIGUSR1",
    "SIGSEGV",
    "SIGUSR2",
    "SIGPIPE",
    "SIGALRM",
    "SIGTERM",
    "SIGSTKFLT",
    "SIGCHLD",
    "SIGCONT",
    "SIGSTOP",
    "SIGTSTP",
    "SIGTTIN",
    "SIGTTOU",
    "SIGURG",
    "SIGXCPU",
    "SIGXFSZ",
    "SIGVTALRM",
    "SIGPROF",
    "SIGWINCH",
    "SIGIO",
    "SIGPWR",
    "SIGSYS",
]


def _signal_name(number: int) -> str:
    if 1 <= number <= len(_SIGNAL_NAMES):
        return _SIGNAL_NAMES[number - 1]
    return f"signal {number}"


def _exit_text(run: Mapping[str, Any]) -> str:
    if isinstance(run.get("signal"), int):
        return _signal_name(run["signal"])
    code = run.get("exit_code")
    return "-" if code is None else str(code)


def _time_text(ts: Any, tz: tzinfo | None) -> str:
    if not isinstance(ts, int | float):
        return "-"
    moment = datetime.fromtimestamp(ts, tz) if tz else datetime.fromtimestamp(ts).astimezone()
    return moment.isoformat(timespec="seconds")


def _duration_text(run: Mapping[str, Any]) -> str:
    started, ended = run.get("started"), run.get("ended")
    if not isinstance(started, int | float):
        return "-"
    if not isinstance(ended, int | float):
        return "running"
    return f"{ended - started:.3f}s"


def history_row(run: Mapping[str, Any], tz: tzinfo | None = None) -> list[str]:
    outcome = str(run.get("outcome") or run.get("state") or "running")
    if run.get("truncated"):
        outcome += "+cut"
    if isinstance(run.get("attempt"), int) and run["attempt"] > 1:
        outcome += f" #{run['attempt']}"  # the delivery attempt (SPEC §7.2)
    if run.get("dead"):
        outcome += " dead"
    if run.get("replayed"):
        outcome += " replayed"
    return [
        str(run.get("run_id")),
        str(run.get("seq")),
        str(run.get("callback")),
        format_value(run.get("job_id")),
        outcome,
        _exit_text(run),
        _time_text(run.get("started"), tz),
        _duration_text(run),
        format_value(run.get("log")),
    ]


def format_history(runs: Sequence[Mapping[str, Any]], tz: tzinfo | None = None) -> str:
    """Runs as columns; times in ``tz``, the local zone by default."""
    if not runs:
        return "(no runs)"
    headers = ["RUN", "SEQ", "CALLBACK", "JOB", "OUTCOME", "EXIT", "STARTED", "DURATION", "LOG"]
    return format_table(headers, [history_row(r, tz) for r in runs])


def format_metrics(reply: Mapping[str, Any]) -> str:
    """A ``metrics`` reply: its Prometheus ``text`` as it is, else every field."""
    text = reply.get("text")
    return text.rstrip("\n") if isinstance(text, str) else format_mapping(reply)


def format_tail_line(line: Mapping[str, Any]) -> str:
    """One line of the ``tail`` stream, e.g. ``run 12 seq=17 job=1234 a.py exited: ok``."""
    if line.get("op") != "run":
        return " ".join(f"{k}={format_value(v)}" for k, v in line.items())
    head = (
        f"run {line.get('run_id')} seq={line.get('seq')} job={format_value(line.get('job_id'))}"
        f" {line.get('callback')} {line.get('state')}"
    )
    if line.get("state") != "exited":
        return head
    return f"{head}: {line.get('outcome')} ({line.get('description')}) log={line.get('log')}"
