"""Job records in memory and the store that keeps every job: the registry's backing (SPEC §2)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from sys import intern
from typing import Any, Final, Protocol, TypeAlias

# A job in memory, compactly: its values, its done_at, then its key layout (a tuple every
# job with the same keys shares). String values are interned: status, user, label and mail
# address repeat across jobs.
Record: TypeAlias = tuple[Any, ...]
# Distinct key layouts remembered for sharing; past this (a client sending ever new keys)
# the table starts afresh, and records keep the layouts they hold.
MAX_LAYOUTS: Final = 1024
# Longer strings are kept as they came: interning pays for repeated short values.
MAX_INTERNED: Final = 128
# A job as the store keeps it: (id, job object or None to delete it, done_at, pgrp, pid);
# pgrp is None when the job leads its own process group, pid None unless an integer.
StoredJob: TypeAlias = tuple[
    int, "dict[str, Any] | None", "float | None", "int | None", "int | None"
]
# A job as the store reads it back: (id, job object, done_at).
LoadedJob: TypeAlias = tuple[int, dict[str, Any], "float | None"]
# Job ids by a pgrp or pid: one id alone is kept as itself, not as a set.
Index: TypeAlias = dict[int, "int | set[int]"]
_SCALARS: Final = (str, int, float, bool, type(None))


class JobStore(Protocol):
    """Where every job the registry knows lives (the daemon: ``journal.state.JournalJobs``)."""

    def max_id(self) -> int:
        """The highest job id stored, 0 when none."""
        ...

    def rows(self, ids: Sequence[int]) -> list[LoadedJob]:
        """The stored jobs among these ids, in any order."""
        ...

    def ids_with(self, column: str, value: int) -> list[int]:
        """Ids of the stored jobs whose stored ``pgrp`` or ``pid`` (``column``) is ``value``."""
        ...

    def all_ids(self) -> list[int]:
        """Every stored job id."""
        ...

    def done_by(self, cutoff: float, limit: int) -> list[tuple[int, float]]:
        """(id, done_at) of up to ``limit`` jobs with done_at <= cutoff, oldest first."""
        ...

    def write(self, rows: Iterable[StoredJob]) -> None:
        """Store (or, for a None job object, delete) these jobs, in one pass."""
        ...


class MemoryJobStore:
    """A JobStore in a dict, for simulations and tests: nothing is journalled there."""

    def __init__(self) -> None:
        self._rows: dict[int, StoredJob] = {}

    def max_id(self) -> int:
        return max(self._rows, default=0)

    def rows(self, ids: Sequence[int]) -> list[LoadedJob]:
        found = [self._rows[i] for i in ids if i in self._rows]
        return [(i, clone(job), done) for i, job, done, _, _ in found]

    def ids_with(self, column: str, value: int) -> list[int]:
        at = 3 if column == "pgrp" else 4
        return [i for i, row in self._rows.items() if row[at] == value]

    def all_ids(self) -> list[int]:
        return list(self._rows)

    def done_by(self, cutoff: float, limit: int) -> list[tuple[int, float]]:
        done = sorted((row[2], i) for i, row in self._rows.items() if row[2] is not None)
        return [(i, at) for at, i in done if at <= cutoff][:limit]

    def write(self, rows: Iterable[StoredJob]) -> None:
        for row in rows:
            if row[1] is None:
                self._rows.pop(row[0], None)
            else:
                self._rows[row[0]] = row


def pack(
    layouts: dict[tuple[str, ...], tuple[str, ...]],
    job_id: int,
    job: Mapping[str, Any],
    done_at: float | None,
) -> Record:
    """A compact record of a job object, its layout shared through ``layouts``."""
    keys = tuple(job)
    layout = layouts.get(keys)
    if layout is None:
        if len(layouts) >= MAX_LAYOUTS:
            layouts.clear()
        layout = layouts[keys] = tuple(_compact(k, job_id) for k in keys)
    return (*[_compact(v, job_id) for v in job.values()], done_at, layout)


def _compact(value: Any, job_id: int) -> Any:
    """The value to keep: an equal shared string, the job's own id object for its id."""
    kind = type(value)
    if kind is str:
        return intern(value) if len(value) <= MAX_INTERNED else value
    if kind is int and value == job_id:
        return job_id
    return value


def row_parts(row: Mapping[str, Any]) -> tuple[Mapping[str, Any], float | None]:
    """(job object, done_at) of a row as ``take_dirty`` returns it (and schema 2 of the
    journal stored it), or of a bare job object."""
    job = row.get("job")
    if not isinstance(job, Mapping):
        return row, None
    done_at = row.get("done_at")
    if isinstance(done_at, int | float) and not isinstance(done_at, bool):
        return job, float(done_at)
    return job, None


def stored_job(job_id: int, job: Mapping[str, Any], done_at: float | None) -> StoredJob:
    """The store's row for a job: its object with its id, done_at, pgrp and pid."""
    full = {**job, "id": job_id}
    return stored(job_id, (*full.values(), done_at, tuple(full)))


def stored(job_id: int, record: Record | None) -> StoredJob:
    """The store's row for a record (None: the job is to be deleted)."""
    if record is None:
        return (job_id, None, None, None, None)
    return (job_id, unpack(record), record[-2], *columns(job_id, record))


def columns(job_id: int, record: Record) -> tuple[int | None, int | None]:
    """The job's pgrp (None when it leads its own group, as in Qube) and pid, when integers."""
    pgrp, pid = _int(field(record, "pgrp")), _int(field(record, "pid"))
    return (None if pgrp == job_id else pgrp), pid


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def unpack(record: Record) -> dict[str, Any]:
    """The job object of a record (values shared: shallow)."""
    return dict(zip(record[-1], record, strict=False))  # stops short of done_at and layout


def copy_job(record: Record) -> dict[str, Any]:
    """A deep copy of the job object of a record."""
    pairs = zip(record[-1], record, strict=False)
    return {k: v if type(v) in _SCALARS else clone(v) for k, v in pairs}


def field(record: Record, name: str) -> Any:
    layout: tuple[str, ...] = record[-1]
    return record[layout.index(name)] if name in layout else None


def clone(value: Any) -> Any:
    """A deep copy of JSON data; cheaper than copy.deepcopy for the flat job objects."""
    if isinstance(value, Mapping):
        return {k: clone(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clone(v) for v in value]
    return value


def index_add(index: Index, value: int, job_id: int) -> None:
    members = index.get(value)
    if members is None:
        index[value] = job_id
    elif isinstance(members, set):
        members.add(job_id)
    elif members != job_id:
        index[value] = {members, job_id}


def index_discard(index: Index, value: int, job_id: int) -> None:
    members = index.get(value)
    if isinstance(members, set):
        members.discard(job_id)
        if len(members) == 1:
            index[value] = members.pop()
    elif members == job_id:
        del index[value]


def index_get(index: Index, value: int) -> list[int]:
    members = index.get(value)
    if members is None:
        return []
    return sorted(members) if isinstance(members, set) else [members]
