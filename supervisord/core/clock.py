"""Time triggers: when globaltime, globalrepeat, time and repeat terms fall due (SPEC §2)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from supervisord.core.model import Term

# The term types the daemon's own clock fires; clients cannot send them.
TIME_TYPES: Final = frozenset({"time", "repeat", "globaltime", "globalrepeat"})
# A clock event this many seconds after its time was not fired by a timer (those are
# millisecond-accurate) but at start, for a time that passed while the daemon was down.
LATE_AFTER: Final = 5.0

ClockKey: TypeAlias = tuple[str, int]  # (callback state key, term position)


@dataclass(frozen=True, slots=True)
class Schedule:
    """The Qube times a time term falls due: ``start``, then every ``interval`` if set."""

    start: float
    interval: float | None

    def latest(self, q: float) -> float | None:
        """The last due time at or before Qube time ``q``."""
        if q < self.start:
            return None
        if self.interval is None:
            return self.start
        return self.start + math.floor((q - self.start) / self.interval) * self.interval

    def after(self, q: float) -> float | None:
        """The first due time strictly after Qube time ``q``."""
        if q < self.start:
            return self.start
        if self.interval is None:
            return None
        return self.start + (math.floor((q - self.start) / self.interval) + 1) * self.interval


def schedule_of(term: Term) -> Schedule | None:
    """The term's schedule; None for a term that is not a well-formed time term."""
    extra = term.extra or ""
    try:
        if term.type in ("time", "globaltime"):
            return Schedule(float(extra), None)
        if term.type in ("repeat", "globalrepeat"):
            start, _, interval = extra.partition("-")
            every = float(interval)
            return Schedule(float(start), every) if every > 0 else None
    except ValueError:
        return None
    return None


class ClockState:
    """Per (callback state key, term position): the Qube time it last fired, or was first armed.

    A term seen for the first time is armed at the current time, so times already past when
    a callback is first loaded do not fire; a stored value lets a time that passed while the
    daemon was down fire once at start, and keeps anything from firing twice.
    """

    def __init__(self) -> None:
        self._last: dict[ClockKey, float] = {}
        self._dirty: set[ClockKey] = set()
        self._live: frozenset[str] | None = None

    def __len__(self) -> int:
        return len(self._last)

    def get(self, key: ClockKey) -> float | None:
        return self._last.get(key)

    def set(self, key: ClockKey, q: float) -> None:
        if self._last.get(key) != q:
            self._last[key] = q
            self._dirty.add(key)

    def drop_callbacks(self, keys: Iterable[str]) -> None:
        """Forget the clock state of these callbacks (removed or changed at reload)."""
        gone = set(keys)
        for key in [k for k in self._last if k[0] in gone]:
            del self._last[key]
            self._dirty.add(key)

    def adopt(self, live: frozenset[str]) -> None:
        """Drop the state of callbacks not in the table (removed, moved or edited)."""
        if live is not self._live:
            self._live = live
            self.drop_callbacks({k for k, _ in self._last if k not in live})

    def is_dirty(self) -> bool:
        return bool(self._dirty)

    def take_dirty(self) -> dict[ClockKey, float | None]:
        """Entries changed since the last call (None = deleted); resets tracking."""
        rows = {k: self._last.get(k) for k in self._dirty}
        self._dirty.clear()
        return rows

    def load(self, rows: Iterable[tuple[Any, Any]]) -> None:
        for (key, position), q in rows:
            self._last[(str(key), int(position))] = float(q)
        self._dirty.clear()
