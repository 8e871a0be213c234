"""What the matcher keeps across restarts (jobs, latches, clock) and the breakers, stored."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from itertools import chain, islice
from typing import Any, Final

from supervisord.core.jobstore import LoadedJob, StoredJob
from supervisord.journal.backend import Db
from supervisord.journal.store import INSERT_CHUNK, dumps, many

_JOB_ROW: Final = "(?, ?, ?, ?, ?)"
_INSERT_JOB: Final = f"INSERT OR REPLACE INTO jobs (id, doc, done_at, pgrp, pid) VALUES {_JOB_ROW}"
_INSERT_JOBS: Final = _INSERT_JOB.replace(_JOB_ROW, ", ".join([_JOB_ROW] * INSERT_CHUNK))
# Ids per `IN (...)` read: SQLite's bound-parameter limit is 999 and up.
_READ_CHUNK: Final = 500


class JournalJobs:
    """The job registry's store (core.jobstore.JobStore): the journal's `jobs` table, read
    and written on the sequencer thread; writes go into the batch's commit."""

    def __init__(self, db: Db) -> None:
        self._db = db

    def max_id(self) -> int:
        return int(self._db.execute("SELECT max(id) FROM jobs").fetchone()[0] or 0)

    def rows(self, ids: Sequence[int]) -> list[LoadedJob]:
        found: list[LoadedJob] = []
        for i in range(0, len(ids), _READ_CHUNK):
            chunk = ids[i : i + _READ_CHUNK]
            sql = f"SELECT id, doc, done_at FROM jobs WHERE id IN ({','.join('?' * len(chunk))})"
            found += [(j, json.loads(doc), at) for j, doc, at in self._db.execute(sql, chunk)]
        return found

    def ids_with(self, column: str, value: int) -> list[int]:
        sql = f"SELECT id FROM jobs WHERE {'pgrp' if column == 'pgrp' else 'pid'} = ?"
        return [i for (i,) in self._db.execute(sql, (value,))]

    def all_ids(self) -> list[int]:
        return [i for (i,) in self._db.execute("SELECT id FROM jobs")]

    def done_by(self, cutoff: float, limit: int) -> list[tuple[int, float]]:
        sql = "SELECT id, done_at FROM jobs WHERE done_at <= ? ORDER BY done_at LIMIT ?"
        return [(int(i), float(at)) for i, at in self._db.execute(sql, (cutoff, limit))]

    def write(self, rows: Iterable[StoredJob]) -> None:
        """INSERT_CHUNK jobs a statement, as store.insert_events does, encoded chunk by chunk
        (a batch's worth of encoded jobs at once would stay as heap the daemon keeps)."""
        db, rows = self._db, iter(rows)
        while chunk := list(islice(rows, INSERT_CHUNK)):
            kept = [
                (i, dumps(job), at, pgrp, pid) for i, job, at, pgrp, pid in chunk if job is not None
            ]
            if len(kept) == INSERT_CHUNK:
                db.execute(_INSERT_JOBS, tuple(chain.from_iterable(kept)))
            else:
                many(db, _INSERT_JOB, kept)
            many(db, "DELETE FROM jobs WHERE id = ?", [(r[0],) for r in chunk if r[1] is None])


def save_state(
    db: Db,
    latches: dict[tuple[str, int | None], frozenset[int] | None],
    clock: dict[Any, Any],
) -> None:
    """Persist what the matcher changed in this batch (None means deleted); the registry
    writes its own through JournalJobs."""
    if latches:
        many(
            db,
            "INSERT OR REPLACE INTO latches VALUES (?, ?, ?)",
            [(k[0], k[1], dumps(sorted(v))) for k, v in latches.items() if v],
        )
        many(
            db,
            "DELETE FROM latches WHERE cb_key = ? AND owner IS ?",
            [(k[0], k[1]) for k, v in latches.items() if not v],
        )
    if clock:
        many(
            db,
            "INSERT OR REPLACE INTO clock VALUES (?, ?)",
            [(dumps(k), dumps(v)) for k, v in clock.items() if v is not None],
        )
        many(
            db,
            "DELETE FROM clock WHERE key = ?",
            [(dumps(k),) for k, v in clock.items() if v is None],
        )


def load_latches(db: Db) -> Iterable[tuple[tuple[str, int | None], frozenset[int]]]:
    rows = db.execute("SELECT cb_key, owner, terms FROM latches")
    return [((k, o), frozenset(json.loads(t))) for k, o, t in rows]


def load_clock(db: Db) -> Iterable[tuple[Any, Any]]:
    return [(_key(json.loads(k)), json.loads(v)) for k, v in db.execute("SELECT * FROM clock")]


def _key(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def save_breakers(db: Db, breakers: dict[str, dict[str, Any] | None]) -> None:
    """Persist breaker states that changed (None: closed, nothing to keep)."""
    many(
        db,
        "INSERT OR REPLACE INTO breakers VALUES (?, ?)",
        [(k, dumps(v)) for k, v in breakers.items() if v is not None],
    )
    many(
        db,
        "DELETE FROM breakers WHERE callback = ?",
        [(k,) for k, v in breakers.items() if v is None],
    )


def load_breakers(db: Db) -> dict[str, dict[str, Any]]:
    return {str(k): json.loads(d) for k, d in db.execute("SELECT callback, doc FROM breakers")}
