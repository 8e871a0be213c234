"""Giving memory back to the system once a burst of work is over (measured by bench/b_rss.py).

After a burst, most of what the daemon allocated is free again but still held: in CPython's
free lists, in freed glibc chunks that malloc keeps for reuse, and in SQLite's page cache
(2 MiB a connection by default). The scheduler calls `IdleRelease` when it drains after
enough work; the release then runs on the sequencer thread, which owns the journal
connection, in order with its other work.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol

from supervisord.journal.backend import Db
from supervisord.journal.batch import Query

if TYPE_CHECKING:
    from supervisord.journal.sequencer import Sequencer

log = logging.getLogger(__name__)

# malloc_trim's argument: bytes to leave untrimmed at the top of the heap.
_TRIM_PAD: Final = 0


def _load_malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, which returns free pages from every arena (not only the top of
    the main heap, as free() does); None on a C library without it (musl)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_malloc_trim: Final = _load_malloc_trim()


def release(db: Db | None) -> None:
    """Give back what the last burst left held: SQLite's cached pages (read again from the
    OS page cache when next needed), CPython's free lists (a full collection clears them),
    then every free page malloc holds. A few milliseconds; call it when idle."""
    if isinstance(db, sqlite3.Connection):  # PostgreSQL keeps its cache in its server
        try:
            db.execute("PRAGMA shrink_memory")
        except sqlite3.Error as exc:  # only memory is at stake: note it and go on
            log.warning("cannot shrink the journal's cache error=%s", exc)
    gc.collect()
    if _malloc_trim is not None:
        _malloc_trim(_TRIM_PAD)


def _release_on_sequencer(db: Db, _state: object) -> None:
    release(db)


class Owner(Protocol):
    """What the release reads of the daemon that owns it (handed in, not imported)."""

    @property
    def sequencer(self) -> Sequencer | None: ...
    @property
    def closing(self) -> bool: ...


class IdleRelease:
    """`Scheduler.on_idle` for a daemon: queue `release` on its sequencer thread.

    Queued behind the run records the burst left, and ahead of anything asked after the
    drain (a `status` passes through the same queue), so what the next request sees of the
    daemon's memory is after the release."""

    def __init__(self, daemon: Owner) -> None:
        self._daemon = daemon

    def __call__(self) -> None:
        sequencer = self._daemon.sequencer
        if sequencer is None or self._daemon.closing:
            return
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        sequencer.submit(Query(_release_on_sequencer, future))
