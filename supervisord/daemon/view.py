"""What the operations read of the daemon that owns them, as a Protocol: handed in, so that
the modules of the operations do not import the one that builds them (``service``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from supervisord.core.matching import MatchState, Table
    from supervisord.core.model import Settings
    from supervisord.daemon.server import Connection, Reply
    from supervisord.journal.sequencer import Sequencer
    from supervisord.run.runner import Runner
    from supervisord.run.scheduler import Scheduler


class Daemon(Protocol):
    """What the operations read of the daemon that owns them (``service.Daemon``), handed in
    so that this module does not import the one that builds it."""

    qbconf: str
    settings: Settings
    table: Table
    version: str
    started_at: float
    stats: dict[str, Any]
    subscribers: dict[Connection, list[Reply] | None]
    tails: set[Connection]
    runner: Runner
    scheduler: Scheduler
    sequencer: Sequencer | None

    async def query(self, fn: Callable[[Any, MatchState], Any]) -> Any: ...
    async def reload(self) -> Reply: ...
    def forget(self, conn: Connection) -> None: ...
