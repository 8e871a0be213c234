"""Matching events to callbacks: the callback table, owning jobs, and per-job latches (SPEC §2)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any, Final, TypeAlias

from supervisord.core.clock import TIME_TYPES, ClockState
from supervisord.core.latches import Latches
from supervisord.core.model import DONE_NAMES, And, Callback, Event, Expr, Firing, Term
from supervisord.core.registry import JobRegistry

# Candidates for one (event name, event type): callback index and the term positions.
_Candidates: TypeAlias = tuple[tuple[int, tuple[int, ...]], ...]
_NAMES_OF_TERM: Final = {"done": tuple(sorted(DONE_NAMES))}


class MatchState:
    """Everything matching remembers between events; persisted through the take_dirty calls."""

    def __init__(self, retention: float) -> None:
        self.registry = JobRegistry(retention)
        self.latches = Latches()
        self.clock = ClockState()

    def expire(self, now: float) -> list[int]:
        """Expire finished jobs from the registry, and drop the latches they owned."""
        gone = self.registry.expire(now)
        self.latches.drop_owners(gone)
        return gone


class Table:
    """The loaded callbacks, in start order, indexed by the (name, type) their terms watch."""

    def __init__(self, callbacks: Sequence[Callback]) -> None:
        self.callbacks: tuple[Callback, ...] = tuple(callbacks)
        self.by_key: dict[str, int] = {}
        self.state_keys: tuple[str, ...] = tuple(state_key(cb) for cb in self.callbacks)
        self.live_keys: frozenset[str] = frozenset(self.state_keys)
        index: dict[_IndexKey, list[tuple[int, tuple[int, ...]]]] = {}
        timed: list[tuple[Callback, str, int, Term]] = []
        for i, cb in enumerate(self.callbacks):
            if sum(1 for _ in _leaves(cb.trigger)) != len(cb.terms):
                raise ValueError(f"{cb.key}: terms do not match the trigger's terms")
            self.by_key.setdefault(cb.key, i)
            watched: dict[_IndexKey, list[int]] = {}
            for pos, term in enumerate(cb.terms):
                if term.type in TIME_TYPES:
                    timed.append((cb, self.state_keys[i], pos, term))
                    continue
                extra = _term_extra_key(term)
                for name in _NAMES_OF_TERM.get(term.name or "", (term.name or "",)):
                    watched.setdefault((name, term.type, extra), []).append(pos)
            for pair, positions in watched.items():
                index.setdefault(pair, []).append((i, tuple(positions)))
        self._index: dict[_IndexKey, _Candidates] = {k: tuple(v) for k, v in index.items()}
        # (callback, its state key, term position, term) of every time term, in table order.
        self.time_terms: tuple[tuple[Callback, str, int, Term], ...] = tuple(timed)

    def candidates(self, name: str, kind: str, extra: str | None = None) -> _Candidates:
        """(callback index, term positions) that may match an event of this name and type
        whose subjob id, work name or host is ``extra``, in table order. Terms naming another
        extra are never looked at, so they cost nothing (10,000 `complete-work-self-frameN`
        callbacks cost an event of one frame one lookup)."""
        anything = self._index.get((name, kind, None), ())
        named = self._index.get((name, kind, extra), ()) if extra is not None else ()
        if not named or not anything:
            return named or anything
        merged: dict[int, tuple[int, ...]] = dict(anything)
        for i, positions in named:
            merged[i] = tuple(sorted({*merged.get(i, ()), *positions}))
        return tuple(sorted(merged.items()))


_IndexKey = tuple[str, str, str | None]  # (event name, event type, extra or None = any)


def _term_extra_key(term: Term) -> str | None:
    """The extra a term is indexed under: None when it accepts any (None, `*`, job terms)."""
    if term.type not in ("subjob", "work", "host") or term.extra in (None, "*"):
        return None
    if term.type == "subjob" and term.extra is not None and term.extra.isdecimal():
        return str(int(term.extra))
    return term.extra


def _event_extra_key(event: Event) -> str | None:
    if event.type == "subjob":
        return None if event.subid is None else str(event.subid)
    if event.type == "work":
        return event.work
    if event.type == "host":
        return event.host
    return None


def state_key(cb: Callback) -> str:
    """The key of a callback's latches and clock state: its line and its trigger as written,
    so that a trigger edited in place (a reload, or a restart) starts from clean state."""
    return f"{cb.key}={cb.trigger_text}"


def _leaves(expr: Expr) -> Iterator[Term]:
    if isinstance(expr, Term):
        yield expr
        return
    for operand in expr.operands:
        yield from _leaves(operand)


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


def extra_matches(term: Term, event: Event) -> bool:
    """Whether the term's extra (subjob id, work name, host) accepts the event."""
    extra = term.extra
    if extra is None or extra == "*" or term.type == "job":
        return True
    if term.type == "subjob":
        return extra.isdecimal() and int(extra) == event.subid
    if term.type == "work":
        return extra == event.work
    if term.type == "host":
        return extra == event.host
    return False


class _Resolver:
    """Resolves term contexts to owning jobs for one event about job X (SPEC §2)."""

    def __init__(self, registry: JobRegistry, event: Event) -> None:
        self.registry = registry
        self.event = event
        self._subject: dict[str, Any] | None = None

    def subject(self) -> dict[str, Any]:
        """X as the registry knows it with this event's job fields over it (newest wins)."""
        if self._subject is None:
            x = self.event.job_id
            known = self.registry.get(x) if x is not None else None
            self._subject = {**(known or {}), **self.event.job}
        return self._subject

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
        subject = self.subject()
        if subject.get("label") != context:
            return []
        pgrp = subject.get("pgrp")
        if not isinstance(pgrp, int) or isinstance(pgrp, bool):
            pgrp = x  # a job without a pgrp leads its own process group, as in Qube
        return sorted({x, *self.registry.pgrp_ids(pgrp)})


def _touched(
    cb: Callback, positions: tuple[int, ...], resolver: _Resolver
) -> dict[int | None, set[int]]:
    """Owner -> the positions of ``cb`` that this event sets for that owner."""
    event = resolver.event
    if event.type in TIME_TYPES:  # a clock event names its term; its owner is its job
        return {event.job_id: set(positions)}
    touched: dict[int | None, set[int]] = {}
    for p in positions:
        term = cb.terms[p]
        if extra_matches(term, event):
            for owner in resolver.owners(term):
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


def _clock_candidates(table: Table, event: Event) -> _Candidates:
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
    if event.type in TIME_TYPES:
        candidates = _clock_candidates(table, event)
    else:
        candidates = table.candidates(event.name, event.type, _event_extra_key(event))
    if not candidates:
        return []
    resolver = _Resolver(state.registry, event)
    firings: list[Firing] = []
    for i, positions in candidates:
        cb, key = table.callbacks[i], table.state_keys[i]
        touched = _touched(cb, positions, resolver)
        firings.extend(_fire(cb, key, touched, state.latches, dry_run))
    return firings


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
