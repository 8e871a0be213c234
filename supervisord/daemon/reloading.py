"""Reloading the configuration into a running daemon: read beside, swap in if valid."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Callable

from supervisord.core.errors import ConfigErrors
from supervisord.core.matching import Table
from supervisord.core.model import Settings
from supervisord.daemon.acceptor import Acceptor
from supervisord.daemon.limits import connection_limit
from supervisord.daemon.listener import allowed_uids
from supervisord.daemon.load import Loaded, read_qbconf
from supervisord.daemon.policies import Policies, load_config
from supervisord.daemon.replies import Reply
from supervisord.daemon.systemd import Notifier
from supervisord.journal.batch import Tick
from supervisord.journal.sequencer import Sequencer
from supervisord.run.runner import Runner
from supervisord.run.scheduler import Scheduler

log = logging.getLogger(__name__)


class Reloading:
    """`reload` (SIGHUP and the `reload` request): a part of `service.Daemon`, which holds
    the state named here."""

    qbconf: str
    settings: Settings
    table: Table
    policies: Policies
    sequencer: Sequencer | None
    runner: Runner
    scheduler: Scheduler
    notifier: Notifier
    allowed: frozenset[int]
    acceptor: Acceptor | None
    status_line: Callable[[], str]
    _reload_lock: asyncio.Lock

    def apply_policies(self, policies: Policies) -> None:
        """The delivery policy in force for what has not started yet (SPEC §7)."""
        self.policies = policies
        if self.sequencer is not None:
            self.sequencer.book.policy_of = policies.of
        self.scheduler.set_policies(policies.of)

    async def reload(self) -> Reply:
        # One at a time: two overlapping reloads could otherwise finish in the wrong order
        # and leave the older reading of the files in force.
        async with self._reload_lock:
            return await self._reload()

    async def _reload(self) -> Reply:
        self.notifier.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            settings, loaded, policies = await asyncio.to_thread(load_all, self.qbconf)
        except ConfigErrors as exc:
            errors = [str(e) for e in exc.errors]
            log.error("reload failed errors=%d first=%r", len(errors), errors[0] if errors else "")
            self.notifier.notify("READY=1", f"STATUS=reload failed: {len(errors)} error(s)")
            message = f"configuration has {len(errors)} error(s); the running table is kept"
            return {
                "ok": False,
                "error": {"code": "invalid_config", "message": message},
                "errors": errors,
            }
        self._swap(settings, loaded, policies)
        self.notifier.notify("READY=1", f"STATUS={self.status_line()}")
        return {"ok": True, "callbacks": len(loaded.callbacks)}

    def _swap(self, settings: Settings, loaded: Loaded, policies: Policies) -> None:
        old = {cb.key: cb for cb in self.table.callbacks}
        new = {cb.key: cb for cb in loaded.callbacks}
        added = [new[k].file for k in new.keys() - old.keys()]
        removed = [old[k].file for k in old.keys() - new.keys()]
        changed = [new[k].file for k in new.keys() & old.keys() if new[k] != old[k]]
        if settings.event_socket != self.settings.event_socket:
            log.warning("supervisor_event_socket changed; it takes effect at the next start")
        self.table = Table(loaded.callbacks)
        assert self.sequencer is not None
        self.apply_policies(policies)  # to runs not yet started (SPEC §7.1); before the table,
        self.sequencer.table = self.table  # whose swap makes the next batch prune breakers
        self.settings = settings
        self.sequencer.settings = settings
        self.runner.update(settings)
        self.scheduler.concurrency = settings.concurrency
        self.scheduler.per_job_order = settings.per_job_order
        self.scheduler.queue_limit = settings.queue_limit
        self.allowed, _ = allowed_uids(settings)
        if self.acceptor is not None:
            self.acceptor.limit = connection_limit(settings)
        for warning in loaded.warnings:
            log.warning("%s", warning)
        log.info(
            "reloaded callbacks=%d added=%s changed=%s removed=%s",
            len(loaded.callbacks), added, changed, removed,
        )  # fmt: skip
        self.sequencer.submit(Tick())


def load_all(qbconf: str) -> tuple[Settings, Loaded, Policies]:
    settings = read_qbconf(qbconf, os.environ, sys.executable)
    return settings, *load_config(settings)
