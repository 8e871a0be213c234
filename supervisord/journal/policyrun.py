"""The runs' side of the sequencer: a run's end with its retry or dead mark, and the runs
the delivery policy makes (due retries, breaker trials, released, replayed; SPEC §7)."""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
from collections.abc import Iterator
from typing import Any, Final

from supervisord.core.matching import Table
from supervisord.core.runtypes import RunRequest
from supervisord.journal import reads, store
from supervisord.journal.backend import Db
from supervisord.journal.batch import Batch, Finished, Hold, Replay, Resume
from supervisord.journal.delivery import Book, retry_row
from supervisord.journal.recovery import callback_or_reason, request_of

log = logging.getLogger("supervisord.journal.sequencer")  # one logger for the whole thread

# Runs one replay request may make: `replay --dead` after a long outage stays one commit.
REPLAY_LIMIT: Final = 100_000
# Run ids per lookup: well under SQLite's limit on the parameters of one statement.
ID_CHUNK: Final = 500


class PolicyRuns:
    """Run ends and policy-made runs, inside the sequencer's batch. Only its thread calls it."""

    table: Table
    counters: dict[str, int]
    book: Book
    _db: Db | None

    def _journal_failed(self, exc: sqlite3.Error, events: int) -> None:
        raise NotImplementedError

    def _finish(self, item: Finished, batch: Batch) -> None:
        r, req = item.result, item.req
        actions = [{"action": a.action, "target": a.target} for a in r.actions]
        ending = self.book.finished(req, r)
        batch.finished.append(
            (r.started, r.ended, r.exit_code, r.signal, r.outcome, r.description,
             int(r.truncated), r.log, store.dumps(actions), int(ending.dead), r.left_running,
             req.run_id)
        )  # fmt: skip
        if ending.retry_due is not None:
            run_id = self.counters["last_run_id"] = self.counters["last_run_id"] + 1
            batch.policy_runs.append(retry_row(req, run_id, ending.retry_due))
            self.counters["runs_retried"] += 1
        if ending.dead:
            self.counters["runs_dead"] += 1
        for a in r.actions:
            batch.actions.append(
                (req.run_id, req.seq, req.callback.file, req.owner, a.action, a.target)
            )
        self.counters["runs_total"] += 1
        if r.outcome != "ok":
            self.counters["runs_failed"] += 1

    def _policy_item(self, item: Any, batch: Batch, now: float) -> None:
        if isinstance(item, Hold):
            batch.moves.append(("held", item.req.run_id))
            self.book.note_held(item.req.callback.file)
        elif isinstance(item, Resume):
            batch.results.append((item.future, self.book.resume(item.callback)))
        elif isinstance(item, Replay):
            try:
                self._replay(item, batch)
            except (sqlite3.Error, ValueError) as exc:  # contained: the reply says why
                log.error("replay failed selector=%s error=%s", item.selector, exc)
                batch.queries.append((item.future, None, exc))

    def _transaction(self) -> bool:
        assert self._db is not None
        if self._db.in_transaction:
            return True
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._journal_failed(exc, 0)
            return False
        return True

    def _collect_due(self, now: float, batch: Batch) -> None:
        """Due retries, breaker trials and released held runs go to the run queue."""
        due = self.book.next_deadline(now)
        if due is None or due > now or not self._transaction():
            return
        assert self._db is not None
        batch.touched = True
        try:
            rows = list(self.book.collect_due(self._db, now))
        except sqlite3.Error as exc:
            log.error("cannot read due runs error=%s", exc)
            return
        for row in rows:
            request = self._request(row, batch)
            if request is not None:
                batch.new_requests.append(request)

    def _request(self, row: store.RunRow, batch: Batch, **change: Any) -> RunRequest | None:
        """A stored run as a request; a callback that no longer loads ends it as an error."""
        cb = callback_or_reason(row.cb, self.table)
        if isinstance(cb, str):
            batch.finished.append(
                store.error_row(f"cannot run: {cb}", change.get("run_id", row.run_id))
            )
            return None
        request = request_of(row, cb)
        return dataclasses.replace(request, **change) if change else request

    def _rows_of(self, ids: list[int]) -> Iterator[store.RunRow]:
        """The stored runs of these ids, in order, read in chunks (SQLite caps the number
        of parameters of one statement)."""
        assert self._db is not None
        for i in range(0, len(ids), ID_CHUNK):
            chunk = ids[i : i + ID_CHUNK]
            marks = ",".join("?" * len(chunk))
            yield from store.run_rows(self._db, f"r.run_id IN ({marks}) ORDER BY r.run_id", chunk)

    def _replay(self, item: Replay, batch: Batch) -> None:
        """New runs of stored runs' callbacks for their events, marked replayed (§7.3)."""
        assert self._db is not None
        ids = reads.replay_sources(self._db, item.selector, REPLAY_LIMIT)
        made: list[int] = []
        for row in self._rows_of(ids):
            run_id = self.counters["last_run_id"] = self.counters["last_run_id"] + 1
            req = self._request(row, batch, run_id=run_id, attempt=1, first_run_id=None,
                                replayed=True, redelivered=False)  # fmt: skip
            held = self.book.is_held(row.cb["file"])
            batch.policy_runs.append(
                (run_id, row.seq, row.event_id, row.cb["file"], row.cb["key"],
                 store.dumps(row.cb), row.owner, store.dumps(row.job),
                 "held" if held else "pending", 1, None, None, 1)
            )  # fmt: skip
            made.append(run_id)
            if held:
                self.book.note_held(row.cb["file"])
            elif req is not None:
                batch.new_requests.append(req)
        log.info("replay selector=%s runs=%s", item.selector, made)
        batch.results.append((item.future, {"run_ids": made, "sources": ids}))
