"""The job registry: what the daemon knows of jobs from the `job` objects of events (SPEC §2)."""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from sys import intern
from typing import Any, Final, TypeAlias

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

# A farm keeps tens of thousands of jobs in the registry for a day, so a job is stored
# compactly (bench/b_rss.py measured a dict per job, a one-member set per process group and
# a string per status at about 650 bytes a job): a tuple of its values followed by its
# key layout, which every job with the same keys shares, string values interned (status,
# user, label and mail address repeat across jobs), and index entries naming one job hold
# that id itself rather than a set.
_Record: TypeAlias = tuple[Any, ...]  # (value, ..., value, keys): keys is a shared tuple
_Index: TypeAlias = dict[int, "int | set[int]"]
# Distinct key layouts remembered for sharing; past this (a client sending ever new keys)
# the table starts afresh, and records keep the layouts they hold.
_MAX_LAYOUTS: Final = 1024
# Longer strings are kept as they came: interning pays for repeated short values.
_MAX_INTERNED: Final = 128
_SCALARS: Final = (str, int, float, bool, type(None))


def _clone(value: Any) -> Any:
    """A deep copy of JSON data; cheaper than copy.deepcopy for the flat job objects."""
    if isinstance(value, Mapping):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clone(v) for v in value]
    return value


class JobRegistry:
    """Jobs by id, with pgrp and parent indexes, and expiry of finished jobs.

    Persisted rows (``take_dirty``/``load``) are ``{"job": {...}, "done_at": float | None}``:
    the store treats them as opaque JSON. ``load`` also accepts a bare job object.
    """

    def __init__(self, retention: float) -> None:
        self.retention = retention
        self._jobs: dict[int, _Record] = {}
        self._layouts: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._done_at: dict[int, float] = {}
        self._by_pgrp: _Index = {}
        self._by_pid: _Index = {}
        # Heap of (done_at, job id), one entry per finished job; stale entries skipped on pop.
        self._expiry: list[tuple[float, int]] = []
        self._dirty: set[int] = set()

    def __len__(self) -> int:
        return len(self._jobs)

    def observe(self, event: Event) -> None:
        """Merge the event's job object into the registry (newest wins) and track status."""
        if event.job_id is None:
            return
        job_id = event.job_id
        job = event.doc.get("job")
        fields = job if type(job) is dict else event.job
        old = self._jobs.get(job_id)
        if event.type == "job":
            self._track_done(job_id, event)
        if old is not None and _is_unchanged(old, fields, event):
            return  # most events: checked without unpacking the record
        new = {} if old is None else _unpack(old)
        # Shallow: job objects come from JSON and are never changed in place here; `get`
        # hands out deep copies.
        new.update(fields)
        new["id"] = job_id
        if event.type == "job":
            if event.name in _STATUS_EVENTS:
                new["status"] = event.name
            elif event.name == "submit":
                new.setdefault("status", "pending")
        self._store(job_id, self._pack(job_id, new))

    def _track_done(self, job_id: int, event: Event) -> None:
        if event.name in _FINAL_EVENTS:
            if self._done_at.get(job_id) != event.time:
                self._set_done(job_id, event.time)
        elif event.name in _LIVE_EVENTS and job_id in self._done_at:
            del self._done_at[job_id]
            self._dirty.add(job_id)

    def _set_done(self, job_id: int, at: float) -> None:
        # One heap entry per finished job: a job already done only moves its time, and
        # `expire` pushes the entry again when it finds the time moved (no growth per event).
        already = job_id in self._done_at
        self._done_at[job_id] = at
        if not already:
            heapq.heappush(self._expiry, (at, job_id))
        self._dirty.add(job_id)

    def _pack(self, job_id: int, job: dict[str, Any]) -> _Record:
        keys = tuple(job)
        layout = self._layouts.get(keys)
        if layout is None:
            if len(self._layouts) >= _MAX_LAYOUTS:
                self._layouts.clear()
            layout = self._layouts[keys] = tuple(_compact(k, job_id) for k in keys)
        return (*[_compact(v, job_id) for v in job.values()], layout)

    def _store(self, job_id: int, record: _Record) -> None:
        self._unindex(job_id)
        self._jobs[job_id] = record
        for index, name in ((self._by_pgrp, "pgrp"), (self._by_pid, "pid")):
            value = _index_value(job_id, record, name)
            if value is not None:
                _index_add(index, value, job_id)
        self._dirty.add(job_id)

    def _unindex(self, job_id: int) -> None:
        old = self._jobs.get(job_id)
        if old is None:
            return
        for index, name in ((self._by_pgrp, "pgrp"), (self._by_pid, "pid")):
            value = _index_value(job_id, old, name)
            if value is not None:
                _index_discard(index, value, job_id)

    def get(self, job_id: int) -> dict[str, Any] | None:
        """A copy of the job's merged object, or None if unknown."""
        record = self._jobs.get(job_id)
        return None if record is None else _copy(record)

    def field(self, job_id: int, name: str) -> Any:
        """One field of a known job (shared, not copied: read it, do not change it), or
        None when the job or the field is unknown."""
        record = self._jobs.get(job_id)
        return None if record is None else _field(record, name)

    def pgrp_ids(self, pgrp: int) -> list[int]:
        """Ids of the known jobs whose ``pgrp`` is ``pgrp``, ascending."""
        return _index_get(self._by_pgrp, pgrp)

    def by_pgrp(self, pgrp: int) -> list[dict[str, Any]]:
        """Copies of the known jobs of process group ``pgrp``, by ascending id."""
        return [_copy(self._jobs[i]) for i in self.pgrp_ids(pgrp)]

    def children_of(self, job_id: int) -> list[int]:
        """Ids of the known jobs whose ``pid`` (parent) is ``job_id``, ascending."""
        return _index_get(self._by_pid, job_id)

    def all_ids(self) -> list[int]:
        return sorted(self._jobs)

    def expire(self, now: float) -> list[int]:
        """Forget jobs finished more than ``retention`` seconds before ``now``; their ids."""
        gone: list[int] = []
        while self._expiry and self._expiry[0][0] + self.retention <= now:
            _, job_id = heapq.heappop(self._expiry)
            done_at = self._done_at.get(job_id)
            if done_at is None:
                continue  # revived since this entry was pushed
            if done_at + self.retention > now:
                heapq.heappush(self._expiry, (done_at, job_id))
                continue  # finished again later: wait for the later time
            self._forget(job_id)
            gone.append(job_id)
        return sorted(gone)

    def _forget(self, job_id: int) -> None:
        self._unindex(job_id)
        self._jobs.pop(job_id, None)
        self._done_at.pop(job_id, None)
        self._dirty.add(job_id)

    def take_dirty(self) -> dict[int, dict[str, Any] | None]:
        """Rows changed since the last call, for the store (None = deleted); resets tracking.
        The rows share the registry's values: serialise them before the next change."""
        rows: dict[int, dict[str, Any] | None] = {}
        for job_id in sorted(self._dirty):
            record = self._jobs.get(job_id)
            if record is None:
                rows[job_id] = None
            else:
                rows[job_id] = {"job": _unpack(record), "done_at": self._done_at.get(job_id)}
        self._dirty = set()  # a new set: clear() would keep the table of the largest batch
        return rows

    def load(self, rows: Iterable[tuple[int, dict[str, Any]]]) -> None:
        """Restore rows written by ``take_dirty`` (replacing any job of the same id)."""
        for job_id, row in rows:
            job = row.get("job") if isinstance(row.get("job"), Mapping) else row
            assert isinstance(job, Mapping)
            self._store(job_id, self._pack(job_id, {**_clone(job), "id": job_id}))
            self._done_at.pop(job_id, None)
            done_at = row.get("done_at") if job is not row else None
            if isinstance(done_at, int | float) and not isinstance(done_at, bool):
                self._set_done(job_id, float(done_at))
            self._dirty.discard(job_id)


def _compact(value: Any, job_id: int) -> Any:
    """The value to keep: an equal shared string, the job's own id object for its id."""
    kind = type(value)
    if kind is str:
        return intern(value) if len(value) <= _MAX_INTERNED else value
    if kind is int and value == job_id:
        return job_id
    return value


def _is_unchanged(record: _Record, fields: Mapping[str, Any], event: Event) -> bool:
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


def _unpack(record: _Record) -> dict[str, Any]:
    """The job object of a record (values shared: shallow)."""
    return dict(zip(record[-1], record, strict=False))  # stops short of the layout itself


def _copy(record: _Record) -> dict[str, Any]:
    """A deep copy of the job object of a record."""
    pairs = zip(record[-1], record, strict=False)
    return {k: v if type(v) in _SCALARS else _clone(v) for k, v in pairs}


def _field(record: _Record, name: str) -> Any:
    layout: tuple[str, ...] = record[-1]
    return record[layout.index(name)] if name in layout else None


def _index_value(job_id: int, record: _Record, name: str) -> int | None:
    """The job's pgrp or pid for the indexes; a job without a pgrp leads its own process
    group, as in Qube, so ``jobinfo("-pgrp", N)`` includes job N itself."""
    value = _field(record, name)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return job_id if name == "pgrp" else None


def _index_add(index: _Index, value: int, job_id: int) -> None:
    members = index.get(value)
    if members is None:
        index[value] = job_id
    elif isinstance(members, set):
        members.add(job_id)
    elif members != job_id:
        index[value] = {members, job_id}


def _index_discard(index: _Index, value: int, job_id: int) -> None:
    members = index.get(value)
    if isinstance(members, set):
        members.discard(job_id)
        if len(members) == 1:
            index[value] = members.pop()
    elif members == job_id:
        del index[value]


def _index_get(index: _Index, value: int) -> list[int]:
    members = index.get(value)
    if members is None:
        return []
    return sorted(members) if isinstance(members, set) else [members]
