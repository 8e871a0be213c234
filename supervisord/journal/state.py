"""What the matcher keeps across restarts (jobs, latches, clock) and the breakers, stored."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from typing import Any

from supervisord.journal.store import dumps, many


def save_state(
    db: sqlite3.Connection,
    jobs: dict[int, dict[str, Any] | None],
    latches: dict[tuple[str, int | None], frozenset[int] | None],
    clock: dict[Any, Any],
) -> None:
    """Persist what the matcher changed in this batch (None means deleted)."""
    if jobs:
        many(
            db,
            "INSERT OR REPLACE INTO jobs VALUES (?, ?)",
            [(k, dumps(v)) for k, v in jobs.items() if v is not None],
        )
        many(db, "DELETE FROM jobs WHERE id = ?", [(k,) for k, v in jobs.items() if v is None])
    if latches:
        many(
            db,
            "INSERT OR REPLACE INTO latches VALUES (?, ?, ?)",
            [(k[0], k[1], dumps(sorted(v))) for k, v in latches.items() if v],
        )
        many(
            db,
            "DELETE FROM latches WHERE cb_key = ? AND owner IS ?",
            [(k[0], k[1]) for k, v in latches.items() if not v],
        )
    if clock:
        many(
            db,
            "INSERT OR REPLACE INTO clock VALUES (?, ?)",
            [(dumps(k), dumps(v)) for k, v in clock.items() if v is not None],
        )
        many(
            db,
            "DELETE FROM clock WHERE key = ?",
            [(dumps(k),) for k, v in clock.items() if v is None],
        )


def load_jobs(db: sqlite3.Connection) -> Iterable[tuple[int, dict[str, Any]]]:
    return [(int(i), json.loads(d)) for i, d in db.execute("SELECT id, doc FROM jobs")]


def load_latches(db: sqlite3.Connection) -> Iterable[tuple[tuple[str, int | None], frozenset[int]]]:
    rows = db.execute("SELECT cb_key, owner, terms FROM latches")
    return [((k, o), frozenset(json.loads(t))) for k, o, t in rows]


def load_clock(db: sqlite3.Connection) -> Iterable[tuple[Any, Any]]:
    return [(_key(json.loads(k)), json.loads(v)) for k, v in db.execute("SELECT * FROM clock")]


def _key(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def save_breakers(db: sqlite3.Connection, breakers: dict[str, dict[str, Any] | None]) -> None:
    """Persist breaker states that changed (None: closed, nothing to keep)."""
    many(
        db,
        "INSERT OR REPLACE INTO breakers VALUES (?, ?)",
        [(k, dumps(v)) for k, v in breakers.items() if v is not None],
    )
    many(
        db,
        "DELETE FROM breakers WHERE callback = ?",
        [(k,) for k, v in breakers.items() if v is None],
    )


def load_breakers(db: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    return {str(k): json.loads(d) for k, d in db.execute("SELECT callback, doc FROM breakers")}
