"""The journal's schema, and the migration of a journal written by an older daemon."""

from __future__ import annotations

import json
import sqlite3
from typing import Final

from supervisord.core.errors import StoreError
from supervisord.core.jobstore import row_parts, stored_job

# 2: runs gained attempt, first_run_id, due, dead, replayed, left_running; breakers.
# 3: jobs gained pgrp, pid and done_at columns, indexed (see _migrate_jobs).
# 4: runs gained member (the fleet member that ran it; SPEC §8), NULL on SQLite.
SCHEMA_VERSION: Final = 4

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
    description TEXT, truncated INTEGER NOT NULL DEFAULT 0, log TEXT, actions TEXT,
    attempt INTEGER NOT NULL DEFAULT 1, first_run_id INTEGER, due REAL,
    dead INTEGER NOT NULL DEFAULT 0, replayed INTEGER NOT NULL DEFAULT 0,
    left_running INTEGER NOT NULL DEFAULT 0, member TEXT);
CREATE INDEX IF NOT EXISTS runs_unfinished ON runs(run_id) WHERE state != 'finished';
CREATE INDEX IF NOT EXISTS runs_owner ON runs(owner, run_id);
CREATE INDEX IF NOT EXISTS runs_seq ON runs(seq);
CREATE INDEX IF NOT EXISTS runs_callback ON runs(callback, run_id);
CREATE TABLE IF NOT EXISTS actions (
    action_id INTEGER PRIMARY KEY, run_id INTEGER NOT NULL, seq INTEGER NOT NULL,
    callback TEXT NOT NULL, job_id INTEGER, action TEXT NOT NULL, target TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS actions_seq ON actions(seq);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY, doc TEXT NOT NULL, pgrp INTEGER, pid INTEGER, done_at REAL);
CREATE TABLE IF NOT EXISTS latches (
    cb_key TEXT NOT NULL, owner INTEGER, terms TEXT NOT NULL, PRIMARY KEY (cb_key, owner));
CREATE TABLE IF NOT EXISTS clock (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS breakers (callback TEXT PRIMARY KEY, doc TEXT NOT NULL);
"""
# Created after the columns they index exist (a journal of schema 1 gains them first).
_INDEXES: Final = """
CREATE INDEX IF NOT EXISTS runs_waiting ON runs(state, due) WHERE state IN ('retrying', 'held');
CREATE INDEX IF NOT EXISTS runs_dead ON runs(callback, run_id) WHERE dead = 1;
CREATE INDEX IF NOT EXISTS jobs_pgrp ON jobs(pgrp) WHERE pgrp IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_pid ON jobs(pid) WHERE pid IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_done ON jobs(done_at) WHERE done_at IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS latches_key ON latches(cb_key, ifnull(owner, -1));
"""
# Columns schemas 2 and 4 added to `runs`, for journals written by older daemons.
_RUN_COLUMNS_2: Final = (
    "attempt INTEGER NOT NULL DEFAULT 1", "first_run_id INTEGER", "due REAL",
    "dead INTEGER NOT NULL DEFAULT 0", "replayed INTEGER NOT NULL DEFAULT 0",
    "left_running INTEGER NOT NULL DEFAULT 0", "member TEXT",
)  # fmt: skip


def create(db: sqlite3.Connection) -> None:
    """Create what is missing, migrate an older journal, refuse a newer one."""
    db.executescript(_SCHEMA)
    _migrate(db)
    db.executescript(_INDEXES)


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a journal of an older schema up to this one; refuse one newer than it."""
    row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    version = SCHEMA_VERSION if row is None else int(row[0])
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"the journal has schema {version}, newer than this daemon knows ({SCHEMA_VERSION})"
        )
    have = {r[1] for r in db.execute("PRAGMA table_info(runs)")}
    for column in _RUN_COLUMNS_2:
        if column.split()[0] not in have:
            db.execute(f"ALTER TABLE runs ADD COLUMN {column}")
    if "done_at" not in {r[1] for r in db.execute("PRAGMA table_info(jobs)")}:
        _migrate_jobs(db)
    if version < 4:
        # SQLite lets a primary key column hold NULL, and NULLs never conflict: a latch with
        # no owner was added again, not replaced, at each save. The newest row is the one
        # that was meant; the unique index (_INDEXES) makes later saves replace it.
        db.execute(
            "DELETE FROM latches WHERE rowid NOT IN"
            " (SELECT max(rowid) FROM latches GROUP BY cb_key, ifnull(owner, -1))"
        )
    db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))


def _migrate_jobs(db: sqlite3.Connection) -> None:
    """Schema 3: rows `{"job": {...}, "done_at": t}` become the job and its columns."""
    db.execute("BEGIN IMMEDIATE")
    for column in ("pgrp INTEGER", "pid INTEGER", "done_at REAL"):
        db.execute(f"ALTER TABLE jobs ADD COLUMN {column}")
    for i, doc in db.execute("SELECT id, doc FROM jobs").fetchall():
        _, job, done_at, pgrp, pid = stored_job(int(i), *row_parts(json.loads(doc)))
        db.execute(
            "UPDATE jobs SET doc = ?, done_at = ?, pgrp = ?, pid = ? WHERE id = ?",
            (_dumps(job), done_at, pgrp, pid, i),
        )
    db.execute("COMMIT")


# The store's encoder, repeated here so that the schema needs nothing of the store.
_dumps: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
