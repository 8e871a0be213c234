"""Matching events to callbacks: owning jobs by context, and per-job latches (SPEC §2)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

from supervisord.core.clock import TIME_TYPES, ClockState
from supervisord.core.jobstore import JobStore
from supervisord.core.latches import Latches
from supervisord.core.matchindex import Candidates, Table, state_key
from supervisord.core.model import And, Callback, Event, Expr, Firing, Term
from supervisord.core.registry import JobRegistry

__all__ = [
    "MatchState", "Table", "holds", "is_compound", "match", "owner_job",
    "state_key",
]  # fmt: skip


class MatchState:
    """Everything matching remembers between events; persisted through the take_dirty calls
    (the registry through ``jobs``, where every job lives: in the daemon, the journal)."""

    def __init__(self, retention: float, jobs: JobStore | None = None) -> None:
        self.registry = JobRegistry(retention, jobs)
        self.latches = Latches()
        self.clock = ClockState()

    def expire(self, now: float) -> list[int]:
        """Expire finished jobs from the registry, and drop the latches they owned."""
        gone = self.registry.expire(now)
        self.latches.drop_owners(gone)
        return gone


def holds(expr: Expr, latched: frozenset[int]) -> bool:
    """Whether ``expr`` is true when exactly the term positions in ``latched`` hold."""
    return _holds(expr, latched, itertools.count())


def _holds(expr: Expr, latched: frozenset[int], positions: Iterator[int]) -> bool:
    if isinstance(expr, Term):
        return next(positions) in latched
    # Evaluate every operand (no short circuit): each must consume its positions.
    values = [_holds(operand, latched, positions) for operand in expr.operands]
    return all(values) if isinstance(expr, And) else any(values)


def is_compound(cb: Callback) -> bool:
    """Whether the trigger latches (any expression) rather than fires per event (one term)."""
    return not isinstance(cb.trigger, Term)


class _Resolver:
    """Resolves term contexts to owning jobs for one event about job X (SPEC §2). Reads
    folded terms (Table.folded) and folds X's label once, when a label term first asks."""

    def __init__(self, registry: JobRegistry, event: Event) -> None:
        self.registry = registry
        self.event = event
        self._label: str | None = None
        self._label_known = False

    def field(self, name: str) -> Any:
        """X's field as the registry knows it with this event's job fields over it."""
        job, x = self.event.job, self.event.job_id
        if name in job:
            return job[name]
        return None if x is None else self.registry.field(x, name)

    def label(self) -> str | None:
        """X's label, case-folded; None when it has none (or one that is not a string)."""
        if not self._label_known:
            label = self.field("label")
            self._label = label.casefold() if isinstance(label, str) else None
            self._label_known = True
        return self._label

    def owners(self, term: Term) -> list[int]:
        x, context = self.event.job_id, term.context
        if x is None or context is None:
            return []
        if context == "self":
            return [x]
        if context == "parent":
            return self.registry.children_of(x)
        if context.isdecimal():
            return [x] if int(context) == x else []
        if self.label() != context:
            return []
        pgrp = self.field("pgrp")
        if not isinstance(pgrp, int) or isinstance(pgrp, bool):
            pgrp = x  # a job without a pgrp leads its own process group, as in Qube
        return sorted({x, *self.registry.pgrp_ids(pgrp)})


def _touched(
    terms: tuple[Term, ...], positions: tuple[int, ...], resolver: _Resolver
) -> dict[int | None, set[int]]:
    """Owner -> the positions of a callback (its folded ``terms``) that this event sets for
    that owner. The index already checked name, type and extra; contexts are checked here."""
    event = resolver.event
    if event.type in TIME_TYPES:  # a clock event names its term; its owner is its job
        return {event.job_id: set(positions)}
    touched: dict[int | None, set[int]] = {}
    for p in positions:
        for owner in resolver.owners(terms[p]):
            touched.setdefault(owner, set()).add(p)
    return touched


def _owner_order(owner: int | None) -> tuple[bool, int]:
    return (owner is not None, owner or 0)


def _fire(
    cb: Callback, key: str, touched: dict[int | None, set[int]], latches: Latches, dry_run: bool
) -> Iterator[Firing]:
    for owner in sorted(touched, key=_owner_order):
        if not is_compound(cb):
            yield Firing(cb, owner, (str(cb.terms[0]),))
            continue
        latched = latches.get(key, owner) | touched[owner]
        fired = holds(cb.trigger, latched)
        if fired:
            yield Firing(cb, owner, tuple(str(cb.terms[p]) for p in sorted(latched)))
        if not dry_run:
            latches.set(key, owner, frozenset() if fired else latched)


def _clock_candidates(table: Table, event: Event) -> Candidates:
    key, position = event.doc.get("callback"), event.doc.get("term")
    i = table.by_key.get(key) if isinstance(key, str) else None
    if i is None or not isinstance(position, int):
        return ()
    terms = table.callbacks[i].terms
    if not 0 <= position < len(terms) or terms[position].type != event.type:
        return ()
    return ((i, (position,)),)


def match(table: Table, state: MatchState, event: Event, *, dry_run: bool = False) -> list[Firing]:
    """The callback instances this event starts, in table order then ascending owner.

    Observes the event into the registry and updates latches, unless ``dry_run``: then the
    event's job fields are only overlaid for resolving contexts, and nothing changes.
    """
    if not dry_run:
        state.latches.adopt(table.live_keys)
        state.registry.observe(event)
    resolver = _Resolver(state.registry, event)
    if event.type in TIME_TYPES:
        candidates = _clock_candidates(table, event)
    else:
        extra = _event_extra_key(event)
        candidates = table.lookup(event.name, event.type, extra, event.job_id, resolver.label)
    firings: list[Firing] = []
    for i, positions in candidates:
        touched = _touched(table.folded[i], positions, resolver)
        firings.extend(_fire(table.callbacks[i], table.state_keys[i], touched, state.latches,
                             dry_run))  # fmt: skip
    return firings


def _event_extra_key(event: Event) -> str | None:
    """The event's subjob id, work name or host as terms are indexed: folded, once."""
    if event.type == "subjob":
        return None if event.subid is None else str(event.subid)
    if event.type == "work":
        return None if event.work is None else event.work.casefold()
    if event.type == "host":
        return None if event.host is None else event.host.casefold()
    return None


def owner_job(state: MatchState, event: Event, owner: int | None) -> dict[str, Any]:
    """The job object a run gets as stdin ``job``: the owning job as the registry knows it."""
    if owner is None:
        return {}
    job = state.registry.get(owner)
    if job is not None:
        return job
    if owner == event.job_id:
        return {**dict(event.job), "id": owner}
    return {"id": owner}
