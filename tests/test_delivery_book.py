"""The delivery policy's book against a real journal: what comes due is never forgotten."""

from __future__ import annotations

import random
from typing import Any

from supervisord.core.model import Callback
from supervisord.core.policy import Policy
from supervisord.core.runtypes import RunRequest, RunResult
from supervisord.core.triggers import parse_trigger, terms_of
from supervisord.journal import store
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
