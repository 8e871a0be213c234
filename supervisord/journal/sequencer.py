"""The sequencer: one thread that numbers, matches and durably stores events (group commit)."""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from supervisord.core.errors import StoreError
from supervisord.core.matching import MatchState, Table
from supervisord.core.model import Settings
from supervisord.core.runtypes import RunRequest
from supervisord.core.timers import next_deadline
from supervisord.journal import backend, reads, state, store
from supervisord.journal.backend import Unreachable
from supervisord.journal.batch import (
    Batch,
    Finished,
    Intake,
    Query,
    Started,
    Tick,
    refusal,
)
from supervisord.journal.delivery import Book
from supervisord.journal.fleet import Fleet, Heartbeat, Wake
from supervisord.journal.handover import Handover
from supervisord.journal.intake import Numbering
from supervisord.journal.policyrun import PolicyRuns
from supervisord.journal.recovery import recover_runs

log = logging.getLogger(__name__)

# Rows deleted per prune step: small enough that one step never stalls a commit noticeably.
PRUNE_CHUNK: Final = 2000
# How often retention pruning and registry expiry run, in seconds.
HOUSEKEEPING_INTERVAL: Final = 30.0


class Sequencer(Handover, Numbering, PolicyRuns, Fleet):
    """Owns the journal connection and the matcher state. Only its thread touches them."""

    def __init__(
        self,
        settings: Settings,
        table: Table,
        loop: asyncio.AbstractEventLoop,
        on_commit: Callable[[list[RunRequest], float | None], None],
    ) -> None:
        self.settings = settings
        self.table = table  # swapped by reload in one assignment
        self._loop = loop
        self._on_commit = on_commit
        self._queue: queue.SimpleQueue[list[Any]] = queue.SimpleQueue()
        self._outbox: list[Any] = []  # submitted in this loop iteration, not yet handed over
        self._outbox_lock = threading.Lock()  # stop() hands over from another thread
        self._soon = False  # a hand-over is due at the end of this loop iteration
        self._later = False  # a hand-over is due in RECORD_HANDOVER_DELAY (run records)
        self._thread: threading.Thread | None = None
        self._db: backend.Db | None = None
        self.state = MatchState(settings.job_retention)
        self.counters: dict[str, int] = dict.fromkeys(store.COUNTERS, 0)
        self._stored = dict(self.counters)
        self._last_housekeeping = 0.0
        self.clean_start = True
        self._id_prefix = "qb-"
        self._last_error = ""  # why the last commit failed, for the refusals it causes
        self.book = Book()  # the delivery policy's state (SPEC §7); policy_of set by the daemon
        self._book_table: Table | None = None  # the table the breakers were last pruned for
        self.open_breakers: dict[str, dict[str, Any]] = {}  # on the loop: breakers not closed
        self._retained: list[Any] = []  # run records of a failed commit (fleet), tried again
        self._init_fleet()

    # -- lifecycle (called from the loop thread) -------------------------------------------

    def open(self) -> list[RunRequest]:
        """Open the journal, load state; returns the runs to redeliver. Blocking, at start."""
        self._db = db = backend.connect(self.settings)
        if self.shared:  # a fleet: runs are claimed, not recovered (journal/fleet.py)
            self._join(at_start=True)
            return []
        self.counters = store.read_counters(db)
        self._stored = dict(self.counters)  # as in the journal: commits write what changed
        self.clean_start = store.read_flag(db, "clean_shutdown") != "0"
        self._id_prefix = store.id_prefix(db)
        self._load_state(db)
        store.write_meta(db, {"clean_shutdown": 0})
        return recover_runs(db, self.table, self.clean_start)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="qb-sequencer", daemon=True)
        self._thread.start()

    def stop(self, clean: bool) -> None:
        """Finish every queued item, then close the journal. Blocking: call from a thread."""
        self._hand_over()  # what the loop has not handed over yet goes first
        self._queue.put([None])
        if self._thread is not None:
            self._thread.join()
        if self._db is not None:
            if clean and self.shared:
                if self.joined:
                    self._leave()
            elif clean:
                store.write_meta(self._db, {**self.counters, "clean_shutdown": 1})
            self._db.close()

    # -- the thread ------------------------------------------------------------------------

    def _main(self) -> None:
        while True:
            items = self._queue.get()
            self._drain(items)
            if all(isinstance(i, Started | Finished) for i in items):
                self._linger(items)
            stopping = items[-1] is None
            self._run_batch([i for i in items if i is not None])
            if stopping:
                return

    def _run_batch(self, items: list[Any]) -> None:
        if self.shared:
            self._run_shared(items)  # journal/fleet.py: a database that may go away
        else:
            self._run_items(items)

    def _run_items(self, items: list[Any]) -> None:
        assert self._db is not None
        if self.table is not self._book_table:  # a reload swapped the table (and policies)
            self._book_table = self.table
            self.book.prune(self.table.callbacks)
        now = time.time()
        self._housekeeping(now)  # its own statements, before this batch's transaction
        batch = Batch()
        saved = dict(self.counters)
        readable = self._begin(items, batch)
        events = (e for i in items if isinstance(i, Intake) for e in i.events)
        self.state.registry.prefetch(e.job_id for e in events)  # the batch's jobs, one read
        queries: list[Query] = []
        ticked = False
        for item in items:
            if isinstance(item, Intake):
                batch.replies.append((item.done, self._accept_all(item.events, batch, now)))
            elif isinstance(item, Started):
                batch.started.append((item.at, item.run_id))
            elif isinstance(item, Finished):
                self._finish(item, batch)
            elif isinstance(item, Tick):
                ticked = True
            elif isinstance(item, Heartbeat):
                self._heartbeat(item.running)
            elif isinstance(item, Wake):
                pass  # the claim is made in every commit of a fleet member
            elif isinstance(item, Query):
                queries.append(item)
            else:
                self._policy_item(item, batch, now)
        if ticked and self.settings.role != "executor":  # executors fire no time triggers
            self._fire_clock(now, batch)
        if ticked:
            self._collect_due(now, batch)
        # Arms terms seen for the first time (at start, after a reload): stored with this
        # batch, even one with nothing else to write, so that a quiet stop forgets no time.
        deadline = self._next_deadline(now)
        if batch.is_write() or self._state_dirty():
            if not (readable and self._commit(batch)):
                self.counters = saved
                self._fail(batch, saved["last_seq"])
                if self.shared:  # the runs' starts and ends are not lost with the batch
                    self._retain(items)
        elif readable:
            self._end_read()
        for query in queries:  # after the commit: a query sees every write queued before it
            self._query(query, batch)
        self._loop.call_soon_threadsafe(self._deliver, batch, deadline)

    def _state_dirty(self) -> bool:
        s = self.state
        return s.clock.is_dirty() or s.registry.is_dirty() or self.book.is_dirty()

    def _begin(self, items: list[Any], batch: Batch) -> bool:
        """Open the commit's transaction and look up which client event ids of the batch
        are already stored (batch.ids; the commit's own events join them, for duplicates
        within the batch): the check and the write see one snapshot. False when the journal
        cannot be read: the batch is then refused, and this thread lives on."""
        ids = [e.event_id for i in items if isinstance(i, Intake) for e in i.events if e.event_id]
        if not ids and not self.shared:
            return True
        assert self._db is not None
        try:
            self._db.execute("BEGIN IMMEDIATE")
            if self.shared:  # a fleet member catches up under the write lock, claims in it
                self._sync()
                batch.touched = True
            if ids:
                batch.ids = store.find_events(self._db, ids)
        except sqlite3.Error as exc:
            self._journal_failed(exc, len(ids))
            return False
        return True

    def _end_read(self) -> None:
        """End a transaction that wrote nothing (every event a duplicate)."""
        assert self._db is not None
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error as exc:
                log.error("journal rollback failed error=%s", exc)

    def _query(self, item: Query, batch: Batch) -> None:
        assert self._db is not None
        try:
            batch.queries.append((item.future, item.fn(self._db, self.state), None))
        except Exception as exc:  # contained: the reply says `internal`, the thread lives on
            log.exception("query failed")
            batch.queries.append((item.future, None, exc))

    def _next_deadline(self, now: float) -> float | None:
        due = self.book.next_deadline(now)
        if self.settings.role == "executor":
            return due
        clock = next_deadline(self.table, self.state.clock, now)
        return due if clock is None else clock if due is None else min(clock, due)

    def _housekeeping(self, now: float) -> None:
        if now - self._last_housekeeping < HOUSEKEEPING_INTERVAL:
            return
        self._last_housekeeping = now
        if self.settings.role != "executor":
            self.state.expire(now)
        assert self._db is not None
        try:
            reads.prune(self._db, now - self.settings.history_retention, PRUNE_CHUNK)
        except sqlite3.Error as exc:
            log.warning("prune failed error=%s", exc)

    def _commit(self, batch: Batch) -> bool:
        db = self._db
        assert db is not None
        try:
            if not db.in_transaction:
                db.execute("BEGIN IMMEDIATE")
            store.insert_events(db, batch.events)
            store.insert_runs(db, batch.runs)
            # Before the ends: a replay whose callback no longer loads ends in this batch.
            store.insert_delivery_runs(db, batch.policy_runs)
            store.mark_started(db, batch.started)
            store.mark_finished(db, batch.finished)
            store.insert_actions(db, batch.actions)
            store.set_state(db, batch.moves)
            breakers = self.book.take_dirty()
            if breakers:
                state.save_breakers(db, breakers)
                batch.breakers = self.book.snapshot()
            s = self.state
            matched = s.registry.is_dirty()
            s.registry.flush()  # through state.JournalJobs, into this transaction
            latches, clock = s.latches.take_dirty(), s.clock.take_dirty()
            state.save_state(db, latches, clock)
            if self.shared:
                self._stamp(matched or bool(latches or clock), bool(breakers))
                self._claim(batch)
                self._notify_pending(bool(batch.actions))
            changed = {k: v for k, v in self.counters.items() if self._stored[k] != v}
            if changed.keys() - store.EVENT_COUNTERS:
                store.write_meta(db, changed)
            db.execute("COMMIT")
            self.book.written()
            if changed.keys() - store.EVENT_COUNTERS:
                self._stored = dict(self.counters)
        except sqlite3.Error as exc:
            self._journal_failed(exc, len(batch.events))
            return False
        return True

    def _journal_failed(self, exc: sqlite3.Error, events: int) -> None:
        # A fleet's database known to be away is logged at each reconnect try (journal/pg.py)
        log.log(
            logging.DEBUG if isinstance(exc, Unreachable) else logging.ERROR,
            "journal write failed error=%s events=%d", exc, events,
        )  # fmt: skip
        self._last_error = str(exc)
        assert self._db is not None
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error as again:  # the next BEGIN finds out; the thread lives on
                log.error("journal rollback failed error=%s", again)

    def _fail(self, batch: Batch, stored_seq: int) -> None:
        """The commit failed: refuse every event of the batch, reload the matcher state.
        Only a duplicate of an event stored before (seq up to ``stored_seq``) keeps its
        reply; a duplicate of one in the failed batch names a seq that was never stored."""
        assert self._db is not None
        error = refusal(self._last_error)
        message = error["error"]["message"]
        batch.replies = [
            (done, [r if r.get("duplicate") and r["seq"] <= stored_seq else error for r in rs])
            for done, rs in batch.replies
        ]
        batch.new_requests = []
        failed = StoreError(message)
        batch.queries += [(future, None, failed) for future, _ in batch.results]
        batch.results = []
        batch.breakers = None
        if self.shared:  # the database may be gone: read everything again on the next lock
            self._gens = {}
        else:
            self._load_state(self._db)

    def _load_state(self, db: backend.Db) -> None:
        self._load_match(db)
        self.book.load(db)

    def _load_match(self, db: backend.Db) -> None:
        # Jobs stay in the journal: the registry reads them there, caching only hot ones.
        self.state = MatchState(self.settings.job_retention, state.JournalJobs(db))
        if self.settings.role != "executor":  # an executor matches nothing: jobs only
            self.state.latches.load(state.load_latches(db))
            self.state.clock.load(state.load_clock(db))
