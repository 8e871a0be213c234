"""The SQLite store: schema, and the reads and writes the sequencer thread makes."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any, Final

from supervisord.core.errors import StoreError
from supervisord.journal import schema
from supervisord.journal.backend import Db

CACHE_KIB: Final = 512
SYNC_MODES: Final = {"full": "FULL", "normal": "NORMAL", "off": "OFF"}

# Counters kept in `meta` so the totals of `status` span the daemon's whole life.
COUNTERS: Final = (
    "last_seq", "last_run_id", "events_total", "runs_total", "runs_failed", "runs_retried",
    "runs_dead",
)  # fmt: skip
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
    attempts: int  # times started (a start the daemon did not see end was cut off)
    event_doc: dict[str, Any]
    attempt: int = 1  # the delivery attempt (SPEC §7.2), not the number of starts
    first_run_id: int | None = None
    replayed: bool = False


# One encoder for every write: json.dumps with options builds a new one per call.
dumps: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def connect(state_dir: str, sync: str = "full") -> sqlite3.Connection:  # the SQLite one
    """Open (creating) the journal in WAL mode with synchronous=FULL: a commit is on disk."""
    try:
        os.makedirs(state_dir, exist_ok=True)
        db = sqlite3.connect(
            os.path.join(state_dir, "journal.db"), isolation_level=None, check_same_thread=False
        )
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={SYNC_MODES[sync]}")
        db.execute("PRAGMA busy_timeout=5000")
        # 512 KiB of page cache, not SQLite's 2 MiB: the writes are appends and the reads
        # indexed lookups, and the cache stayed full after bursts (bench/b_rss.py, R).
        db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        schema.create(db)
        # Prove the directory is writable now: a read-only state dir is a start-up error.
        db.execute("BEGIN IMMEDIATE")
        db.execute("UPDATE meta SET value = value WHERE key = 'schema'")
        db.execute("COMMIT")
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(f"cannot open the journal in {state_dir}: {exc}") from exc
    return db


def read_counters(db: Db) -> dict[str, int]:
    """The counters as of the last commit. A commit of events alone does not write them
    (see EVENT_COUNTERS): the newest stored event, which prune keeps, brings them up to date."""
    rows = dict(db.execute("SELECT key, value FROM meta").fetchall())
    newest = db.execute("SELECT max(seq) FROM events").fetchone()[0] or 0
    return counters_of(rows, int(newest))


def counters_of(rows: dict[str, Any], newest: int) -> dict[str, int]:
    """`read_counters` from the rows of `meta` and the newest stored event's seq."""
    counters = {name: int(rows.get(name, 0)) for name in COUNTERS}
    if newest > counters["last_seq"]:  # each accepted event added one to both
        counters["events_total"] += newest - counters["last_seq"]
        counters["last_seq"] = newest
    return counters


def read_flag(db: Db, name: str) -> str | None:
    row = db.execute("SELECT value FROM meta WHERE key = ?", (name,)).fetchone()
    return None if row is None else str(row[0])


def write_meta(db: Db, items: dict[str, Any]) -> None:
    if not items:
        return
    db.executemany(
        "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        [(k, str(v)) for k, v in items.items()],
    )


def find_events(db: Db, event_ids: list[str]) -> dict[str, int]:
    """The stored seq of each of these event ids that is already stored."""
    found: dict[str, int] = {}
    for i in range(0, len(event_ids), 500):  # SQLite's bound-parameter limit is 999+
        chunk = event_ids[i : i + 500]
        marks = ",".join("?" * len(chunk))
        sql = f"SELECT event_id, seq FROM events WHERE event_id IN ({marks})"
        found.update(db.execute(sql, chunk).fetchall())
    return found


def id_prefix(db: Db) -> str:
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


def insert_events(db: Db, rows: Sequence[tuple[int, str, float, str]]) -> None:
    whole = len(rows) - len(rows) % INSERT_CHUNK
    if whole:
        chunks = [
            tuple(chain.from_iterable(rows[i : i + INSERT_CHUNK]))
            for i in range(0, whole, INSERT_CHUNK)
        ]
        db.executemany(_INSERT_EVENTS, chunks)
    many(db, _INSERT_EVENT, rows[whole:])


def insert_runs(db: Db, rows: Sequence[tuple[Any, ...]]) -> None:
    many(
        db,
        "INSERT INTO runs (run_id, seq, event_id, callback, cb_key, cb, owner, job, state)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending')",
        rows,
    )


def insert_delivery_runs(db: Db, rows: Sequence[tuple[Any, ...]]) -> None:
    """Runs made by the delivery policy: held, retries, replays (SPEC §7)."""
    many(
        db,
        "INSERT INTO runs (run_id, seq, event_id, callback, cb_key, cb, owner, job, state,"
        " attempt, first_run_id, due, replayed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )


def set_state(db: Db, rows: Sequence[tuple[str, int]]) -> None:
    """``(state, run_id)``: a held or retrying run becomes pending, or a pending one held."""
    many(db, "UPDATE runs SET state = ?, due = NULL WHERE run_id = ?", rows)


def mark_started(db: Db, rows: Sequence[tuple[float, int]]) -> None:
    many(
        db,
        "UPDATE runs SET state = 'running', started = ?, attempts = attempts + 1 WHERE run_id = ?",
        rows,
    )


def mark_finished(db: Db, rows: Sequence[tuple[Any, ...]]) -> None:
    many(
        db,
        "UPDATE runs SET state = 'finished', started = ?, ended = ?, exit_code = ?, signal = ?,"
        " outcome = ?, description = ?, truncated = ?, log = ?, actions = ?, dead = ?,"
        " left_running = ? WHERE run_id = ?",
        rows,
    )


def error_row(reason: str, run_id: int) -> tuple[Any, ...]:
    """A `mark_finished` row for a run that could not be started (outcome ``error``)."""
    return (None, None, None, None, "error", reason, 0, None, "[]", 0, 0, run_id)


def insert_actions(db: Db, rows: Sequence[tuple[Any, ...]]) -> None:
    many(
        db,
        "INSERT INTO actions (run_id, seq, callback, job_id, action, target)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        rows,
    )


def unfinished_runs(db: Db) -> Iterator[RunRow]:
    """Runs queued or running when the daemon stopped (held and retrying ones wait on)."""
    return run_rows(db, "r.state IN ('pending', 'running') ORDER BY r.run_id", ())


def run_rows(db: Db, where: str, args: Sequence[Any]) -> Iterator[RunRow]:
    """Stored runs with their events, as recovery, retries and replays need them."""
    cur = db.execute(
        "SELECT r.run_id, r.seq, r.event_id, r.cb, r.owner, r.job, r.attempts, e.doc,"
        " r.attempt, r.first_run_id, r.replayed"
        " FROM runs r LEFT JOIN events e ON e.seq = r.seq WHERE " + where,
        args,
    )
    for run_id, seq, event_id, cb, owner, job, attempts, doc, attempt, first, replayed in cur:
        yield RunRow(
            run_id, seq, event_id, json.loads(cb), owner, json.loads(job), attempts,
            event_doc(doc) if doc else {"seq": seq, "event_id": event_id},
            attempt, first, bool(replayed),
        )  # fmt: skip


def event_doc(text: str) -> dict[str, Any]:
    """An event document as journalled: the request line may still carry its `op`."""
    doc: dict[str, Any] = json.loads(text)
    doc.pop("op", None)
    return doc


def many(db: Db, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
    if rows:
        db.executemany(sql, rows)
