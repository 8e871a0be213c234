"""The daemon's side of a fleet (SPEC §8): the heartbeat timer and the NOTIFY listener.

Claims, leases and catching up are the sequencer's (journal/fleet.py); here the loop asks
for a heartbeat every HEARTBEAT seconds (which also claims, so a missed notice costs at
most that long) and a thread listens for "runs are waiting" notices.
"""

from __future__ import annotations

import asyncio
import logging

from supervisord.core.model import Settings
from supervisord.journal.backend import is_shared
from supervisord.journal.fleet import HEARTBEAT, Heartbeat
from supervisord.journal.sequencer import Sequencer
from supervisord.run.scheduler import Scheduler

log = logging.getLogger(__name__)


class Member:
    """Keeps this daemon's lease and hears about new runs; nothing on a SQLite journal."""

    def __init__(self, settings: Settings, sequencer: Sequencer, scheduler: Scheduler) -> None:
        self._settings = settings
        self._sequencer = sequencer
        self._scheduler = scheduler
        self._timer: asyncio.TimerHandle | None = None
        self._listener: object | None = None
        self.interval = min(HEARTBEAT, settings.lease / 4)

    def start(self) -> None:
        if not is_shared(self._settings):
            return
        if self._settings.role != "intake":
            from supervisord.journal.pglisten import Listener

            listener = Listener(self._settings.journal, self._sequencer.wake)
            listener.start()
            self._listener = listener
        self._beat()

    def _beat(self) -> None:
        self._sequencer.submit(Heartbeat(self._scheduler.running))
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.interval, self._beat)

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
