"""The sequencer: one thread that numbers, matches and durably stores events (group commit)."""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from supervisord.core.events import Received
from supervisord.core.matching import MatchState, Table, match, owner_job
from supervisord.core.model import Event, Firing, Settings
from supervisord.core.runtypes import RunRequest
from supervisord.core.timers import due_events, next_deadline
from supervisord.journal import store
from supervisord.journal.batch import Batch, Finished, Intake, Query, Reply, Started, Tick
from supervisord.journal.recovery import callback_record, recover_runs

log = logging.getLogger(__name__)

# Rows deleted per prune step: small enough that one step never stalls a commit noticeably.
PRUNE_CHUNK: Final = 2000
# Seconds run start/end records may wait for company before their commit (see _linger).
RUN_RECORD_LINGER: Final = 0.02
# Run records alone wait this long on the loop before they are handed over: every hand-over
# wakes the journal thread, and on a host busy with callbacks each wake-up can cost the
# loop its CPU (two per run cost ~15 % of the loop thread in bench/b_e2e.py).
RECORD_HANDOVER_DELAY: Final = 0.01
# How often retention pruning and registry expiry run, in seconds.
HOUSEKEEPING_INTERVAL: Final = 30.0


_string: Final = json.encoder.encode_basestring  # how store.dumps writes a str


def journal_text(event: Event, seq: int, eid: str) -> str:
    """The journal's copy of the event document with its seq and event_id (SPEC §4):
    the request line plus those members when the server kept it, else the encoded doc."""
    doc = event.doc
    if isinstance(doc, Received):
        return f'{doc.head},"seq":{seq},"event_id":{_string(eid)}}}'
    return store.dumps(dict(doc, seq=seq, event_id=eid))


class Sequencer:
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
        self._db: sqlite3.Connection | None = None
        self.state = MatchState(settings.job_retention)
        self.counters: dict[str, int] = dict.fromkeys(store.COUNTERS, 0)
        self._stored = dict(self.counters)
        self._last_housekeeping = 0.0
        self.clean_start = True
        self._id_prefix = "qb-"
        self._last_error = ""  # why the last commit failed, for the refusals it causes

    # -- lifecycle (called from the loop thread) -------------------------------------------

    def open(self) -> list[RunRequest]:
        """Open the journal, load state; returns the runs to redeliver. Blocking, at start."""
        self._db = db = store.connect(self.settings.state_dir, self.settings.journal_sync)
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

    def submit(self, item: Any) -> None:
        """Queue work, from the loop thread. What one loop iteration submits goes over in
        one hand-over after it: eight clients answered at once send eight events that wake
        this thread once and share one commit, instead of the first of them committing
        alone while the loop is still reading the others."""
        record = isinstance(item, Started | Finished)
        with self._outbox_lock:
            self._outbox.append(item)
            soon = not record and not self._soon
            later = record and not self._soon and not self._later
            self._soon |= soon
            self._later |= later
        if soon:
            self._loop.call_soon(self._hand_over)
        elif later:  # run records may wait a little: they share a wake-up with others
            self._loop.call_later(RECORD_HANDOVER_DELAY, self._hand_over)

    def _hand_over(self) -> None:
        with self._outbox_lock:
            items, self._outbox = self._outbox, []
            self._soon = self._later = False
        if items:
            self._queue.put(items)

    def stop(self, clean: bool) -> None:
        """Finish every queued item, then close the journal. Blocking: call from a thread."""
        self._hand_over()  # what the loop has not handed over yet goes first
        self._queue.put([None])
        if self._thread is not None:
            self._thread.join()
        if self._db is not None:
            if clean:
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

    def _drain(self, items: list[Any]) -> None:
        while True:
            try:
                items += self._queue.get_nowait()
            except queue.Empty:
                return

    def _linger(self, items: list[Any]) -> None:
        """Run records alone need no prompt commit: an unrecorded start or end only means a
        run may be repeated after a crash, which at-least-once allows. Gather them for up to
        RUN_RECORD_LINGER so one fsync serves many runs; anything else ends the wait."""
        deadline = time.monotonic() + RUN_RECORD_LINGER
        while (left := deadline - time.monotonic()) > 0:
            try:
                more = self._queue.get(timeout=left)
            except queue.Empty:
                return
            items += more
            if not all(isinstance(i, Started | Finished) for i in more):
                self._drain(items)
                return

    def _run_batch(self, items: list[Any]) -> None:
        assert self._db is not None
        now = time.time()
        self._housekeeping(now)  # its own statements, before this batch's transaction
        batch = Batch()
        saved = dict(self.counters)
        readable = self._begin(items, batch)
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
            elif isinstance(item, Query):
                queries.append(item)
        if ticked:
            self._fire_clock(now, batch)
        # Arms terms seen for the first time (at start, after a reload): stored with this
        # batch, even one with nothing else to write, so that a quiet stop forgets no time.
        deadline = self._next_deadline(now)
        if batch.is_write() or self.state.clock.is_dirty():
            if not (readable and self._commit(batch)):
                self.counters = saved
                self._fail(batch, saved["last_seq"])
        elif readable:
            self._end_read()
        for query in queries:  # after the commit: a query sees every write queued before it
            self._query(query, batch)
        self._loop.call_soon_threadsafe(self._deliver, batch, deadline)

    def _accept_all(self, events: list[Event], batch: Batch, now: float) -> list[Reply]:
        """`_accept` for each event, with the usual one inline: a new job event with an id
        that no callback's index lists (events/s are bounded by this loop). Such an event
        only updates the registry and gets its seq, journal row and reply."""
        table, state, counters, ids = self.table, self.state, self.counters, batch.ids
        state.latches.adopt(table.live_keys)  # what match() does first; the table is fixed
        observe, candidates, rows = state.registry.observe, table.candidates, batch.events
        inline = not log.isEnabledFor(logging.DEBUG)
        replies: list[Reply] = []
        for event in events:
            eid = event.event_id
            if (
                not inline
                or eid is None
                or eid in ids
                or event.type != "job"
                or candidates(event.name, "job")
            ):
                replies.append(self._accept(event, batch, now))
                continue
            seq = counters["last_seq"] = counters["last_seq"] + 1
            counters["events_total"] += 1
            observe(event)
            rows.append((seq, eid, now, journal_text(event, seq, eid)))
            ids[eid] = seq
            replies.append(
                {"ok": True, "seq": seq, "event_id": eid, "duplicate": False, "matched": []}
            )
        return replies

    def _accept(self, event: Event, batch: Batch, now: float) -> Reply:
        eid = event.event_id
        if eid is not None:
            seq = batch.ids.get(eid)
            if seq is not None:
                return {"ok": True, "seq": seq, "event_id": eid, "duplicate": True, "matched": []}
        counters = self.counters
        seq = counters["last_seq"] = counters["last_seq"] + 1
        counters["events_total"] += 1
        if eid is None:
            eid = self._auto_id(seq)
        firings = match(self.table, self.state, event)
        batch.events.append((seq, eid, now, journal_text(event, seq, eid)))
        batch.ids[eid] = seq
        names: list[str] = []
        if firings:
            self._add_runs(event, seq, eid, firings, batch)
            names = [f.callback.file for f in firings]
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "received seq=%d event_id=%s event=%s-%s job=%s matched=%s",
                seq, eid, event.name, event.type, event.job_id, names,
            )  # fmt: skip
        return {"ok": True, "seq": seq, "event_id": eid, "duplicate": False, "matched": names}

    def _add_runs(
        self, event: Event, seq: int, eid: str, firings: list[Firing], batch: Batch
    ) -> None:
        doc = dict(event.doc, seq=seq, event_id=eid)
        for firing in firings:
            run_id = self.counters["last_run_id"] + 1
            self.counters["last_run_id"] = run_id
            job = owner_job(self.state, event, firing.owner)
            cb = callback_record(firing.callback)
            batch.runs.append(
                (run_id, seq, eid, cb["file"], cb["key"], store.dumps(cb), firing.owner,
                 store.dumps(job))
            )  # fmt: skip
            batch.new_requests.append(
                RunRequest(run_id, seq, eid, firing.callback, firing.owner, doc, job)
            )

    def _begin(self, items: list[Any], batch: Batch) -> bool:
        """Open the commit's transaction and look up which client event ids of the batch
        are already stored (batch.ids; the commit's own events join them, for duplicates
        within the batch): the check and the write see one snapshot. False when the journal
        cannot be read: the batch is then refused, and this thread lives on."""
        ids = [e.event_id for i in items if isinstance(i, Intake) for e in i.events if e.event_id]
        if not ids:
            return True
        assert self._db is not None
        try:
            self._db.execute("BEGIN IMMEDIATE")
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

    def _auto_id(self, seq: int) -> str:
        # The journal's random prefix keeps these apart from ids clients choose; a client
        # that copies one anyway makes its commit fail (UNIQUE) and is refused, not lost.
        return f"{self._id_prefix}{seq}"

    def _finish(self, item: Finished, batch: Batch) -> None:
        r, req = item.result, item.req
        actions = [{"action": a.action, "target": a.target} for a in r.actions]
        batch.finished.append(
            (r.started, r.ended, r.exit_code, r.signal, r.outcome, r.description,
             int(r.truncated), r.log, store.dumps(actions), req.run_id)
        )  # fmt: skip
        for a in r.actions:
            batch.actions.append(
                (req.run_id, req.seq, req.callback.file, req.owner, a.action, a.target)
            )
        self.counters["runs_total"] += 1
        if r.outcome != "ok":
            self.counters["runs_failed"] += 1

    def _query(self, item: Query, batch: Batch) -> None:
        assert self._db is not None
        try:
            batch.queries.append((item.future, item.fn(self._db, self.state), None))
        except Exception as exc:  # contained: the reply says `internal`, the thread lives on
            log.exception("query failed")
            batch.queries.append((item.future, None, exc))

    def _fire_clock(self, now: float, batch: Batch) -> None:
        events = due_events(self.table, self.state, now)
        for event in events:
            late = bool(event.doc.get("late"))
            log.info(
                "time trigger fired trigger=%s late=%s%s", event.doc.get("trigger"), late,
                " (its time passed while the daemon was down)" if late else "",
            )  # fmt: skip
            self._accept(event, batch, now)

    def _next_deadline(self, now: float) -> float | None:
        return next_deadline(self.table, self.state.clock, now)

    def _housekeeping(self, now: float) -> None:
        if now - self._last_housekeeping < HOUSEKEEPING_INTERVAL:
            return
        self._last_housekeeping = now
        self.state.expire(now)
        assert self._db is not None
        try:
            store.prune(self._db, now - self.settings.history_retention, PRUNE_CHUNK)
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
            store.mark_started(db, batch.started)
            store.mark_finished(db, batch.finished)
            store.insert_actions(db, batch.actions)
            s = self.state
            store.save_state(
                db, s.registry.take_dirty(), s.latches.take_dirty(), s.clock.take_dirty()
            )
            changed = {k: v for k, v in self.counters.items() if self._stored[k] != v}
            if changed.keys() - store.EVENT_COUNTERS:
                store.write_meta(db, changed)
            db.execute("COMMIT")
            if changed.keys() - store.EVENT_COUNTERS:
                self._stored = dict(self.counters)
        except sqlite3.Error as exc:
            self._journal_failed(exc, len(batch.events))
            return False
        return True

    def _journal_failed(self, exc: sqlite3.Error, events: int) -> None:
        log.error("journal write failed error=%s events=%d", exc, events)
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
        message = f"the journal cannot be written: {self._last_error}"
        error = {"ok": False, "error": {"code": "unavailable", "message": message}}
        batch.replies = [
            (done, [r if r.get("duplicate") and r["seq"] <= stored_seq else error for r in rs])
            for done, rs in batch.replies
        ]
        batch.new_requests = []
        self._load_state(self._db)

    def _load_state(self, db: sqlite3.Connection) -> None:
        self.state = MatchState(self.settings.job_retention)
        self.state.registry.load(store.load_jobs(db))
        self.state.latches.load(store.load_latches(db))
        self.state.clock.load(store.load_clock(db))

    def _deliver(self, batch: Batch, deadline: float | None) -> None:
        """On the loop: replies go out, new runs are scheduled, queries resolve."""
        self._on_commit(batch.new_requests, deadline)
        for done, replies in batch.replies:
            done(replies)
        for future, value, exc in batch.queries:
            if future.done():
                continue
            if exc is not None:
                future.set_exception(exc)
            else:
                future.set_result(value)
