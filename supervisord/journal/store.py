"""The SQLite store: schema, and the reads and writes the sequencer thread makes."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any, Final

from supervisord.core.errors import StoreError

SCHEMA_VERSION: Final = 1

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY, event_id TEXT NOT NULL UNIQUE, received REAL NOT NULL,
    doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY, seq INTEGER NOT NULL, event_id TEXT NOT NULL,
    callback TEXT NOT NULL, cb_key TEXT NOT NULL, cb TEXT NOT NULL, owner INTEGER,
    job TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    started REAL, ended REAL, exit_code INTEGER, signal INTEGER, outcome TEXT,
    description TEXT, truncated INTEGER NOT NULL DEFAULT 0, log TEXT, actions TEXT);
CREATE INDEX IF NOT EXISTS runs_unfinished ON runs(run_id) WHERE state != 'finished';
CREATE INDEX IF NOT EXISTS runs_owner ON runs(owner, run_id);
CREATE INDEX IF NOT EXISTS runs_seq ON runs(seq);
CREATE INDEX IF NOT EXISTS runs_callback ON runs(callback, run_id);
CREATE TABLE IF NOT EXISTS actions (
    action_id INTEGER PRIMARY KEY, run_id INTEGER NOT NULL, seq INTEGER NOT NULL,
    callback TEXT NOT NULL, job_id INTEGER, action TEXT NOT NULL, target TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS actions_seq ON actions(seq);
CREATE TABLE IF NOT EXISTS jobs (id INTEGER PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS latches (
    cb_key TEXT NOT NULL, owner INTEGER, terms TEXT NOT NULL, PRIMARY KEY (cb_key, owner));
CREATE TABLE IF NOT EXISTS clock (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

SYNC_MODES: Final = {"full": "FULL", "normal": "NORMAL", "off": "OFF"}

# Counters kept in `meta` so the totals of `status` span the daemon's whole life.
COUNTERS: Final = ("last_seq", "last_run_id", "events_total", "runs_total", "runs_failed")
# The counters only events change: a commit writes them only along with the others, since
# read_counters can recount them from the events table (one page less per commit).
EVENT_COUNTERS: Final = frozenset({"last_seq", "events_total"})


@dataclass(frozen=True, slots=True)
class RunRow:
    """An unfinished run as stored, for recovery after a restart."""

    run_id: int
    seq: int
    event_id: str
    cb: dict[str, Any]
    owner: int | None
    job: dict[str, Any]
    attempts: int
    event_doc: dict[str, Any]


# One encoder for every write: json.dumps with options builds a new one per call.
dumps: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def connect(state_dir: str, sync: str = "full") -> sqlite3.Connection:
    """Open (creating) the journal in WAL mode with synchronous=FULL: a commit is on disk."""
    try:
        os.makedirs(state_dir, exist_ok=True)
        db = sqlite3.connect(
            os.path.join(state_dir, "journal.db"), isolation_level=None, check_same_thread=False
        )
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={SYNC_MODES[sync]}")
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(_SCHEMA)
        db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        # Prove the directory is writable now: a read-only state dir is a start-up error.
        db.execute("BEGIN IMMEDIATE")
        db.execute("UPDATE meta SET value = value WHERE key = 'schema'")
        db.execute("COMMIT")
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(f"cannot open the journal in {state_dir}: {exc}") from exc
    return db


def read_counters(db: sqlite3.Connection) -> dict[str, int]:
    """The counters as of the last commit. A commit of events alone does not write them
    (see EVENT_COUNTERS): the newest stored event, which prune keeps, brings them up to date."""
    rows = dict(db.execute("SELECT key, value FROM meta").fetchall())
    counters = {name: int(rows.get(name, 0)) for name in COUNTERS}
    newest = db.execute("SELECT max(seq) FROM events").fetchone()[0] or 0
    if newest > counters["last_seq"]:  # each accepted event added one to both
        counters["events_total"] += newest - counters["last_seq"]
        counters["last_seq"] = newest
    return counters


def read_flag(db: sqlite3.Connection, name: str) -> str | None:
    row = db.execute("SELECT value FROM meta WHERE key = ?", (name,)).fetchone()
    return None if row is None else str(row[0])


def write_meta(db: sqlite3.Connection, items: dict[str, Any]) -> None:
    if not items:
        return
    db.executemany(
        "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        [(k, str(v)) for k, v in items.items()],
    )


def find_events(db: sqlite3.Connection, event_ids: list[str]) -> dict[str, int]:
    """The stored seq of each of these event ids that is already stored."""
    found: dict[str, int] = {}
    for i in range(0, len(event_ids), 500):  # SQLite's bound-parameter limit is 999+
        chunk = event_ids[i : i + 500]
        marks = ",".join("?" * len(chunk))
        sql = f"SELECT event_id, seq FROM events WHERE event_id IN ({marks})"
        found.update(db.execute(sql, chunk).fetchall())
    return found


def id_prefix(db: sqlite3.Connection) -> str:
    """This journal's prefix for event ids the daemon assigns, made once at creation."""
    prefix = read_flag(db, "id_prefix")
    if prefix is None:
        prefix = f"qb-{os.urandom(3).hex()}-"
        write_meta(db, {"id_prefix": prefix})
    return prefix


# Events per INSERT statement. executemany steps once per row, and every step lets go of
# the GIL and takes it back, waking the loop thread each time it waits for it; one
# statement of many rows steps once.
INSERT_CHUNK: Final = 256
_INSERT_EVENT: Final = "INSERT INTO events VALUES (?, ?, ?, ?)"
_INSERT_EVENTS: Final = "INSERT INTO events VALUES " + ", ".join(["(?, ?, ?, ?)"] * INSERT_CHUNK)


def insert_events(db: sqlite3.Connection, rows: Sequence[tuple[int, str, float, str]]) -> None:
    whole = len(rows) - len(rows) % INSERT_CHUNK
    if whole:
        chunks = [
            tuple(chain.from_iterable(rows[i : i + INSERT_CHUNK]))
            for i in range(0, whole, INSERT_CHUNK)
        ]
        db.executemany(_INSERT_EVENTS, chunks)
    _many(db, _INSERT_EVENT, rows[whole:])


def insert_runs(db: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    _many(
        db,
        "INSERT INTO runs (run_id, seq, event_id, callback, cb_key, cb, owner, job, state)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending')",
        rows,
    )


def mark_started(db: sqlite3.Connection, rows: Sequence[tuple[float, int]]) -> None:
    _many(
        db,
        "UPDATE runs SET state = 'running', started = ?, attempts = attempts + 1 WHERE run_id = ?",
        rows,
    )


def mark_finished(db: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    _many(
        db,
        "UPDATE runs SET state = 'finished', started = ?, ended = ?, exit_code = ?, signal = ?,"
        " outcome = ?, description = ?, truncated = ?, log = ?, actions = ? WHERE run_id = ?",
        rows,
    )


def insert_actions(db: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    _many(
        db,
        "INSERT INTO actions (run_id, seq, callback, job_id, action, target)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        rows,
    )


def unfinished_runs(db: sqlite3.Connection) -> Iterator[RunRow]:
    cur = db.execute(
        "SELECT r.run_id, r.seq, r.event_id, r.cb, r.owner, r.job, r.attempts, e.doc"
        " FROM runs r LEFT JOIN events e ON e.seq = r.seq"
        " WHERE r.state != 'finished' ORDER BY r.run_id"
    )
    for run_id, seq, event_id, cb, owner, job, attempts, doc in cur:
        yield RunRow(
            run_id, seq, event_id, json.loads(cb), owner, json.loads(job), attempts,
            event_doc(doc) if doc else {"seq": seq, "event_id": event_id},
        )  # fmt: skip


def event_doc(text: str) -> dict[str, Any]:
    """An event document as journalled: the request line may still carry its `op`."""
    doc: dict[str, Any] = json.loads(text)
    doc.pop("op", None)
    return doc


def save_state(
    db: sqlite3.Connection,
    jobs: dict[int, dict[str, Any] | None],
    latches: dict[tuple[str, int | None], frozenset[int] | None],
    clock: dict[Any, Any],
) -> None:
    """Persist what the matcher changed in this batch (None means deleted)."""
    if jobs:
        _many(
            db,
            "INSERT OR REPLACE INTO jobs VALUES (?, ?)",
            [(k, dumps(v)) for k, v in jobs.items() if v is not None],
        )
        _many(db, "DELETE FROM jobs WHERE id = ?", [(k,) for k, v in jobs.items() if v is None])
    if latches:
        _many(
            db,
            "INSERT OR REPLACE INTO latches VALUES (?, ?, ?)",
            [(k[0], k[1], dumps(sorted(v))) for k, v in latches.items() if v],
        )
        _many(
            db,
            "DELETE FROM latches WHERE cb_key = ? AND owner IS ?",
            [(k[0], k[1]) for k, v in latches.items() if not v],
        )
    if clock:
        _many(
            db,
            "INSERT OR REPLACE INTO clock VALUES (?, ?)",
            [(dumps(k), dumps(v)) for k, v in clock.items() if v is not None],
        )
        _many(
            db,
            "DELETE FROM clock WHERE key = ?",
            [(dumps(k),) for k, v in clock.items() if v is None],
        )


def _many(db: sqlite3.Connection, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
    if rows:
        db.executemany(sql, rows)


def load_jobs(db: sqlite3.Connection) -> Iterable[tuple[int, dict[str, Any]]]:
    return [(int(i), json.loads(d)) for i, d in db.execute("SELECT id, doc FROM jobs")]


def load_latches(db: sqlite3.Connection) -> Iterable[tuple[tuple[str, int | None], frozenset[int]]]:
    rows = db.execute("SELECT cb_key, owner, terms FROM latches")
    return [((k, o), frozenset(json.loads(t))) for k, o, t in rows]


def load_clock(db: sqlite3.Connection) -> Iterable[tuple[Any, Any]]:
    return [(_key(json.loads(k)), json.loads(v)) for k, v in db.execute("SELECT * FROM clock")]


def _key(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def history(
    db: sqlite3.Connection,
    job: int | None,
    callback: str | None,
    outcome: str | None,
    limit: int,
) -> list[dict[str, Any]]:
    where, args = [], []
    for clause, value in (("owner = ?", job), ("callback = ?", callback), ("outcome = ?", outcome)):
        if value is not None:
            where.append(clause)
            args.append(value)
    sql = (
        "SELECT run_id, seq, event_id, callback, owner, started, ended, exit_code, signal,"
        " outcome, truncated, log, actions, state, attempts, description FROM runs"
    )
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY run_id DESC LIMIT ?"
    return [_history_row(r) for r in db.execute(sql, [*args, limit])]


def _history_row(r: tuple[Any, ...]) -> dict[str, Any]:
    return {
        "run_id": r[0], "seq": r[1], "event_id": r[2], "callback": r[3], "job_id": r[4],
        "started": r[5], "ended": r[6], "exit_code": r[7], "signal": r[8], "outcome": r[9],
        "truncated": bool(r[10]), "log": r[11], "actions": json.loads(r[12]) if r[12] else [],
        "state": r[13], "attempts": r[14], "description": r[15],
    }  # fmt: skip


def actions_since(db: sqlite3.Connection, since: int) -> list[dict[str, Any]]:
    rows = db.execute(
        "SELECT action_id, seq, callback, job_id, action, target FROM actions"
        " WHERE seq > ? ORDER BY action_id",
        (since,),
    )
    return [
        {"op": "action", "id": a, "seq": s, "callback": c, "job_id": j, "action": v, "target": t}
        for a, s, c, j, v, t in rows
    ]


def prune(db: sqlite3.Connection, before: float, chunk: int) -> int:
    """Forget finished runs and events older than `before`, at most `chunk` rows each."""
    n = db.execute(
        "DELETE FROM runs WHERE run_id IN (SELECT run_id FROM runs WHERE state = 'finished'"
        " AND ended < ? ORDER BY run_id LIMIT ?)",
        (before, chunk),
    ).rowcount
    n += db.execute(
        "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE received < ?"
        " AND seq NOT IN (SELECT seq FROM runs) AND seq < (SELECT max(seq) FROM events)"
        " ORDER BY seq LIMIT ?)",  # the newest stays: read_counters needs it
        (before, chunk),
    ).rowcount
    n += db.execute(
        "DELETE FROM actions WHERE action_id IN (SELECT action_id FROM actions"
        " WHERE run_id NOT IN (SELECT run_id FROM runs) ORDER BY action_id LIMIT ?)",
        (chunk,),
    ).rowcount
    return int(n)
