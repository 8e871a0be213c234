"""After a callback's process is reaped: its output taken, its group looked at, what is left
handed on (to Background, or to a drain that reads on without holding up the run)."""

from __future__ import annotations

import asyncio
import logging

from supervisord.core.model import Settings
from supervisord.run import process
from supervisord.run.background import Background
from supervisord.run.child import Child
from supervisord.run.output import PipeDrain

log = logging.getLogger(__name__)


class Endings:
    """The end of every run: release_now() in the common case (nothing left, no waiting),
    release() when processes of the callback's group live on."""

    def __init__(self, background: Background) -> None:
        self._background = background
        self._lingering: dict[PipeDrain, asyncio.TimerHandle] = {}  # see _linger()

    def release_now(self, child: Child, grace: float) -> int | None:
        """0 once what the callback printed is taken from its pipe and its group is empty
        (the check every run pays); None when processes of its group are left running."""
        drain = child.drain
        drain.read_available()  # the callback exited: what it wrote is in the pipe now
        if process.is_group_alive(child.pid):
            return None
        if not drain.eof.done():  # a member may have ended since the first look
            drain.read_available()
        if not drain.eof.done():
            self._linger(drain, grace, child.pid)
        return 0

    async def release(
        self, child: Child, readers: process.Readers, settings: Settings, stop: str | None
    ) -> int:
        """How many processes of the group are left running (handed to Background, which
        stops the group now if ``stop`` says why the run itself was stopped)."""
        left = self.release_now(child, settings.kill_grace)
        if left is not None:
            return left
        return await self._background.adopt(
            child.pid, child.drain, readers, grace=settings.kill_grace,
            timeout=settings.background_timeout, context=child.context, stop=stop,
        )  # fmt: skip

    def close(self) -> None:
        """Stop reading every pipe still lingering (the daemon stops)."""
        for drain in list(self._lingering):
            drain.close()  # its end-of-file callback cancels its timer

    def _linger(self, drain: PipeDrain, grace: float, pid: int) -> None:
        """Everything the group wrote is taken, but the pipe has another writer: most often
        a child another run is spawning, which holds copies of the daemon's fds until it
        execs (a few ms); else a process that escaped the group (setsid). The run does not
        wait for it: the drain reads on until end of file, or is cut off after the grace
        period."""

        def cut() -> None:
            self._lingering.pop(drain, None)
            if not drain.eof.done():
                log.warning("output still open after its group ended pid=%d (escaped process?)",
                            pid)  # fmt: skip
                drain.close()

        timer = asyncio.get_running_loop().call_later(grace, cut)
        self._lingering[drain] = timer
        drain.eof.add_done_callback(lambda _: self._lingering.pop(drain, timer).cancel())
