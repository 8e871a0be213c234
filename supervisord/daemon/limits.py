"""The open-file limit: raised at start, the connections it leaves room for, and warnings
about hitting either that are logged at most once a minute."""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from typing import Final

from supervisord.core.model import Settings

log = logging.getLogger(__name__)

# Descriptors a running callback holds in the daemon: its pidfd, the read end of its
# output pipe, the daemon's end of its fd 3 channel and its job log (a spawn briefly
# holds three more, and spawns are few at a time: the fixed part covers them).
PER_RUN: Final = 4
# The rest of the daemon: the journal's database files, the listening and notify sockets,
# the loop's own descriptors, the fork server's channel, log files, a spawn in progress.
FIXED: Final = 64
# Seconds between two warnings of one kind; what happened in between is counted.
WARN_INTERVAL: Final = 60.0


def raise_nofile() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (connections are cheap, running out
    is not); the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    log.debug("open-file limit soft=%d hard=%d", soft, hard)
    if soft == hard or hard == resource.RLIM_INFINITY:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:  # contained: the limit we have still works
        log.warning("cannot raise the open-file limit soft=%d hard=%d error=%s", soft, hard, exc)
        return soft
    log.debug("open-file limit raised soft=%d hard=%d", hard, hard)
    return hard


def soft_nofile() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def connection_limit(settings: Settings) -> int:
    """supervisor_event_max_connections, lowered to what the open-file limit leaves once
    every callback that may run at once has its descriptors (at least one connection)."""
    configured, nofile = settings.event_max_connections, soft_nofile()
    reserve = PER_RUN * settings.concurrency + FIXED
    limit = max(1, min(configured, nofile - reserve))
    if limit < configured:
        log.warning(
            "supervisor_event_max_connections lowered to fit the open-file limit "
            "max_connections=%d configured=%d nofile=%d reserved=%d",
            limit, configured, nofile, reserve,
        )  # fmt: skip
    return limit


class Throttled:
    """One kind of warning: logged when it first happens, then at most once a minute with
    how many times it happened since the line before (the template's last field)."""

    def __init__(self, logger: logging.Logger, template: str) -> None:
        self._log = logger
        self._template = template
        self._last = -WARN_INTERVAL
        self._count = 0
        self._args: tuple[object, ...] = ()
        self._timer: asyncio.TimerHandle | None = None

    def note(self, *args: object) -> None:
        """Once more, with the fields of this time (the line shows the latest)."""
        self._count += 1
        self._args = args
        wait = self._last + WARN_INTERVAL - time.monotonic()
        if wait <= 0:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(wait, self.flush)

    def flush(self) -> None:
        """Log what was counted since the last line, if anything."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._count:
            self._log.warning(self._template, *self._args, self._count)
            self._count = 0
            self._last = time.monotonic()
