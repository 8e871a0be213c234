"""The life of one run in the daemon: recorded when it starts and ends, logged, published."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

from supervisord.core.matching import MatchState
from supervisord.core.model import Settings
from supervisord.core.runtypes import RunRequest
from supervisord.daemon.ops import Ops
from supervisord.daemon.policies import Policies
from supervisord.daemon.server import Connection
from supervisord.journal.batch import Finished, Hold, Started
from supervisord.journal.sequencer import Sequencer
from supervisord.run.runner import Runner

log = logging.getLogger(__name__)


class Runs:
    """`execute` (the scheduler's way to run a request) and `jobinfo` (the runner's way to
    look a job up): a part of `service.Daemon`, which holds the state named here."""

    sequencer: Sequencer | None
    runner: Runner
    ops: Ops
    tails: set[Connection]
    stats: dict[str, Any]
    policies: Policies
    settings: Settings

    async def query(self, fn: Callable[[Any, MatchState], Any]) -> Any:
        raise NotImplementedError

    async def execute(self, req: RunRequest) -> None:
        assert self.sequencer is not None
        sequencer = self.sequencer
        breaker = sequencer.open_breakers.get(req.callback.file)
        if breaker is not None and breaker.get("state") == "open":
            # Queued before its breaker opened: back to the journal, held (SPEC §7.4).
            sequencer.submit(Hold(req))
            return
        policy = self.policies.of(req.callback)
        if policy.timeout is not None:  # policy.yaml overrides supervisor_callback_timeout
            req = dataclasses.replace(req, timeout=policy.timeout)
        started = time.time()

        def on_start() -> None:
            # Recorded once the process exists, not while the run waits for a spawn
            # thread: a start record counts one attempt against the give-up policy.
            sequencer.submit(Started(req.run_id, started))
            if self.tails:  # the line is built only for someone to read it
                self.ops.publish_tail({"op": "run", "state": "spawned", **self.ops.run_fields(req)})

        result = await self.runner.run(req, on_start)
        level = logging.INFO if result.outcome == "ok" else logging.WARNING
        word = "timed out" if result.outcome == "timeout" else "exited"
        if result.outcome == "timeout":
            self.stats["timeouts"] += 1
        log.log(
            level,
            "%s seq=%d job=%s callback=%s run_id=%d pid=%s outcome=%s status=%r duration=%.3fs",
            word, req.seq, req.owner, req.callback.file, req.run_id, result.pid, result.outcome,
            result.description, result.ended - result.started,
        )  # fmt: skip
        self.ops.record_duration(req.callback.file, result.ended - result.started, result.outcome)
        self.sequencer.submit(Finished(req, result))
        if result.actions and self.settings.journal == "sqlite":  # a fleet's: from the journal
            self.ops.publish_actions(req, result)
        if self.tails:
            self.ops.publish_tail(
                {"op": "run", "state": "exited", **self.ops.run_fields(req),
                 "outcome": result.outcome, "description": result.description, "log": result.log}
            )  # fmt: skip

    async def jobinfo(self, by: str, value: Any) -> list[dict[str, Any]]:
        def lookup(_db: Any, state: MatchState) -> list[dict[str, Any]]:
            registry = state.registry
            if by == "-pgrp":
                return registry.by_pgrp(int(value))
            job = registry.get(int(value))
            return [] if job is None else [job]

        result: list[dict[str, Any]] = await self.query(lookup)
        return result
