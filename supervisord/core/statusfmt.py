"""Readable text for `status` and the delivery-policy replies (pure: dicts in, str out)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, tzinfo
from typing import Any, Final

from supervisord.core.textfmt import (
    STATUS_ORDER,
    format_mapping,
    format_table,
    format_value,
)

# What the per-callback table shows; the summary above it shows everything else.
_TABLE_KEYS: Final = frozenset({"per_callback", "breakers"})
_HEADERS: Final = (
    "CALLBACK", "LANGUAGE", "RUNNING", "QUEUED", "HELD", "RETRYING", "DEAD", "BREAKER", "P50",
    "P99",
)  # fmt: skip


def format_status(reply: Mapping[str, Any], tz: tzinfo | None = None) -> str:
    """The daemon summary as ``key: value`` lines, then one table row per callback, the way
    ``supervisorctl status`` reads."""
    summary = {k: v for k, v in reply.items() if k not in _TABLE_KEYS and k != "config"}
    if "config" in reply:
        summary["config"] = reply["config"]
    text = format_mapping(summary, STATUS_ORDER)
    per_cb = reply.get("per_callback")
    if not isinstance(per_cb, Mapping) or not per_cb:
        return text
    breakers = {b.get("callback"): b for b in reply.get("breakers") or [] if isinstance(b, Mapping)}
    rows = [_row(name, v, breakers.get(name), tz) for name, v in sorted(per_cb.items())]
    return f"{text}\n\n{format_table(_HEADERS, rows)}"


def _row(
    name: str, v: Mapping[str, Any], breaker: Mapping[str, Any] | None, tz: tzinfo | None
) -> list[str]:
    return [
        name, str(v.get("language", "-")),
        *(str(v.get(k, 0)) for k in ("running", "queued", "held", "retrying", "dead")),
        breaker_text(v.get("breaker", "closed"), breaker, tz),
        _seconds(v.get("p50_s")), _seconds(v.get("p99_s")),
    ]  # fmt: skip


def breaker_text(state: str, breaker: Mapping[str, Any] | None, tz: tzinfo | None) -> str:
    """``closed``, ``half-open`` or ``open until 14:03:07``."""
    retry_at = breaker.get("retry_at") if breaker else None
    if state == "open" and isinstance(retry_at, int | float):
        return f"open until {datetime.fromtimestamp(retry_at, tz).strftime('%H:%M:%S')}"
    return state


def _seconds(value: Any) -> str:
    return "-" if not isinstance(value, int | float) or not value else f"{value:.3f}s"


def format_dead(reply: Mapping[str, Any], tz: tzinfo | None = None) -> str:
    """Dead runs, newest first: run, callback, job, last outcome, attempts, when."""
    runs: Sequence[Mapping[str, Any]] = reply.get("runs") or []
    if not runs:
        return "(no dead runs)"
    headers = ["RUN", "CALLBACK", "JOB", "OUTCOME", "ATTEMPTS", "FIRST RUN", "ENDED"]
    rows = [
        [str(r.get("run_id")), str(r.get("callback")), format_value(r.get("job_id")),
         f"{r.get('outcome')} ({r.get('description') or '-'})", str(r.get("attempt")),
         str(r.get("first_run_id")), _when(r.get("ended"), tz)]
        for r in runs
    ]  # fmt: skip
    return format_table(headers, rows)


def _when(at: Any, tz: tzinfo | None) -> str:
    if not isinstance(at, int | float):
        return "-"
    return datetime.fromtimestamp(at, tz).strftime("%Y-%m-%d %H:%M:%S")


def format_replay(reply: Mapping[str, Any]) -> str:
    ids = reply.get("run_ids") or []
    text = f"replayed: {len(ids)} new run{'s' if len(ids) != 1 else ''}"
    text += f" ({format_value(ids)})" if ids else ""
    missing = reply.get("missing")
    if missing:
        text += f"\nno such run: {format_value(missing)}"
    return text


def format_resume(reply: Mapping[str, Any]) -> str:
    was = reply.get("was")
    if was == "closed":
        return f"{reply.get('callback')}: breaker was already closed"
    return f"{reply.get('callback')}: breaker closed (was {was}); held runs are released"
