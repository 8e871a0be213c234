"""The daemon's side of a fleet (SPEC §8): the heartbeat timer, the NOTIFY listener, and the
runs' actions of every member, read from the journal for this member's subscribers.

Claims, leases and catching up are the sequencer's (journal/fleet.py); here the loop asks
for a heartbeat every HEARTBEAT seconds (which also claims, so a missed notice costs at
most that long) and a thread listens for "runs are waiting" and "actions stored" notices.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from supervisord.core.model import Settings
from supervisord.journal import reads
from supervisord.journal.backend import is_shared
from supervisord.journal.fleet import HEARTBEAT, Heartbeat
from supervisord.journal.sequencer import Sequencer
from supervisord.run.scheduler import Scheduler

log = logging.getLogger(__name__)

Query = Callable[[Callable[[Any, Any], Any]], Awaitable[Any]]
Publish = Callable[[list[dict[str, Any]]], None]


class Member:
    """Keeps this daemon's lease, hears about new runs, and feeds its subscribers every
    member's actions; nothing of this on a SQLite journal."""

    def __init__(
        self,
        settings: Settings,
        sequencer: Sequencer,
        scheduler: Scheduler,
        query: Query,
        publish: Publish,
    ) -> None:
        self._settings = settings
        self._sequencer = sequencer
        self._scheduler = scheduler
        self._query = query
        self._publish = publish
        self._timer: asyncio.TimerHandle | None = None
        self._listener: object | None = None
        self.interval = min(HEARTBEAT, settings.lease / 4)
        self._mark: int | None = None  # the newest action id already published
        self._reading: asyncio.Future[None] | None = None
        self._again = False

    async def start(self) -> None:
        if not is_shared(self._settings):
            return
        from supervisord.journal.pg import ACTIONS, CHANNEL
        from supervisord.journal.pglisten import Listener

        try:
            self._mark = await self._query(lambda db, _state: reads.last_action_id(db))
        except Exception:  # the database is away: the feed starts when it is back
            self._mark = None
        loop = asyncio.get_running_loop()

        def actions_stored() -> None:  # on the listener's thread
            loop.call_soon_threadsafe(self._actions_stored)

        channels: dict[str, Callable[[], None]] = {ACTIONS: actions_stored}
        if self._settings.role != "intake":
            channels[CHANNEL] = self._sequencer.wake
        listener = Listener(self._settings.journal, channels)
        listener.start()
        self._listener = listener
        self._beat()

    def _beat(self) -> None:
        self._sequencer.submit(Heartbeat(self._scheduler.running))
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.interval, self._beat)

    def _actions_stored(self) -> None:
        """A member stored actions: read the new ones, in id order, and publish them."""
        if self._reading is not None:
            self._again = True  # one read at a time; one more after it
            return
        self._reading = asyncio.ensure_future(self._read_actions())

    def _newer_actions(self, db: Any, _state: Any) -> list[dict[str, Any]]:
        if self._mark is None:  # started while the database was away: from now on
            self._mark = reads.last_action_id(db)
            return []
        return reads.actions_since_id(db, self._mark)

    async def _read_actions(self) -> None:
        try:
            while True:
                self._again = False
                lines = await self._query(self._newer_actions)
                if lines:
                    self._mark = max(int(line["id"]) for line in lines)
                    self._publish(lines)
                if not self._again:
                    return
        except Exception as exc:  # the journal is away: the next notice reads again
            log.warning("cannot read the fleet's actions error=%s", exc)
        finally:
            self._reading = None

    def stop(self) -> None:
        """Before the sequencer stops: no more heartbeats, no more claims."""
        self._sequencer.claiming = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        listener = self._listener
        if listener is not None:
            from supervisord.journal.pglisten import Listener

            assert isinstance(listener, Listener)
            listener.stop()
            self._listener = None
