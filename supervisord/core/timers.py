"""Firing time triggers: which clock events fall due for a table at a given moment (SPEC §2).

The arithmetic of one term lives in ``clock``; this module walks a table's time terms and the
match state, which is why it sits above both ``clock`` and ``matching``.
"""

from __future__ import annotations

from typing import Any

from supervisord.core.clock import LATE_AFTER, ClockKey, ClockState, schedule_of
from supervisord.core.matching import MatchState, Table
from supervisord.core.model import QUBE_EPOCH, Event, Term


def _armed(clock: ClockState, key: ClockKey, q: float) -> float:
    """The stored time of ``key``, arming it at ``q`` if it has none."""
    last = clock.get(key)
    if last is None:
        clock.set(key, q)
        return q
    return last


def next_deadline(table: Table, clock: ClockState, now: float) -> float | None:
    """The Unix time at which ``due_events`` next has something to fire; None if never.

    Arms terms seen for the first time at ``now`` (see ClockState). A deadline already
    past means a time was missed while the daemon was down: fire it now.
    """
    q = now - QUBE_EPOCH
    clock.adopt(table.live_keys)
    deadlines: list[float] = []
    for _, key, position, term in table.time_terms:
        schedule = schedule_of(term)
        if schedule is None:
            continue
        upcoming = schedule.after(_armed(clock, (key, position), q))
        if upcoming is not None:
            deadlines.append(upcoming + QUBE_EPOCH)
    return min(deadlines, default=None)


def due_events(table: Table, state: MatchState, now: float) -> list[Event]:
    """The clock events due at ``now``, each time term at most once; records them as fired.

    A term with several missed times fires once, for the latest, flagged ``late``. Global
    forms give one event without a job; the others one event per job in the registry.
    """
    q = now - QUBE_EPOCH
    state.clock.adopt(table.live_keys)
    events: list[Event] = []
    for cb, skey, position, term in table.time_terms:
        schedule = schedule_of(term)
        if schedule is None:
            continue
        key = (skey, position)
        last = _armed(state.clock, key, q)
        due = schedule.latest(q)
        if due is None or due <= last:
            continue
        state.clock.set(key, due)
        missed = schedule.interval is not None and due - schedule.interval > last
        late = q - due > LATE_AFTER or missed
        jobs: list[int | None] = [None] if term.name is None else list(state.registry.all_ids())
        where = (cb.key, position)
        events.extend(_clock_event(term, where, job, now, due, late) for job in jobs)
    return events


def _clock_event(
    term: Term, where: tuple[str, int], job: int | None, now: float, due: float, late: bool
) -> Event:
    name = term.name or "dummy"
    doc: dict[str, Any] = {"name": name, "type": term.type}
    if job is not None:
        doc["job"] = {"id": job}
    doc.update(
        time=now,
        qube_time=int(due) if due.is_integer() else due,
        trigger=str(term),
        late=late,
        callback=where[0],
        term=where[1],
    )
    return Event(name, term.type, job, None, None, None, now, None, doc)
