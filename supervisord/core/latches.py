"""Latches of compound triggers: which terms have held, per callback and owning job (SPEC §2)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, TypeAlias

LatchKey: TypeAlias = tuple[str, int | None]  # (callback key, owning job or None for global)
_NO_POSITIONS: Final[frozenset[int]] = frozenset()
# Distinct latched position sets remembered for sharing (a few per compound callback);
# past this the table starts afresh, and latches keep the sets they hold.
_MAX_SHARED_POSITIONS: Final = 4096


class Latches:
    """The latched term positions of compound triggers, per (callback key, owning job).

    Kept per callback key, owner -> positions, with equal position sets shared: a farm
    holds a latch per live job per compound callback, and a tuple key plus a set of its own
    for each cost about 300 bytes (bench/b_rss.py)."""

    def __init__(self) -> None:
        self._by_key: dict[str, dict[int | None, frozenset[int]]] = {}
        self._shared: dict[frozenset[int], frozenset[int]] = {}
        self._count = 0
        self._dirty: set[LatchKey] = set()
        self._live: frozenset[str] | None = None

    def __len__(self) -> int:
        return self._count

    def get(self, key: str, owner: int | None) -> frozenset[int]:
        owners = self._by_key.get(key)
        return _NO_POSITIONS if owners is None else owners.get(owner, _NO_POSITIONS)

    def set(self, key: str, owner: int | None, positions: frozenset[int]) -> None:
        """Replace the latched positions; an empty set clears the latch."""
        if positions == self.get(key, owner):
            return
        self._dirty.add((key, owner))
        owners = self._by_key.get(key)
        if positions:
            if owners is None:
                owners = self._by_key[key] = {}
            self._count += owner not in owners
            owners[owner] = self._share(positions)
            return
        assert owners is not None
        del owners[owner]
        self._count -= 1
        if not owners:
            del self._by_key[key]

    def _share(self, positions: frozenset[int]) -> frozenset[int]:
        shared = self._shared.get(positions)
        if shared is None:
            if len(self._shared) >= _MAX_SHARED_POSITIONS:
                self._shared.clear()
            shared = self._shared[positions] = positions
        return shared

    def drop_callbacks(self, keys: Iterable[str]) -> None:
        """Forget every latch of these callbacks (removed or changed at reload)."""
        for key in list(keys):
            for owner in list(self._by_key.get(key, ())):
                self.set(key, owner, frozenset())

    def adopt(self, live: frozenset[str]) -> None:
        """Drop the latches of callbacks not in the table (removed, moved or edited)."""
        if live is not self._live:
            self._live = live
            self.drop_callbacks([k for k in self._by_key if k not in live])

    def drop_owners(self, owners: Iterable[int]) -> None:
        """Forget every latch owned by these jobs (expired from the registry)."""
        gone = set(owners)
        for key, owners_of_key in list(self._by_key.items()):
            for owner in gone.intersection(owners_of_key):
                self.set(key, owner, frozenset())

    def take_dirty(self) -> dict[LatchKey, frozenset[int] | None]:
        """Latches changed since the last call (None = cleared); resets tracking."""
        rows = {k: self.get(*k) or None for k in self._dirty}
        self._dirty = set()  # a new set: clear() would keep the table of the largest batch
        return rows

    def load(self, rows: Iterable[tuple[LatchKey, Iterable[int]]]) -> None:
        for (key, owner), positions in rows:
            self.set(key, owner, frozenset(positions))
        self._dirty.clear()
