"""The job registry: what the daemon knows of jobs from the `job` objects of events (SPEC §2)."""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from typing import Any, Final

from .model import DONE_NAMES, Event

# Job events whose name is itself a Qube job status: the event is the newest word on it,
# so it overrides whatever (possibly stale) `status` the client put in the job object.
_STATUS_EVENTS: Final = frozenset(
    {"running", "complete", "failed", "killed", "blocked", "waiting", "removed"}
)
# After these job events the job is finished; the registry forgets it `retention` later.
_FINAL_EVENTS: Final = DONE_NAMES | {"removed"}
# Job events that bring a finished job back to life (a retry, a requeue, a resubmit).
_LIVE_EVENTS: Final = frozenset({"submit", "assigned", "running", "blocked", "waiting"})


def _clone(value: Any) -> Any:
    """A deep copy of JSON data; cheaper than copy.deepcopy for the flat job objects."""
    if isinstance(value, Mapping):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clone(v) for v in value]
    return value


def _int_field(job: Mapping[str, Any], name: str) -> int | None:
    value = job.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class JobRegistry:
    """Jobs by id, with pgrp and parent indexes, and expiry of finished jobs.

    Persisted rows (``take_dirty``/``load``) are ``{"job": {...}, "done_at": float | None}``:
    the store treats them as opaque JSON. ``load`` also accepts a bare job object.
    """

    def __init__(self, retention: float) -> None:
        self.retention = retention
        self._jobs: dict[int, dict[str, Any]] = {}
        self._done_at: dict[int, float] = {}
        self._by_pgrp: dict[int, set[int]] = {}
        self._by_pid: dict[int, set[int]] = {}
        self._expiry: list[tuple[float, int]] = []  # heap; stale entries skipped on pop
        self._dirty: set[int] = set()

    def __len__(self) -> int:
        return len(self._jobs)

    def observe(self, event: Event) -> None:
        """Merge the event's job object into the registry (newest wins) and track status."""
        if event.job_id is None:
            return
        job_id = event.job_id
        old = self._jobs.get(job_id, {})
        new = dict(old)
        # Shallow: job objects come from JSON and are never changed in place here; `get`
        # hands out deep copies.
        job = event.doc.get("job")
        new.update(job if type(job) is dict else event.job)
        new["id"] = job_id
        if event.type == "job":
            self._track_status(job_id, new, event)
        if new != old:
            self._store(job_id, new)

    def _track_status(self, job_id: int, job: dict[str, Any], event: Event) -> None:
        if event.name in _STATUS_EVENTS:
            job["status"] = event.name
        elif event.name == "submit":
            job.setdefault("status", "pending")
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
            heapq.heappush(self._expiry, (at + self.retention, job_id))
        self._dirty.add(job_id)

    def _store(self, job_id: int, job: dict[str, Any]) -> None:
        self._unindex(job_id)
        self._jobs[job_id] = job
        for index, name in ((self._by_pgrp, "pgrp"), (self._by_pid, "pid")):
            value = _index_value(job_id, job, name)
            if value is not None:
                index.setdefault(value, set()).add(job_id)
        self._dirty.add(job_id)

    def _unindex(self, job_id: int) -> None:
        old = self._jobs.get(job_id)
        if old is None:
            return
        for index, name in ((self._by_pgrp, "pgrp"), (self._by_pid, "pid")):
            value = _index_value(job_id, old, name)
            members = index.get(value) if value is not None else None
            if value is not None and members is not None:
                members.discard(job_id)
                if not members:
                    del index[value]

    def get(self, job_id: int) -> dict[str, Any] | None:
        """A copy of the job's merged object, or None if unknown."""
        job = self._jobs.get(job_id)
        return None if job is None else _clone(job)

    def pgrp_ids(self, pgrp: int) -> list[int]:
        """Ids of the known jobs whose ``pgrp`` is ``pgrp``, ascending."""
        return sorted(self._by_pgrp.get(pgrp, ()))

    def by_pgrp(self, pgrp: int) -> list[dict[str, Any]]:
        """Copies of the known jobs of process group ``pgrp``, by ascending id."""
        return [_clone(self._jobs[i]) for i in self.pgrp_ids(pgrp)]

    def children_of(self, job_id: int) -> list[int]:
        """Ids of the known jobs whose ``pid`` (parent) is ``job_id``, ascending."""
        return sorted(self._by_pid.get(job_id, ()))

    def all_ids(self) -> list[int]:
        return sorted(self._jobs)

    def expire(self, now: float) -> list[int]:
        """Forget jobs finished more than ``retention`` seconds before ``now``; their ids."""
        gone: list[int] = []
        while self._expiry and self._expiry[0][0] <= now:
            _, job_id = heapq.heappop(self._expiry)
            done_at = self._done_at.get(job_id)
            if done_at is None:
                continue  # revived since this entry was pushed
            if done_at + self.retention > now:
                heapq.heappush(self._expiry, (done_at + self.retention, job_id))
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
        The rows share the registry's objects: serialise them before the next change."""
        rows: dict[int, dict[str, Any] | None] = {}
        for job_id in sorted(self._dirty):
            job = self._jobs.get(job_id)
            if job is None:
                rows[job_id] = None
            else:
                rows[job_id] = {"job": job, "done_at": self._done_at.get(job_id)}
        self._dirty.clear()
        return rows

    def load(self, rows: Iterable[tuple[int, dict[str, Any]]]) -> None:
        """Restore rows written by ``take_dirty`` (replacing any job of the same id)."""
        for job_id, row in rows:
            job = row.get("job") if isinstance(row.get("job"), Mapping) else row
            assert isinstance(job, Mapping)
            self._store(job_id, {**_clone(job), "id": job_id})
            self._done_at.pop(job_id, None)
            done_at = row.get("done_at") if job is not row else None
            if isinstance(done_at, int | float) and not isinstance(done_at, bool):
                self._set_done(job_id, float(done_at))
            self._dirty.discard(job_id)


def _index_value(job_id: int, job: dict[str, Any], name: str) -> int | None:
    """The job's pgrp or pid for the indexes; a job without a pgrp leads its own process
    group, as in Qube, so ``jobinfo("-pgrp", N)`` includes job N itself."""
    value = _int_field(job, name)
    if value is None and name == "pgrp":
        return job_id
    return value
