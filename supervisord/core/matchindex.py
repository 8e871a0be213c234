"""The callback table and its index: which callbacks' terms an event can touch (SPEC §2)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Final, TypeAlias

from supervisord.core.clock import TIME_TYPES
from supervisord.core.model import DONE_NAMES, Callback, Expr, Term

# (callback index, term positions) that an event may touch, in table order.
Candidates: TypeAlias = tuple[tuple[int, tuple[int, ...]], ...]
# (event name, event type, folded extra or None = any extra)
_Slot: TypeAlias = tuple[str, str, str | None]
_NAMES_OF_TERM: Final = {"done": tuple(sorted(DONE_NAMES))}
_EXTRA_TYPES: Final = ("subjob", "work", "host")
_NONE: Final[Candidates] = ()


class Table:
    """The loaded callbacks, in start order, indexed by what their terms watch.

    Every term is filed under its event name, type and extra, and under its context: `self`
    and `parent` terms in the general index, a job-id context under that id, a label under
    the label. An event about job X then looks up only the general terms, X's own and those
    of X's label, so callbacks on other jobs, labels or extras cost it nothing (10,000
    `complete-job-N` callbacks cost an event one lookup, as 10 do). Labels, work names and
    hosts are case-folded here, once, and the event's keys once per event (SPEC §2)."""

    def __init__(self, callbacks: Sequence[Callback]) -> None:
        self.callbacks: tuple[Callback, ...] = tuple(callbacks)
        self.by_key: dict[str, int] = {}
        self.state_keys: tuple[str, ...] = tuple(state_key(cb) for cb in self.callbacks)
        self.live_keys: frozenset[str] = frozenset(self.state_keys)
        # Per callback, its terms with label contexts and extras folded: what matching reads.
        self.folded: tuple[tuple[Term, ...], ...] = tuple(
            tuple(map(fold_term, cb.terms)) for cb in self.callbacks
        )
        timed: list[tuple[Callback, str, int, Term]] = []
        self._any = _Index()
        self._general = _Index()
        self._by_job = _Index()
        self._by_label = _Index()
        # Slots with any label term: only their events need the subject's label.
        self._labelled: set[_Slot] = set()
        for i, cb in enumerate(self.callbacks):
            if sum(1 for _ in _leaves(cb.trigger)) != len(cb.terms):
                raise ValueError(f"{cb.key}: terms do not match the trigger's terms")
            self.by_key.setdefault(cb.key, i)
            for pos, term in enumerate(self.folded[i]):
                if term.type in TIME_TYPES:
                    timed.append((cb, self.state_keys[i], pos, cb.terms[pos]))
                else:
                    self._file(i, pos, term)
        self._any.freeze()
        self._general.freeze()
        self._by_job.freeze()
        self._by_label.freeze()
        # (callback, its state key, term position, term) of every time term, in table order.
        self.time_terms: tuple[tuple[Callback, str, int, Term], ...] = tuple(timed)

    def _file(self, i: int, pos: int, term: Term) -> None:
        context = term.context or ""
        for name in _NAMES_OF_TERM.get(term.name or "", (term.name or "",)):
            slot = (name, term.type, _term_extra_key(term))
            self._any.add(slot, i, pos)
            if context in ("self", "parent"):
                self._general.add(slot, i, pos)
            elif context.isdecimal():
                self._by_job.add((*slot, int(context)), i, pos)
            else:
                self._by_label.add((*slot, context), i, pos)
                self._labelled.add(slot)

    def candidates(self, name: str, kind: str, extra: str | None = None) -> Candidates:
        """(callback index, term positions) that may match an event of this name and type
        whose subjob id, work name or host is ``extra``, whatever job it is about, in table
        order. Terms naming another extra are never looked at."""
        anything = self._any.entries.get((name, kind, None), _NONE)
        if extra is None:
            return anything  # the intake's per-event question: kept to one lookup
        return _merge([anything, self._any.get((name, kind, extra.casefold()))])

    def lookup(
        self, name: str, kind: str, extra: str | None, job_id: int | None,
        label: Callable[[], str | None],
    ) -> Candidates:  # fmt: skip
        """The candidates for an event about job ``job_id`` with folded ``extra``; ``label``
        gives the job's folded label, asked only when some term watches a label."""
        slots = (
            ((name, kind, None),) if extra is None else ((name, kind, None), (name, kind, extra))
        )
        general, by_job, by_label = (
            self._general.entries,
            self._by_job.entries,
            self._by_label.entries,
        )
        found: list[Candidates] = []
        for slot in slots:
            if (hit := general.get(slot)) is not None:
                found.append(hit)
            if job_id is not None and (hit := by_job.get((*slot, job_id))) is not None:
                found.append(hit)
            if slot in self._labelled and (folded := label()) is not None:
                found.append(by_label.get((*slot, folded), _NONE))
        return found[0] if len(found) == 1 else _merge(found)  # _merge drops empties


class _Index:
    """Key -> candidates, built by ``add`` in table order then frozen into tuples."""

    def __init__(self) -> None:
        self._building: dict[tuple[object, ...], dict[int, list[int]]] = {}
        self.entries: dict[tuple[object, ...], Candidates] = {}

    def add(self, key: tuple[object, ...], i: int, pos: int) -> None:
        self._building.setdefault(key, {}).setdefault(i, []).append(pos)

    def freeze(self) -> None:
        self.entries = {
            key: tuple((i, tuple(sorted(set(positions)))) for i, positions in found.items())
            for key, found in self._building.items()
        }
        self._building = {}

    def get(self, key: tuple[object, ...]) -> Candidates:
        return self.entries.get(key, _NONE)


def _merge(found: list[Candidates]) -> Candidates:
    """One table-ordered list from several; the common case, one non-empty, is returned."""
    present = [c for c in found if c]
    if len(present) <= 1:
        return present[0] if present else _NONE
    merged: dict[int, set[int]] = {}
    for candidates in present:
        for i, positions in candidates:
            merged.setdefault(i, set()).update(positions)
    return tuple((i, tuple(sorted(merged[i]))) for i in sorted(merged))


def fold_term(term: Term) -> Term:
    """The term as matching compares it: label context and extra case-folded, a subjob id
    in its integer form, a job-id context as the integer's decimal text."""
    context = term.context
    if context is not None and context not in ("self", "parent"):
        context = str(int(context)) if context.isdecimal() else context.casefold()
    return Term(term.name, term.type, context, _term_extra_key(term) or term.extra)


def _term_extra_key(term: Term) -> str | None:
    """The extra a term is indexed under: None when it accepts any (None, `*`, job terms)."""
    if term.type not in _EXTRA_TYPES or term.extra in (None, "*"):
        return None
    if term.type == "subjob" and term.extra is not None and term.extra.isdecimal():
        return str(int(term.extra))
    return None if term.extra is None else term.extra.casefold()


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
