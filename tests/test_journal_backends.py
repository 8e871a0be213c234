"""The journal's statements on both backends (SPEC §8): SQLite and a real PostgreSQL.

Each test takes `journal_db` (tests/conftest.py), so it runs once on an SQLite journal and
once on a fresh PostgreSQL database; the sequencer tests build a whole sequencer on each.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from supervisord.core.errors import StoreError
from supervisord.core.matching import Table
from supervisord.core.model import Callback, Event
from supervisord.core.qbkeys import defaults
from supervisord.core.registry import JobRegistry
from supervisord.core.runtypes import RunRequest
from supervisord.core.triggers import parse_trigger, terms_of
from supervisord.journal import reads, state, store
from supervisord.journal.batch import Intake, Query
from supervisord.journal.sequencer import Sequencer

CB = json.dumps({"file": "a.py", "dir": "/cb", "line": 1, "language": "python",
                 "trigger": "complete-job-self", "key": "k1"})  # fmt: skip


def run_row(run_id: int, seq: int, owner: int | None = 7) -> tuple[Any, ...]:
    return (run_id, seq, f"e{seq}", "a.py", "k1", CB, owner, json.dumps({"id": owner}))


def test_events_are_stored_once_and_found_by_id(journal_db: Any) -> None:
    db = journal_db
    db.execute("BEGIN IMMEDIATE")
    store.insert_events(db, [(s, f"e{s}", 10.0 + s, json.dumps({"seq": s})) for s in range(1, 301)])
    db.execute("COMMIT")
    assert store.find_events(db, ["e1", "e300", "nope"]) == {"e1": 1, "e300": 300}
    assert store.read_counters(db)["last_seq"] == 300
    with pytest.raises(sqlite3.Error):  # the same event id twice: one error type, both
        store.insert_events(db, [(301, "e1", 0.0, "{}")])
    if db.in_transaction:
        db.execute("ROLLBACK")
    assert store.read_counters(db)["last_seq"] == 300


def test_a_run_from_pending_to_finished_reads_back_in_history(journal_db: Any) -> None:
    db = journal_db
    store.insert_events(db, [(1, "e1", 1.0, json.dumps({"seq": 1, "event_id": "e1"}))])
    store.insert_runs(db, [run_row(1, 1), run_row(2, 1, None)])
    assert [r.run_id for r in store.unfinished_runs(db)] == [1, 2]
    store.mark_started(db, [(5.0, 1)])
    store.mark_finished(db, [(5.0, 6.0, 0, None, "ok", "exit status 0", 0, "/l", "[]", 0, 0, 1)])
    store.insert_actions(db, [(1, 1, "a.py", 7, "retry", "work")])
    rows = reads.history(db, None, "a.py", None, 10)
    assert [(r["run_id"], r["state"], r["outcome"], r["member"]) for r in rows] == [
        (2, "pending", None, None),
        (1, "finished", "ok", None),
    ]
    assert rows[1]["attempts"] == 1 and rows[1]["first_run_id"] == 1
    assert reads.history(db, 7, None, "ok", 10)[0]["run_id"] == 1
    assert reads.unfinished_through(db, 1) == {"unfinished": 1, "retrying": 0, "held": 0}
    assert reads.actions_since(db, 0)[0]["action"] == "retry"
    assert reads.replay_sources(db, {"seq": 1}, 10) == [1, 2]
    assert reads.replay_sources(db, {"runs": [2, 9]}, 10) == [2]
    row = next(iter(store.run_rows(db, "r.run_id = ?", (1,))))
    assert row.event_doc == {"seq": 1, "event_id": "e1"} and row.cb["key"] == "k1"


def test_held_and_retrying_runs_are_counted(journal_db: Any) -> None:
    db = journal_db
    store.insert_delivery_runs(db, [
        (1, 1, "e1", "a.py", "k1", CB, 7, "{}", "held", 1, None, None, 0),
        (2, 1, "e1", "a.py", "k1", CB, 7, "{}", "retrying", 2, 1, 50.0, 0),
    ])  # fmt: skip
    assert reads.waiting_counts(db) == {"a.py": {"held": 1, "retrying": 1}}
    assert reads.waiting_through(db, 1) == {"retrying": 1, "held": 1}
    store.set_state(db, [("pending", 1)])
    assert reads.waiting_counts(db) == {"a.py": {"retrying": 1}}


def test_latches_clock_and_breakers_replace_and_delete(journal_db: Any) -> None:
    db = journal_db
    for terms in (frozenset({1}), frozenset({1, 2})):  # a second save replaces the first
        state.save_state(db, {("k1", None): terms, ("k1", 7): terms}, {("k1", 0): 100.0})
    assert sorted(state.load_latches(db), key=str) == sorted(
        [(("k1", None), frozenset({1, 2})), (("k1", 7), frozenset({1, 2}))], key=str
    )
    state.save_state(db, {("k1", None): None}, {("k1", 0): None, "armed": [1, 2]})
    assert list(state.load_latches(db)) == [(("k1", 7), frozenset({1, 2}))]
    assert list(state.load_clock(db)) == [("armed", [1, 2])]
    state.save_breakers(db, {"a.py": {"state": "open"}, "b.py": {"state": "open"}})
    state.save_breakers(db, {"a.py": None, "b.py": {"state": "half-open"}})
    assert state.load_breakers(db) == {"b.py": {"state": "half-open"}}


def test_jobs_are_written_read_and_expired(journal_db: Any) -> None:
    jobs = state.JournalJobs(journal_db)
    jobs.write([(i, {"id": i, "pgrp": 1}, 100.0 + i if i % 2 else None, 1, None)
                for i in range(1, 601)])  # fmt: skip
    jobs.write([(2, {"id": 2, "status": "done"}, 50.0, None, 9), (3, None, None, None, None)])
    assert jobs.max_id() == 600
    assert sorted(j for j, _, _ in jobs.rows([2, 3, 4])) == [2, 4]
    assert jobs.ids_with("pid", 9) == [2] and len(jobs.ids_with("pgrp", 1)) == 598
    assert jobs.done_by(102.0, 10) == [(2, 50.0), (1, 101.0)]
    registry = JobRegistry(60.0, jobs)
    assert registry.get(2) == {"id": 2, "status": "done"}


def test_prune_forgets_old_finished_runs_and_keeps_the_newest_event(journal_db: Any) -> None:
    db = journal_db
    store.insert_events(db, [(s, f"e{s}", 1.0, "{}") for s in (1, 2, 3)])
    store.insert_runs(db, [run_row(1, 1), run_row(2, 3)])
    store.mark_finished(db, [(1.0, 2.0, 0, None, "ok", "", 0, None, "[]", 0, 0, 1)])
    assert reads.prune(db, 10.0, 100) == 3  # run 1, then events 1 and 2 (no runs left)
    assert store.read_counters(db)["last_seq"] == 3
    assert [r["run_id"] for r in reads.history(db, None, None, None, 10)] == [2]


def test_a_journal_newer_than_the_daemon_is_refused(pg_url: str, tmp_path: Path) -> None:
    from supervisord.journal import pg

    db = pg.PgJournal(pg_url)
    pg.create(db)
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (str(pg.SCHEMA_VERSION + 1),))
    with pytest.raises(StoreError, match=f"schema {pg.SCHEMA_VERSION + 1}, newer"):
        pg.create(db)
    db.close()


# -- a whole sequencer on each backend ------------------------------------------------------


def settings_for(journal_db: Any, tmp_path: Path) -> Any:
    from supervisord.core.model import Settings

    values = defaults(str(tmp_path), "python3")
    values["journal_sync"] = "off"
    if not isinstance(journal_db, sqlite3.Connection):
        values["journal"] = journal_db.dsn
        values["member"] = "m1"
    return Settings(path=str(tmp_path / "qb.conf"), **values)


def table() -> Table:
    trigger = parse_trigger("complete-job-self")
    cb = Callback("a.py", "/cb", 1, "python", "complete-job-self", trigger, terms_of(trigger))
    return Table([cb])


def job_event(job: int, event_id: str | None) -> Event:
    from supervisord.core.events import validate_event

    doc: dict[str, Any] = {"name": "complete", "type": "job", "job": {"id": job}}
    if event_id:
        doc["event_id"] = event_id
    return validate_event(doc, 1000.0)


async def intake(seq: Sequencer, events: list[Event]) -> list[dict[str, Any]]:
    future: asyncio.Future[list[dict[str, Any]]] = asyncio.get_running_loop().create_future()
    seq.submit(Intake(events, future.set_result))
    return await asyncio.wait_for(future, 30)


async def test_a_sequencer_numbers_dedups_and_hands_out_runs(
    journal_db: Any, tmp_path: Path
) -> None:
    settings = settings_for(journal_db, tmp_path)
    journal_db.close()  # the sequencer opens its own connection
    loop = asyncio.get_running_loop()
    runs: list[RunRequest] = []
    seq = Sequencer(settings, table(), loop, lambda reqs, _deadline: runs.extend(reqs))
    assert await asyncio.to_thread(seq.open) == []
    seq.start()
    try:
        replies = await intake(seq, [job_event(1, "a"), job_event(2, None), job_event(1, "a")])
        assert [(r["seq"], r["duplicate"], r["matched"]) for r in replies] == [
            (1, False, ["a.py"]), (2, False, ["a.py"]), (1, True, []),
        ]  # fmt: skip
        assert [(r.seq, r.owner, r.redelivered) for r in runs] == [(1, 1, False), (2, 2, False)]
        future: asyncio.Future[Any] = loop.create_future()
        seq.submit(Query(lambda db, _s: reads.history(db, None, None, None, 10), future))
        history = await asyncio.wait_for(future, 30)
        assert [h["state"] for h in history] == (
            ["pending", "pending"] if settings.journal == "sqlite" else ["claimed", "claimed"]
        )
    finally:
        await asyncio.to_thread(seq.stop, True)
    # Opened again: numbering goes on, the duplicate is still known.
    again = Sequencer(settings, table(), loop, lambda reqs, _deadline: None)
    await asyncio.to_thread(again.open)
    again.start()
    try:
        replies = await intake(again, [job_event(1, "a"), job_event(3, "c")])
        assert [(r["seq"], r["duplicate"]) for r in replies] == [(1, True), (3, False)]
    finally:
        await asyncio.to_thread(again.stop, True)


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("BEGIN IMMEDIATE", "BEGIN; SELECT pg_advisory_xact_lock(1902273378)"),
        ("SELECT max(seq) FROM events", "SELECT max(seq) FROM qbcb_events"),
        (
            "SELECT r.run_id FROM runs r LEFT JOIN events e ON e.seq = r.seq WHERE r.seq = ?",
            "SELECT r.run_id FROM qbcb_runs r LEFT JOIN qbcb_events e ON e.seq = r.seq"
            " WHERE r.seq = %s",
        ),
        (
            "DELETE FROM latches WHERE cb_key = ? AND owner IS ?",
            "DELETE FROM qbcb_latches WHERE cb_key = %s AND owner IS NOT DISTINCT FROM %s",
        ),
        (
            "INSERT OR REPLACE INTO clock VALUES (?, ?)",
            "INSERT INTO qbcb_clock VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET"
            " value = EXCLUDED.value",
        ),
        (
            "UPDATE runs SET log = ? WHERE log LIKE '%x'",
            "UPDATE qbcb_runs SET log = %s WHERE log LIKE '%%x'",
        ),
        ("SELECT 'runs_total' FROM meta", "SELECT 'runs_total' FROM qbcb_meta"),
    ],
)
def test_statements_are_translated_for_postgresql(sql: str, expected: str) -> None:
    from supervisord.journal.pg import translate

    assert translate(sql) == expected


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        ("postgresql://qube:s3cret@db:5432/cb", "postgresql://qube:***@db:5432/cb"),
        ("postgresql://qube@db/cb", "postgresql://qube@db/cb"),
        ("host=db password=s3cret dbname=cb", "host=db password=*** dbname=cb"),
    ],
)
def test_a_connection_string_is_logged_without_its_password(dsn: str, shown: str) -> None:
    from supervisord.journal.backend import redact

    assert redact(dsn) == shown
