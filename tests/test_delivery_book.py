"""The delivery policy's book against a real journal: what comes due is never forgotten."""

from __future__ import annotations

import random
from typing import Any

from supervisord.core.model import Callback
from supervisord.core.policy import BreakerPolicy, Policy
from supervisord.core.runtypes import RunRequest, RunResult
from supervisord.core.triggers import parse_trigger, terms_of
from supervisord.journal import state, store
from supervisord.journal.delivery import Book, retry_row

RETRY = Policy(retries=3, backoff=(10.0, 10.0))


def request(run_id: int) -> RunRequest:
    trigger = parse_trigger("complete-job-self")
    cb = Callback("cb.pl", "/cb", 1, "perl", "complete-job-self", trigger, terms_of(trigger))
    return RunRequest(run_id, run_id, f"e{run_id}", cb, 1, {"seq": run_id}, {"id": 1})


def failed(at: float) -> RunResult:
    return RunResult(at - 1, at, 1, None, "failed", "exit status 1", False, None, (), 1)


def test_a_retry_scheduled_in_the_batch_that_collects_another_is_not_forgotten(
    journal_db: Any,
) -> None:
    db = journal_db
    book = Book(lambda cb: RETRY, random.Random(1))
    # A retry already stored, due now.
    store.insert_delivery_runs(db, [retry_row(request(1), 2, 100.0)])
    book.refresh_due(db)
    # In one batch: run 3 fails (its retry is due at 110 + 5..10 s, not written yet) ...
    ending = book.finished(request(3), failed(110.0))
    assert ending.retry_due is not None and ending.retry_due > 110.0
    # ... and the tick of the same batch collects the stored one.
    db.execute("BEGIN IMMEDIATE")
    rows = list(book.collect_due(db, 110.0))
    assert [r.run_id for r in rows] == [2]
    assert book.next_due == ending.retry_due  # not None: the unwritten retry keeps its time
    assert book.next_deadline(110.0) == ending.retry_due
    db.execute("COMMIT")


GUARDED = Policy(breaker=BreakerPolicy(failures=1, cooldown=60.0))


def held_row(run_id: int) -> tuple[Any, ...]:
    return (run_id, run_id, f"e{run_id}", "cb.pl", "k", '{"file": "cb.pl", "key": "k"}', 1, "{}",
            "held", 1, None, None, 0)  # fmt: skip


def test_a_half_open_trial_is_decided_by_whichever_fleet_member_ran_it(journal_db: Any) -> None:
    """Two members' books on one journal (SPEC §8): member A opens the breaker and, after the
    cooldown, picks the trial; member B, catching up, takes the breaker as stored (half-open,
    with its trial) and B's outcome of that run closes it for both."""
    db = journal_db
    a = Book(lambda cb: GUARDED, random.Random(1))
    b = Book(lambda cb: GUARDED, random.Random(2))
    a.finished(request(1), failed(100.0))  # one failure opens it
    state.save_breakers(db, a.take_dirty())
    store.insert_delivery_runs(db, [held_row(2), held_row(3)])
    a.note_held("cb.pl")
    db.execute("BEGIN IMMEDIATE")
    trial = [r.run_id for r in a.collect_due(db, 200.0)]  # past the cooldown: a trial
    state.save_breakers(db, a.take_dirty())
    db.execute("COMMIT")
    assert trial == [2] and a.breakers["cb.pl"].state == "half-open"
    b.load(db, restart=False)  # catching up: as stored, not reopened as after a restart
    assert b.breakers["cb.pl"].state == "half-open"
    assert list(b.collect_due(db, 200.0)) == []  # no second trial while the first runs
    b.finished(request(2), RunResult(200, 201, 0, None, "ok", "exit status 0", False, None, (), 1))
    state.save_breakers(db, b.take_dirty())
    assert "cb.pl" not in b.breakers  # closed by the trial's outcome, on the other member
    a.load(db, restart=False)
    assert "cb.pl" not in a.breakers
    a.load(db)  # at a start, as before: a stored half-open breaker would be open again
    assert state.load_breakers(db) == {}
