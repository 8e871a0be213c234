"""The job registry: what the daemon knows of jobs from the `job` objects of events (SPEC §2)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from supervisord.core.jobstore import (
    Index,
    JobStore,
    MemoryJobStore,
    Record,
    StoredJob,
    clone,
    columns,
    copy_job,
    field,
    index_add,
    index_discard,
    index_get,
    pack,
    row_parts,
    stored,
    unpack,
)
from supervisord.core.model import DONE_NAMES, Event

# Job events whose name is itself a Qube job status: the event is the newest word on it,
# so it overrides whatever (possibly stale) `status` the client put in the job object.
_STATUS_EVENTS: Final = frozenset(
    {"running", "complete", "failed", "killed", "blocked", "waiting", "removed"}
)
# After these job events the job is finished; the registry forgets it `retention` later.
_FINAL_EVENTS: Final = DONE_NAMES | {"removed"}
# Job events that bring a finished job back to life (a retry, a requeue, a resubmit).
_LIVE_EVENTS: Final = frozenset({"submit", "assigned", "running", "blocked", "waiting"})

# A farm keeps tens of thousands of jobs waiting or running for days and a year of history
# holds millions, so every job lives in the store (the journal's `jobs` table) and memory
# holds only hot ones, in two generations of HOT_JOBS: a lookup reads the newer, then the
# older (copying what it finds there to the newer); when the newer fills up, the older is
# dropped and the newer takes its place. At most 2 * HOT_JOBS records stay in memory.
HOT_JOBS: Final = 5000
# Results of the store's pgrp and pid lookups kept (most answers are empty or a few ids).
HOT_QUERIES: Final = 5000
# Finished jobs one `expire` forgets at most, oldest first; the rest wait for the next one.
EXPIRE_CHUNK: Final = 50_000

# A cache entry for a job id the store is known not to hold.
_ABSENT: Final[Record] = ()


class JobRegistry:
    """Jobs by id, with pgrp and parent lookups, and expiry of finished jobs.

    Every job lives in ``store``. Jobs changed since the last ``flush`` are pending here (the
    daemon flushes them with each commit); a bounded cache holds hot ones. Lookups read
    pending, then the cache, then the store; an id above every id stored or pending is known
    to be new without asking the store, and ``prefetch`` reads a batch's jobs in one query.
    ``take_dirty`` rows are ``{"job": {...}, "done_at": float | None}`` (None: forgotten).
    """

    def __init__(self, retention: float, store: JobStore | None = None) -> None:
        self.retention = retention
        self._store: JobStore = MemoryJobStore() if store is None else store
        self._layouts: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._pending: dict[int, Record | None] = {}  # None: forgotten
        self._pending_pgrp: Index = {}  # pending jobs by pgrp, when not their own id
        self._pending_pid: Index = {}  # pending jobs by pid
        self._hot: dict[int, Record] = {}
        self._cold: dict[int, Record] = {}
        self._fetched: dict[int, Record] = {}  # read ahead by `prefetch`, until the flush
        # Stored ids by (column, value), and the keys whose stored ids the flush changes.
        self._queried: dict[tuple[str, int], tuple[int, ...]] = {}
        self._moved: set[tuple[str, int]] = set()
        self._horizon = self._store.max_id()  # no job above this id is stored

    def __len__(self) -> int:
        return len(self.all_ids())

    def observe(self, event: Event) -> None:
        """Merge the event's job object into the registry (newest wins) and track status."""
        job_id = event.job_id
        if job_id is None:
            return
        job = event.doc.get("job")
        fields = job if type(job) is dict else event.job
        old = self._find(job_id)
        done_at = None if old is None else old[-2]
        if event.type == "job":
            if event.name in _FINAL_EVENTS:
                done_at = event.time
            elif event.name in _LIVE_EVENTS:
                done_at = None
        if old is not None and done_at == old[-2] and _is_unchanged(old, fields, event):
            return  # most events: checked without unpacking the record
        new = {} if old is None else unpack(old)
        # Shallow: job objects come from JSON and are never changed in place here; `get`
        # hands out deep copies.
        new.update(fields)
        new["id"] = job_id
        if event.type == "job":
            if event.name in _STATUS_EVENTS:
                new["status"] = event.name
            elif event.name == "submit":
                new.setdefault("status", "pending")
        self._put(job_id, pack(self._layouts, job_id, new, done_at), old)

    def _put(self, job_id: int, record: Record | None, old: Record | None) -> None:
        """Make ``record`` the job's pending state (None: forget the job); ``old`` is its
        state before, which the flush replaces in the store if it is not pending yet."""
        if old is not None and job_id not in self._pending:
            self._index(job_id, old, _moving)
        self._unpend(job_id)
        self._pending[job_id] = record
        if record is not None:
            self._index(job_id, record, index_add)
            self._horizon = max(self._horizon, job_id)

    def _unpend(self, job_id: int) -> None:
        old = self._pending.pop(job_id, None)
        if old is not None:
            self._index(job_id, old, index_discard)

    def _index(self, job_id: int, record: Record, change: Any) -> None:
        pgrp, pid = columns(job_id, record)
        if pgrp is not None:
            change(self._pending_pgrp, pgrp, job_id)
            self._moved.add(("pgrp", pgrp))
        if pid is not None:
            change(self._pending_pid, pid, job_id)
            self._moved.add(("pid", pid))

    def _find(self, job_id: int) -> Record | None:
        """The job's record, pending, cached or stored; None when unknown."""
        if job_id in self._pending:
            return self._pending[job_id]
        record = self._hot.get(job_id)
        if record is None:
            record = self._cold.get(job_id)
            if record is None:
                record = self._fetched.get(job_id)
            if record is None:
                if job_id > self._horizon:
                    return None  # newer than every job stored: new, no query
                found = self._store.rows([job_id])
                record = self._record(*found[0]) if found else _ABSENT
            self._cache(job_id, record)
        return record or None

    def _record(self, job_id: int, job: Mapping[str, Any], done_at: float | None) -> Record:
        return pack(self._layouts, job_id, {**job, "id": job_id}, done_at)

    def _cache(self, job_id: int, record: Record) -> None:
        hot = self._hot
        hot[job_id] = record
        if len(hot) >= HOT_JOBS:
            self._cold, self._hot = hot, {}

    def prefetch(self, ids: Iterable[int | None]) -> None:
        """Read ahead, in one query, those of these jobs only the store holds; they are kept
        until the next ``flush`` (the cache could drop them before their events come)."""
        pending, hot, horizon = self._pending, self._hot, self._horizon
        wanted = {i for i in ids if i is not None and i <= horizon and i not in hot}
        wanted.difference_update(pending, self._cold, self._fetched)
        if not wanted:
            return
        fetched = self._fetched
        fetched.update(dict.fromkeys(wanted, _ABSENT))
        for row in self._store.rows(sorted(wanted)):
            fetched[row[0]] = self._record(*row)

    def get(self, job_id: int) -> dict[str, Any] | None:
        """A copy of the job's merged object, or None if unknown."""
        record = self._find(job_id)
        return None if record is None else copy_job(record)

    def field(self, job_id: int, name: str) -> Any:
        """One field of a known job (shared, not copied: read it, do not change it), or
        None when the job or the field is unknown."""
        record = self._find(job_id)
        return None if record is None else field(record, name)

    def pgrp_ids(self, pgrp: int) -> list[int]:
        """Ids of the known jobs whose ``pgrp`` is ``pgrp``, ascending. A job without an
        integer pgrp leads its own process group, as in Qube."""
        ids = self._merged("pgrp", pgrp, self._pending_pgrp)
        leader = self._find(pgrp)
        if leader is not None and columns(pgrp, leader)[0] is None:
            ids.add(pgrp)
        return sorted(ids)

    def by_pgrp(self, pgrp: int) -> list[dict[str, Any]]:
        """Copies of the known jobs of process group ``pgrp``, by ascending id."""
        ids = self.pgrp_ids(pgrp)
        self.prefetch(ids)
        return [job for job in map(self.get, ids) if job is not None]

    def children_of(self, job_id: int) -> list[int]:
        """Ids of the known jobs whose ``pid`` (parent) is ``job_id``, ascending."""
        return sorted(self._merged("pid", job_id, self._pending_pid))

    def _merged(self, column: str, value: int, index: Index) -> set[int]:
        """Stored ids with this column value, as pending changes leave them."""
        key, pending = (column, value), self._pending
        stored_ids = self._queried.get(key)
        if stored_ids is None:
            if len(self._queried) >= HOT_QUERIES:
                self._queried = {}
            stored_ids = self._queried[key] = tuple(self._store.ids_with(column, value))
        ids = {i for i in stored_ids if i not in pending}
        ids.update(index_get(index, value))
        return ids

    def all_ids(self) -> list[int]:
        pending = self._pending
        ids = {i for i in self._store.all_ids() if i not in pending}
        ids.update(i for i, record in pending.items() if record is not None)
        return sorted(ids)

    def expire(self, now: float, limit: int = EXPIRE_CHUNK) -> list[int]:
        """Forget jobs finished ``retention`` seconds or more before ``now`` (the oldest
        ``limit`` of them); their ids."""
        pending, retention = self._pending, self.retention
        # The store's filter is a little wide; the exact test is the one below.
        stored = self._store.done_by(now - retention + 1.0, limit)
        due = [(at, i) for i, at in stored if i not in pending]
        due += [(r[-2], i) for i, r in pending.items() if r is not None and r[-2] is not None]
        gone = sorted(i for at, i in sorted(due)[:limit] if at + retention <= now)
        self.prefetch(gone)
        for job_id in gone:
            self._put(job_id, None, self._find(job_id))
        return gone

    def is_dirty(self) -> bool:
        """Whether changes wait for ``flush``."""
        return bool(self._pending)

    def flush(self) -> None:
        """Write the pending changes to the store (the daemon: in the batch's commit); the
        jobs stay cached."""
        pending, self._fetched = self._pending, {}
        if not pending:
            return
        self._store.write(stored(i, pending[i]) for i in sorted(pending))
        self._pending, self._pending_pgrp, self._pending_pid = {}, {}, {}
        for key in self._moved:
            self._queried.pop(key, None)
        self._moved = set()
        for job_id, record in pending.items():
            self._cache(job_id, record or _ABSENT)

    def take_dirty(self) -> dict[int, dict[str, Any] | None]:
        """The rows ``flush`` writes (None = forgotten), and the flush."""
        rows = {
            i: None if r is None else {"job": unpack(r), "done_at": r[-2]}
            for i, r in sorted(self._pending.items())
        }
        self.flush()
        return rows

    def load(self, rows: Iterable[tuple[int, Mapping[str, Any]]]) -> None:
        """Store rows written by ``take_dirty`` (or bare job objects), replacing any job of
        the same id, pending or not; they are not pending after."""
        written: list[StoredJob] = []
        for job_id, row in rows:
            job, done_at = row_parts(row)
            written.append(stored(job_id, self._record(job_id, clone(job), done_at)))
            self._unpend(job_id)
            for cache in (self._hot, self._cold, self._fetched):
                cache.pop(job_id, None)
            self._horizon = max(self._horizon, job_id)
        self._store.write(written)
        self._queried = {}


def _moving(_index: Index, _value: int, _job_id: int) -> None:
    """For ``_index`` with a job's stored state: only its keys move, at the flush."""


def _is_unchanged(record: Record, fields: Mapping[str, Any], event: Event) -> bool:
    """Whether merging the event's job fields (and status) leaves the job as it is."""
    layout: tuple[str, ...] = record[-1]
    status = event.name if event.type == "job" and event.name in _STATUS_EVENTS else None
    for key, value in fields.items():
        if key == "status" and status is not None:
            continue  # the event's own word wins
        if key not in layout:
            return False
        kept = record[layout.index(key)]
        if kept is not value and kept != value:
            return False
    if status is not None or (event.type == "job" and event.name == "submit"):
        return "status" in layout and (status is None or record[layout.index("status")] == status)
    return True
