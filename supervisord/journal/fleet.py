"""The sequencer's part in a fleet: members sharing one PostgreSQL journal (SPEC §8).

Every write transaction of every member holds the journal's write lock (`journal.pg`), so
the fleet numbers, matches and records one batch at a time. On taking the lock a member
catches up with what others wrote since its own last commit: the counters always (one
read, with the stamps), the matcher's state (latches, clock, jobs; an executor, which
matches nothing, jobs only) when the ``mgen`` stamp moved, the breakers when ``bgen`` did.

Runs are not handed to the local scheduler when they are made: they wait in the journal
as ``pending`` until a member with a free slot **claims** them (``claimed``, its name in
``member``), in run order, one job's events in order across the fleet, policy
``concurrency`` counted fleet-wide, callbacks taken in turn (fair share). A member's claims
are its lease (`journal.lease`): its heartbeat keeps them; a member whose heartbeat is
older than ``supervisor_callback_lease`` is declared lost by the next member to look, and
its unfinished runs go back to ``pending`` as redeliveries (``QB_REDELIVERED=1``).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, Final

from supervisord.core.errors import StoreError
from supervisord.core.matching import Table
from supervisord.journal import store
from supervisord.journal.backend import Db, JournalError, member_name
from supervisord.journal.batch import Batch, Finished, Hold, Intake, Started, refusal
from supervisord.journal.lease import Leases
from supervisord.journal.recovery import MAX_ATTEMPTS, callback_or_reason, request_of

log = logging.getLogger("supervisord.journal.sequencer")

# Seconds between heartbeats (at most; a short lease makes them more frequent).
HEARTBEAT: Final = 1.0
_NEWEST: Final = "@newest"
_META_AND_NEWEST: Final = (
    f"SELECT key, value FROM meta UNION ALL SELECT '{_NEWEST}', max(seq)::text FROM events"
)
# A pending run whose job has no earlier unfinished run elsewhere (SPEC §3: per-job order).
# The claimable runs: up to ? of each callback's oldest pending runs, the callbacks found
# through the index one at a time (a flood of one callback is not read whole).
_CANDIDATES: Final = (
    "WITH RECURSIVE cbs(cb) AS ("
    " (SELECT callback FROM runs WHERE state = 'pending' ORDER BY callback LIMIT 1)"
    " UNION ALL SELECT (SELECT callback FROM runs WHERE state = 'pending'"
    " AND callback > cbs.cb ORDER BY callback LIMIT 1) FROM cbs WHERE cbs.cb IS NOT NULL)"
    " SELECT p.run_id FROM cbs, LATERAL (SELECT r.run_id FROM runs r"
    " WHERE r.state = 'pending' AND r.callback = cbs.cb{order} ORDER BY r.run_id LIMIT ?) p"
)
_IN_ORDER: Final = (
    " AND NOT EXISTS (SELECT 1 FROM runs o WHERE o.owner = r.owner AND o.seq < r.seq"
    " AND (o.state = 'pending' OR (o.state IN ('claimed', 'running')"
    " AND o.member IS DISTINCT FROM ?)))"
)


@dataclass(slots=True)
class Wake:
    """Look for runs to claim: a NOTIFY came, or a slot may have freed."""


@dataclass(slots=True)
class Heartbeat:
    """Renew this member's lease; declare lost the members whose lease ran out."""

    running: int


class Fleet(Leases):
    """Claims, leases and catching up, inside the sequencer's batch (its thread only)."""

    table: Table
    _queue: queue.SimpleQueue[list[Any]]
    _loop: asyncio.AbstractEventLoop

    def _run_items(self, items: list[Any]) -> None:
        raise NotImplementedError

    def _journal_failed(self, exc: JournalError, events: int) -> None:
        raise NotImplementedError

    def _deliver(self, batch: Batch, deadline: float | None) -> None:
        raise NotImplementedError

    def _load_match(self, db: Db) -> None:
        raise NotImplementedError

    _retained: list[Any]

    def _init_fleet(self) -> None:
        self.shared = self.settings.journal != "sqlite"
        self.member = member_name(self.settings)
        self._gens: dict[str, str] = {}  # the stamps as of this member's last look
        self.lost_self = False  # the fleet declared this member lost (a long outage)
        self.claiming = True  # off once the daemon stops: what it claims it must start
        self._last_pick = ""  # the callback this member claimed last (fair share's turn)
        self.joined = False  # tables made, member registered, state read (see _join)

    def wake(self) -> None:
        """Look for runs to claim soon: from any thread (the NOTIFY listener's)."""
        self._queue.put([Wake()])

    # -- catching up -------------------------------------------------------------------------

    def _sync(self) -> None:
        """Under the write lock: take in what other members committed since our last look."""
        db = self._db
        assert db is not None
        if getattr(db, "reconnected", False):
            self._gens = {}  # whatever happened while we were away, read it all again
            db.reconnected = False  # type: ignore[attr-defined]
        rows = dict(db.execute(_META_AND_NEWEST).fetchall())  # one round trip
        self.counters = store.counters_of(rows, int(rows.pop(_NEWEST) or 0))
        self._stored = dict(self.counters)
        gens = {k: rows.get(k) for k in ("mgen", "bgen")}
        if gens.get("mgen") != self._gens.get("mgen"):
            self._load_match(db)
        if gens.get("bgen") != self._gens.get("bgen"):
            self.book.load(db, restart=False)
        self._gens = {k: v for k, v in gens.items() if v is not None}

    def _stamp(self, match: bool, breakers: bool) -> None:
        """In the commit: tell the others what they must read again."""
        new = {k: uuid.uuid4().hex for k, dirty in (("mgen", match), ("bgen", breakers)) if dirty}
        if new:
            assert self._db is not None
            store.write_meta(self._db, new)
            self._gens.update(new)

    def _run_shared(self, items: list[Any]) -> None:
        """A batch on a shared journal: a failed commit's run records first; a database
        gone in the middle of it refuses it whole (`_refuse`), and the thread lives on."""
        items, self._retained = self._retained + items, []
        try:
            if not self.joined and not self._join(at_start=False):
                self._loop.call_soon_threadsafe(self._deliver, self._refuse(items), None)
                return
            self._run_items(items)
        except JournalError as exc:
            self._journal_failed(exc, 0)
            self._gens = {}
            self._loop.call_soon_threadsafe(self._deliver, self._refuse(items), None)

    def _refuse(self, items: list[Any]) -> Batch:
        """A batch the database took no part of: events refused as `unavailable`, queries
        failed, run records kept for the next batch (a run's end is never dropped)."""
        error = refusal(self._last_error)
        failed = StoreError(error["error"]["message"])
        batch = Batch()
        self._retain(items)
        for item in items:
            if isinstance(item, Intake):
                batch.replies.append((item.done, [error] * len(item.events)))
            elif hasattr(item, "future"):  # Query, Replay, Resume
                batch.queries.append((item.future, None, failed))
        return batch

    def _retain(self, items: list[Any]) -> None:
        """Keep the run records of a batch that was not stored, for the next one."""
        self._retained += [i for i in items if isinstance(i, Started | Finished | Hold)]

    # -- claims ------------------------------------------------------------------------------

    def _claim(self, batch: Batch) -> None:
        """In the commit: claim pending runs for this member's free slots."""
        db = self._db
        assert db is not None
        batch.new_requests = []  # runs made in this batch wait in the journal to be claimed
        if self.settings.role == "intake" or not self.claiming:
            return
        held = db.execute(
            "SELECT count(*) FROM runs WHERE member = ? AND state IN ('claimed', 'running')",
            (self.member,),
        ).fetchone()[0]
        free = self.settings.concurrency - int(held)
        if free <= 0:
            return
        order = _IN_ORDER if self.settings.per_job_order else ""
        args = (self.member, free) if order else (free,)
        where = f"r.run_id IN ({_CANDIDATES.format(order=order)})"
        rows = list(
            store.run_rows(db, where + " ORDER BY r.run_id FOR UPDATE OF r SKIP LOCKED", args)
        )
        chosen = self._fair(rows, free)
        if not chosen:
            return
        db.execute(
            "UPDATE runs SET state = 'claimed', member = ? WHERE run_id = ANY(?)",
            (self.member, [row.run_id for row, _ in chosen]),
        )
        for row, cb in chosen:
            if row.attempts >= MAX_ATTEMPTS:
                reason = f"gave up after {row.attempts} attempts, each ended by a lost member"
                batch.finished.append(store.error_row(reason, row.run_id))
            elif isinstance(cb, str):
                batch.finished.append(store.error_row(f"cannot run: {cb}", row.run_id))
            else:
                batch.new_requests.append(request_of(row, cb, redelivered=row.attempts > 0))

    def _fair(self, rows: list[store.RunRow], free: int) -> list[tuple[store.RunRow, Any]]:
        """Up to `free` of the candidates (each callback's oldest claimable runs), callbacks
        in turn from the one after this member's last pick, each within its policy's
        fleet-wide `concurrency` (SPEC §7.5, §8): a flood of one callback waits its turn."""
        queues: dict[str, deque[tuple[store.RunRow, Any]]] = {}
        room: dict[str, int] = {}
        running: dict[str, int] | None = None
        for row in rows:
            file = str(row.cb["file"])
            if file not in queues:
                queues[file] = deque()
                cb = callback_or_reason(row.cb, self.table)
                cap = None if isinstance(cb, str) else self.book.policy_of(cb).concurrency
                if cap is not None:
                    if running is None:
                        running = self._running_by_callback()
                    room[file] = max(0, cap - running.get(file, 0))
            queues[file].append((row, callback_or_reason(row.cb, self.table)))
        names = sorted(queues)
        turn = [n for n in names if n > self._last_pick] + [
            n for n in names if n <= self._last_pick
        ]
        chosen: list[tuple[store.RunRow, Any]] = []
        while len(chosen) < free and turn:
            for file in list(turn):
                if len(chosen) >= free:
                    break
                if room.get(file, 1) <= 0 or not queues[file]:
                    turn.remove(file)
                    continue
                chosen.append(queues[file].popleft())
                self._last_pick = file
                if file in room:
                    room[file] -= 1
        return chosen

    def _running_by_callback(self) -> dict[str, int]:
        assert self._db is not None
        rows = self._db.execute(
            "SELECT callback, count(*) FROM runs WHERE state IN ('claimed', 'running')"
            " GROUP BY callback"
        ).fetchall()
        return {str(c): int(n) for c, n in rows}

    def _notify_pending(self, actions: bool = False) -> None:
        """In the commit: wake the members if any run waits to be claimed, and tell them
        of the runs' actions it stores (their subscribers read them from the journal)."""
        db = self._db
        assert db is not None
        if actions:
            self._notify(db, _channel(actions=True))
        db.execute(
            "SELECT pg_notify(?, '') WHERE EXISTS (SELECT 1 FROM runs WHERE state = 'pending')",
            (_channel(),),
        )

    @staticmethod
    def _notify(db: Db, channel: str = "") -> None:
        db.execute("SELECT pg_notify(?, '')", (channel or _channel(),))


def _channel(actions: bool = False) -> str:
    from supervisord.journal.pg import ACTIONS, CHANNEL

    return ACTIONS if actions else CHANNEL
