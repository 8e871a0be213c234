"""Reads of the journal for the operations: history, dead runs, actions, counts; and pruning."""

from __future__ import annotations

import json
from typing import Any, Final

from supervisord.journal.backend import Db

_HISTORY: Final = (
    "SELECT run_id, seq, event_id, callback, owner, started, ended, exit_code, signal,"
    " outcome, truncated, log, actions, state, attempts, description, attempt,"
    " coalesce(first_run_id, run_id), dead, replayed, left_running, due, member FROM runs"
)


def history(
    db: Db,
    job: int | None,
    callback: str | None,
    outcome: str | None,
    limit: int,
    *,
    dead: bool = False,
) -> list[dict[str, Any]]:
    """Runs newest first, filtered; ``dead`` keeps only dead runs (SPEC §7.2)."""
    where, args = [], []
    for clause, value in (("owner = ?", job), ("callback = ?", callback), ("outcome = ?", outcome)):
        if value is not None:
            where.append(clause)
            args.append(value)
    if dead:
        where.append("dead = 1")
    sql = _HISTORY
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY run_id DESC LIMIT ?"
    return [_history_row(r) for r in db.execute(sql, [*args, limit])]


def _history_row(r: tuple[Any, ...]) -> dict[str, Any]:
    return {
        "run_id": r[0], "seq": r[1], "event_id": r[2], "callback": r[3], "job_id": r[4],
        "started": r[5], "ended": r[6], "exit_code": r[7], "signal": r[8], "outcome": r[9],
        "truncated": bool(r[10]), "log": r[11], "actions": json.loads(r[12]) if r[12] else [],
        "state": r[13], "attempts": r[14], "description": r[15], "attempt": r[16],
        "first_run_id": r[17], "dead": bool(r[18]), "replayed": bool(r[19]),
        "left_running": r[20], "retry_at": r[21], "member": r[22],
    }  # fmt: skip


def waiting_counts(db: Db) -> dict[str, dict[str, int]]:
    """Per callback: runs ``held`` by a breaker and ``retrying`` after a backoff, and
    ``dead`` runs in the history."""
    counts: dict[str, dict[str, int]] = {}
    rows = db.execute(
        "SELECT callback, state, count(*) FROM runs WHERE state IN ('retrying', 'held')"
        " GROUP BY callback, state"
    ).fetchall()
    rows += db.execute(
        "SELECT callback, 'dead', count(*) FROM runs WHERE dead = 1 GROUP BY callback"
    ).fetchall()
    for callback, state, n in rows:
        counts.setdefault(callback, {})[state] = int(n)
    return counts


def waiting_through(db: Db, seq: int) -> dict[str, int]:
    """Runs of events up to ``seq`` that wait for a retry or are held (for `wait`)."""
    rows = dict(
        db.execute(
            "SELECT state, count(*) FROM runs WHERE state IN ('retrying', 'held') AND seq <= ?"
            " GROUP BY state",
            (seq,),
        ).fetchall()
    )
    return {"retrying": int(rows.get("retrying", 0)), "held": int(rows.get("held", 0))}


def unfinished_through(db: Db, seq: int) -> dict[str, int]:
    """Runs of events up to ``seq`` not finished: waiting to start or running anywhere in
    the fleet (``unfinished``), and waiting for a retry or held (for a fleet's `wait`)."""
    rows = dict(
        db.execute(
            "SELECT state, count(*) FROM runs WHERE state != 'finished' AND seq <= ?"
            " GROUP BY state",
            (seq,),
        ).fetchall()
    )
    unfinished = sum(int(rows.get(s, 0)) for s in ("pending", "claimed", "running"))
    return {
        "unfinished": unfinished,
        "retrying": int(rows.get("retrying", 0)),
        "held": int(rows.get("held", 0)),
    }


def replay_sources(db: Db, selector: dict[str, Any], limit: int) -> list[int]:
    """The run ids a replay request names (SPEC §7.3): given ids, dead runs, or an event's."""
    if "runs" in selector:
        ids = [int(i) for i in selector["runs"]][:limit]
        found: list[int] = []
        for i in range(0, len(ids), 500):  # SQLite caps the parameters of one statement
            chunk = ids[i : i + 500]
            sql = f"SELECT run_id FROM runs WHERE run_id IN ({','.join('?' * len(chunk))})"
            found += [int(r[0]) for r in db.execute(sql, chunk)]
        return sorted(found)
    where, args = [], []
    if selector.get("dead"):
        where.append("dead = 1")
        if selector.get("since") is not None:
            where.append("ended >= ?")
            args.append(float(selector["since"]))
    else:
        # An event's callbacks as matched when it came: its first attempts, not replays.
        where.append("seq = ? AND attempt = 1 AND replayed = 0")
        args.append(int(selector["seq"]))
    if selector.get("callback") is not None:
        where.append("callback = ?")
        args.append(selector["callback"])
    sql = f"SELECT run_id FROM runs WHERE {' AND '.join(where)} ORDER BY run_id LIMIT ?"
    return [int(r[0]) for r in db.execute(sql, [*args, limit])]


def actions_since(db: Db, since: int) -> list[dict[str, Any]]:
    """Stored actions of events after seq ``since`` (`subscribe` with `since`)."""
    return _actions(db, "seq", since)


def actions_since_id(db: Db, after: int) -> list[dict[str, Any]]:
    """Stored actions newer than action id ``after``, in order (a fleet's live feed)."""
    return _actions(db, "action_id", after)


def _actions(db: Db, column: str, after: int) -> list[dict[str, Any]]:
    rows = db.execute(
        "SELECT action_id, seq, callback, job_id, action, target FROM actions"
        f" WHERE {column} > ? ORDER BY action_id",
        (after,),
    )
    return [
        {"op": "action", "id": a, "seq": s, "callback": c, "job_id": j, "action": v, "target": t}
        for a, s, c, j, v, t in rows
    ]


def last_action_id(db: Db) -> int:
    return int(db.execute("SELECT max(action_id) FROM actions").fetchone()[0] or 0)


def prune(db: Db, before: float, chunk: int) -> int:
    """Forget finished runs and events older than `before`, at most `chunk` rows each."""
    n = db.execute(
        "DELETE FROM runs WHERE run_id IN (SELECT run_id FROM runs WHERE state = 'finished'"
        " AND ended < ? ORDER BY run_id LIMIT ?)",
        (before, chunk),
    ).rowcount
    n += db.execute(
        "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE received < ?"
        " AND seq NOT IN (SELECT seq FROM runs) AND seq < (SELECT max(seq) FROM events)"
        " ORDER BY seq LIMIT ?)",  # the newest stays: read_counters needs it
        (before, chunk),
    ).rowcount
    n += db.execute(
        "DELETE FROM actions WHERE action_id IN (SELECT action_id FROM actions"
        " WHERE run_id NOT IN (SELECT run_id FROM runs) ORDER BY action_id LIMIT ?)",
        (chunk,),
    ).rowcount
    return int(n)
