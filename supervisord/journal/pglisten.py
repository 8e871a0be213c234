"""LISTEN for the fleet's notices on a connection of its own (SPEC §8).

A member that made runs pending, or released a lost member's, sends NOTIFY on CHANNEL in
the commit that did it; this thread turns each notice into a wake-up of the sequencer,
which claims what its free slots allow. An idle executor so starts a run within
milliseconds of the commit that made it, not on the next heartbeat (which also claims,
should a notice be missed while this connection was down). A commit that stored a run's
actions notifies ACTIONS: members with subscribers read them from the journal.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Final

from supervisord.journal.backend import redact
from supervisord.journal.pg import BACKOFF_FIRST, BACKOFF_MAX

log = logging.getLogger(__name__)

# Seconds one wait for notices lasts before the stop flag is looked at again.
POLL: Final = 0.5


class Listener:
    """A daemon thread calling a channel's callback for each notice on it (and each of
    them after every connect, for what came while nobody listened), reconnecting with
    backoff when the database goes away."""

    def __init__(self, dsn: str, channels: dict[str, Callable[[], None]]) -> None:
        self._dsn = dsn
        self._channels = channels
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="qb-listen", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _main(self) -> None:
        import psycopg

        delay = BACKOFF_FIRST
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._dsn, autocommit=True, connect_timeout=5) as conn:
                    for channel in self._channels:
                        conn.execute(f"LISTEN {channel}")
                    delay = BACKOFF_FIRST
                    for wake in self._channels.values():
                        wake()  # what came while nobody listened
                    while not self._stop.is_set():
                        for notice in conn.notifies(timeout=POLL):
                            self._channels.get(notice.channel, _ignore)()
            except psycopg.Error as exc:
                log.warning(
                    "cannot listen for runs dsn=%s error=%s retry_in=%.1fs",
                    redact(self._dsn), str(exc).strip().splitlines()[0] if str(exc) else exc,
                    delay,
                )  # fmt: skip
                self._stop.wait(delay)
                delay = min(delay * 2, BACKOFF_MAX)


def _ignore() -> None:
    """A notice on a channel nobody here asked for."""
