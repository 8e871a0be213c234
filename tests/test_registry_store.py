"""Tests of the registry kept in the journal: a bounded cache, lookups of evicted jobs, the
store read only when needed, restarts, and the journal's migration to schema 3."""

from __future__ import annotations

import json
import sqlite3
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisord.core import registry as registry_module
from supervisord.core.errors import StoreError
from supervisord.core.events import validate_event
from supervisord.core.jobstore import LoadedJob
from supervisord.core.matching import MatchState, Table, match
from supervisord.core.model import QUBE_EPOCH, Callback, Event
from supervisord.core.registry import JobRegistry
from supervisord.core.timers import due_events, next_deadline
from supervisord.core.triggers import parse_trigger, terms_of
from supervisord.journal import schema, store
from supervisord.journal.state import JournalJobs, save_state

RETENTION = 100.0


def event(name: str, job_id: int, time: float = 1000.0, **job: Any) -> Event:
    doc = {"name": name, "type": "job", "job": {"id": job_id, **job}, "time": time}
    return validate_event(doc, time)


class CountingJobs(JournalJobs):
    """The journal's store, counting the reads that fetch jobs by id."""

    def __init__(self, db: sqlite3.Connection) -> None:
        super().__init__(db)
        self.reads: list[list[int]] = []

    def rows(self, ids: Sequence[int]) -> list[LoadedJob]:
        self.reads.append(list(ids))
        return super().rows(ids)


@contextmanager
def journal() -> Iterator[tuple[str, sqlite3.Connection]]:
    with tempfile.TemporaryDirectory(prefix="qbr", dir="/tmp") as path:
        db = store.connect(path, "off")
        try:
            yield path, db
        finally:
            db.close()


def same(reg: JobRegistry, ref: JobRegistry, ids: range) -> None:
    """Every lookup of the store-backed registry answers as the in-memory reference."""
    assert reg.all_ids() == ref.all_ids()
    for i in ids:
        assert reg.get(i) == ref.get(i), i
        assert reg.field(i, "label") == ref.field(i, "label")
        assert reg.pgrp_ids(i) == ref.pgrp_ids(i), i
        assert reg.children_of(i) == ref.children_of(i), i
        assert reg.by_pgrp(i) == ref.by_pgrp(i)


# (event name, job id, pgrp or None, pid or None, label or None, time step)
STEPS = st.lists(
    st.one_of(
        st.tuples(
            st.sampled_from(["submit", "running", "complete", "removed", "modified"]),
            st.integers(1, 12),
            st.none() | st.integers(1, 12),
            st.none() | st.integers(1, 12),
            st.none() | st.sampled_from(["a", "B"]),
            st.integers(0, 60),
        ),
        st.sampled_from(["flush", "restart", "expire"]),
    ),
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(STEPS)
def test_a_tiny_cache_answers_as_a_registry_that_keeps_everything(steps: list[Any]) -> None:
    with pytest.MonkeyPatch.context() as mp, journal() as (path, db):
        mp.setattr(registry_module, "HOT_JOBS", 2)  # nearly every lookup goes to the journal
        reg, ref, now = JobRegistry(RETENTION, JournalJobs(db)), JobRegistry(RETENTION), 1000.0
        for step in steps:
            if step == "flush":
                reg.flush()
            elif step == "restart":
                reg.flush()
                db.close()
                db = store.connect(path, "off")
                reg = JobRegistry(RETENTION, JournalJobs(db))
            elif step == "expire":
                assert reg.expire(now) == ref.expire(now)
            else:
                name, job_id, pgrp, pid, label, dt = step
                now += dt
                fields = {"pgrp": pgrp, "pid": pid, "label": label}
                e = event(name, job_id, now, **{k: v for k, v in fields.items() if v is not None})
                reg.observe(e)
                ref.observe(e)
            same(reg, ref, range(14))
        db.close()


def test_memory_holds_a_bounded_number_of_jobs(
    monkeypatch: pytest.MonkeyPatch, journal_db: Any
) -> None:
    monkeypatch.setattr(registry_module, "HOT_JOBS", 100)
    db = journal_db
    reg = JobRegistry(RETENTION, JournalJobs(db))
    for batch in range(20):
        for i in range(batch * 100, batch * 100 + 100):
            reg.observe(event("running", i + 1, pgrp=1 + i // 50, pid=1 + i // 10))
        reg.flush()
        assert len(reg._hot) + len(reg._cold) <= 200 and not reg._pending
    assert len(reg) == 2000
    # Jobs long gone from memory are found in the journal, with their process groups.
    assert reg.get(7) == {"id": 7, "pgrp": 1, "pid": 1, "status": "running"}
    assert reg.pgrp_ids(1) == list(range(1, 51))
    assert reg.children_of(1) == list(range(1, 11))
    assert reg.children_of(5) == list(range(41, 51))
    assert [j["id"] for j in reg.by_pgrp(2)] == list(range(51, 101))
    assert len(reg._hot) + len(reg._cold) <= 200


def test_new_job_ids_are_known_new_without_reading_the_journal(journal_db: Any) -> None:
    db = journal_db
    jobs = CountingJobs(db)
    reg = JobRegistry(RETENTION, jobs)
    for i in range(1, 1001):
        reg.observe(event("running", i))
    reg.flush()
    assert jobs.reads == []  # each id above every id stored: new
    restarted = JobRegistry(RETENTION, jobs)
    restarted.prefetch(range(995, 1010))
    assert jobs.reads == [list(range(995, 1001))]  # one read, of the ids stored
    for i in range(995, 1010):
        restarted.observe(event("complete", i))
    assert jobs.reads == [list(range(995, 1001))]
    assert restarted.get(1000) == {"id": 1000, "status": "complete"}


def test_a_restart_finds_every_job_and_its_expiry() -> None:
    with journal() as (path, db):
        reg = JobRegistry(RETENTION, JournalJobs(db))
        reg.observe(event("submit", 1, label="main", pgrp=1))
        reg.observe(event("submit", 2, label="child", pgrp=1, pid=1))
        reg.observe(event("complete", 2, time=1010.0))
        reg.observe(event("removed", 3, time=1020.0, pid=1))
        reg.flush()
        db.close()
        with sqlite3.connect(Path(path) / "journal.db") as check:
            rows = check.execute("SELECT id, doc, pgrp, pid, done_at FROM jobs ORDER BY id")
            assert [(i, json.loads(d), g, p, t) for i, d, g, p, t in rows] == [
                (1, {"id": 1, "label": "main", "pgrp": 1, "status": "pending"}, None, None, None),
                (2, {"id": 2, "label": "child", "pgrp": 1, "pid": 1, "status": "complete"},
                 1, 1, 1010.0),
                (3, {"id": 3, "pid": 1, "status": "removed"}, None, 1, 1020.0),
            ]  # fmt: skip
        db = store.connect(path, "off")
        again = JobRegistry(RETENTION, JournalJobs(db))
        assert again.pgrp_ids(1) == [1, 2] and again.children_of(1) == [2, 3]
        assert again.expire(1109.0) == []
        assert again.expire(1110.0) == [2] and again.children_of(1) == [3]
        again.flush()
        assert JobRegistry(RETENTION, JournalJobs(db)).all_ids() == [1, 3]
        db.close()


def test_expiry_reads_the_journal_by_done_at_in_chunks() -> None:
    with journal() as (_, db):
        reg = JobRegistry(RETENTION, JournalJobs(db))
        for i in range(1, 11):
            reg.observe(event("complete", i, time=1000.0 + i))
        reg.flush()
        assert reg.expire(2000.0, limit=4) == [1, 2, 3, 4]
        reg.flush()
        assert reg.expire(2000.0) == [5, 6, 7, 8, 9, 10] and reg.all_ids() == []
        plan = " ".join(
            str(r) for r in db.execute("EXPLAIN QUERY PLAN SELECT id FROM jobs WHERE done_at <= 1")
        )
        assert "jobs_done" in plan


def callback(trigger: str, line: int) -> Callback:
    expr = parse_trigger(trigger)
    return Callback(f"cb{line}.py", "/cbdir", line, "python", trigger, expr, terms_of(expr))


T = 800_000_000  # a Qube time; its Unix time is T + QUBE_EPOCH
TABLE = Table(
    [
        callback("complete-job-self && complete-job-parent", 1),
        callback("complete-job-render", 2),
        callback(f"dummy-time-self-{T}", 3),
    ]
)


def run_family(state: MatchState, evict: Any) -> list[list[tuple[int, int | None]]]:
    """A family's jobs, then (after ``evict``) the events whose owners are found through
    them: latches, parent and label contexts, and a time term for every job."""
    at = T + QUBE_EPOCH
    family: dict[int, dict[str, Any]] = {
        1: {"label": "main"},
        2: {"label": "render", "pid": 1},
        3: {"label": "comp", "pid": 1},
    }
    for job_id, fields in family.items():
        match(TABLE, state, event("submit", job_id, at - 60, pgrp=1, **fields))
    next_deadline(TABLE, state.clock, at - 60)
    evict()
    steps = [event("complete", 2, at - 30), event("complete", 1, at - 20)]
    steps += due_events(TABLE, state, at)
    return [[(f.callback.line, f.owner) for f in match(TABLE, state, e)] for e in steps]


def test_matching_reaches_jobs_only_the_journal_holds(
    monkeypatch: pytest.MonkeyPatch, journal_db: Any
) -> None:
    monkeypatch.setattr(registry_module, "HOT_JOBS", 2)
    expected = [
        [(2, 1), (2, 2), (2, 3)],  # job 2's label: every job of its process group
        [(1, 2)],  # job 1 completes: its child 2 had completed
        [(3, 1)], [(3, 2)], [(3, 3)],  # the time term, once for each job
    ]  # fmt: skip
    assert run_family(MatchState(60), lambda: None) == expected
    db = journal_db
    state = MatchState(60, JournalJobs(db))

    def evict() -> None:  # the family's jobs leave memory: a restart, then others
        state.registry.flush()
        state.registry = JobRegistry(60, JournalJobs(db))
        for i in range(100, 110):
            state.registry.observe(event("submit", i))

    assert run_family(state, evict) == [*expected, *([(3, i)] for i in range(100, 110))]


# -- migration ----------------------------------------------------------------------------

# The tables schema 1 created (store.py as of schema 1), with the rows it wrote.
SCHEMA_1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE events (seq INTEGER PRIMARY KEY, event_id TEXT NOT NULL UNIQUE,
    received REAL NOT NULL, doc TEXT NOT NULL);
CREATE TABLE runs (
    run_id INTEGER PRIMARY KEY, seq INTEGER NOT NULL, event_id TEXT NOT NULL,
    callback TEXT NOT NULL, cb_key TEXT NOT NULL, cb TEXT NOT NULL, owner INTEGER,
    job TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    started REAL, ended REAL, exit_code INTEGER, signal INTEGER, outcome TEXT,
    description TEXT, truncated INTEGER NOT NULL DEFAULT 0, log TEXT, actions TEXT);
CREATE TABLE actions (action_id INTEGER PRIMARY KEY, run_id INTEGER NOT NULL,
    seq INTEGER NOT NULL, callback TEXT NOT NULL, job_id INTEGER, action TEXT NOT NULL,
    target TEXT NOT NULL);
CREATE TABLE jobs (id INTEGER PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE latches (cb_key TEXT NOT NULL, owner INTEGER, terms TEXT NOT NULL,
    PRIMARY KEY (cb_key, owner));
CREATE TABLE clock (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
# Schema 2 added these to `runs`, and the breakers table.
RUNS_2 = (
    "attempt INTEGER NOT NULL DEFAULT 1", "first_run_id INTEGER", "due REAL",
    "dead INTEGER NOT NULL DEFAULT 0", "replayed INTEGER NOT NULL DEFAULT 0",
    "left_running INTEGER NOT NULL DEFAULT 0",
)  # fmt: skip
OLD_JOBS = [
    (1, {"job": {"id": 1, "label": "main", "pgrp": 1, "status": "running"}, "done_at": None}),
    (2, {"job": {"id": 2, "pgrp": 1, "pid": 1, "status": "complete"}, "done_at": 1010.0}),
    (3, {"job": {"id": 3, "pgrp": True, "pid": "1", "status": "removed"}, "done_at": 1020}),
    (4, {"name": "bare", "pgrp": 1}),  # a bare job object, as the registry also loaded
]


def old_journal(path: Path, version: int) -> None:
    db = sqlite3.connect(path / "journal.db")
    db.executescript(SCHEMA_1)
    if version == 2:
        for column in RUNS_2:
            db.execute(f"ALTER TABLE runs ADD COLUMN {column}")
        db.execute("CREATE TABLE breakers (callback TEXT PRIMARY KEY, doc TEXT NOT NULL)")
    db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(version),))
    db.execute("INSERT INTO runs (run_id, seq, event_id, callback, cb_key, cb, job, state)"
               " VALUES (1, 1, 'e1', 'a.pl', 'k', '{}', '{}', 'finished')")  # fmt: skip
    db.executemany("INSERT INTO jobs VALUES (?, ?)", [(i, json.dumps(d)) for i, d in OLD_JOBS])
    db.commit()
    db.close()


@pytest.mark.parametrize("version", [1, 2])
def test_journals_of_schema_1_and_2_migrate_in_place(tmp_path: Path, version: int) -> None:
    old_journal(tmp_path, version)
    db = store.connect(str(tmp_path), "off")
    assert store.read_flag(db, "schema") == str(schema.SCHEMA_VERSION) == "4"
    assert db.execute("SELECT attempt, dead, left_running, member FROM runs").fetchall() == [
        (1, 0, 0, None)
    ]
    rows = db.execute("SELECT id, doc, pgrp, pid, done_at FROM jobs ORDER BY id").fetchall()
    assert [(i, json.loads(d), g, p, t) for i, d, g, p, t in rows] == [
        (1, {"id": 1, "label": "main", "pgrp": 1, "status": "running"}, None, None, None),
        (2, {"id": 2, "pgrp": 1, "pid": 1, "status": "complete"}, 1, 1, 1010.0),
        (3, {"id": 3, "pgrp": True, "pid": "1", "status": "removed"}, None, None, 1020.0),
        (4, {"name": "bare", "pgrp": 1, "id": 4}, 1, None, None),
    ]
    reg = JobRegistry(RETENTION, JournalJobs(db))
    assert reg.pgrp_ids(1) == [1, 2, 4] and reg.children_of(1) == [2]
    assert reg.get(3) == {"id": 3, "pgrp": True, "pid": "1", "status": "removed"}
    assert reg.expire(1115.0) == [2]
    db.close()
    again = store.connect(str(tmp_path), "off")  # migrated once: opening again changes nothing
    assert again.execute("SELECT count(*) FROM jobs WHERE done_at IS NOT NULL").fetchone() == (2,)
    again.close()


def test_a_journal_newer_than_the_daemon_is_refused(tmp_path: Path) -> None:
    store.connect(str(tmp_path), "off").close()
    newer = schema.SCHEMA_VERSION + 1
    with sqlite3.connect(tmp_path / "journal.db") as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (str(newer),))
    with pytest.raises(StoreError, match=f"schema {newer}"):
        store.connect(str(tmp_path), "off")


def test_a_schema_3_journal_keeps_one_latch_per_key_without_an_owner(tmp_path: Path) -> None:
    # Schema 3 let `INSERT OR REPLACE` add a second row for a latch with no owner (SQLite's
    # NULL in a primary key never conflicts); schema 4 keeps the newest and replaces it after.
    store.connect(str(tmp_path), "off").close()
    with sqlite3.connect(tmp_path / "journal.db") as db:
        db.execute("DROP INDEX latches_key")
        db.executemany("INSERT INTO latches VALUES ('k', NULL, ?)", [("[1]",), ("[1,2]",)])
        db.execute("UPDATE meta SET value = '3' WHERE key = 'schema'")
    db2 = store.connect(str(tmp_path), "off")
    assert db2.execute("SELECT terms FROM latches").fetchall() == [("[1,2]",)]
    save_state(db2, {("k", None): frozenset({3})}, {})
    assert db2.execute("SELECT terms FROM latches").fetchall() == [("[3]",)]
    db2.close()
