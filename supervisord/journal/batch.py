"""What flows into the sequencer thread, and what one of its commits carries back."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from supervisord.core.matching import MatchState
from supervisord.core.model import Event
from supervisord.core.runtypes import RunRequest, RunResult
from supervisord.journal.backend import Db

Reply = dict[str, Any]


def refusal(reason: str) -> Reply:
    """The reply to an event the journal could not store: nothing is acknowledged."""
    message = f"the journal cannot be written: {reason}"
    return {"ok": False, "error": {"code": "unavailable", "message": message}}


@dataclass(slots=True)
class Intake:
    """Validated events from one read of one connection; `done` gets one reply each."""

    events: list[Event]
    done: Callable[[list[Reply]], None]


@dataclass(slots=True)
class Query:
    """Work that reads or changes sequencer state, run in order with the writes."""

    fn: Callable[[Db, MatchState], Any]
    future: asyncio.Future[Any]


@dataclass(slots=True)
class Started:
    run_id: int
    at: float


@dataclass(slots=True)
class Finished:
    req: RunRequest
    result: RunResult


@dataclass(slots=True)
class Tick:
    """Fire the time triggers now due, and start the retries and held runs now due."""


@dataclass(slots=True)
class Replay:
    """Run stored runs' callbacks again (SPEC §7.3); ``future`` gets the new run ids."""

    selector: dict[str, Any]
    future: asyncio.Future[Any]


@dataclass(slots=True)
class Resume:
    """Close a callback's breaker now; ``future`` gets the state it had."""

    callback: str
    future: asyncio.Future[Any]


@dataclass(slots=True)
class Hold:
    """A queued run whose breaker opened before it could start: back to the journal."""

    req: RunRequest


@dataclass(slots=True)
class Batch:
    """What one commit carries, and what the loop learns once it is durable."""

    events: list[tuple[int, str, float, str]] = field(default_factory=list)
    ids: dict[str, int] = field(default_factory=dict)  # event_id -> seq, stored or in this batch
    runs: list[tuple[Any, ...]] = field(default_factory=list)
    started: list[tuple[float, int]] = field(default_factory=list)
    finished: list[tuple[Any, ...]] = field(default_factory=list)
    actions: list[tuple[Any, ...]] = field(default_factory=list)
    new_requests: list[RunRequest] = field(default_factory=list)
    policy_runs: list[tuple[Any, ...]] = field(default_factory=list)  # held, retries, replays
    moves: list[tuple[str, int]] = field(default_factory=list)  # (state, run_id)
    breakers: dict[str, dict[str, Any]] | None = None  # not closed, when any changed
    results: list[tuple[asyncio.Future[Any], Any]] = field(default_factory=list)  # after commit
    touched: bool = False  # statements already run in this batch's transaction
    replies: list[tuple[Callable[[list[Reply]], None], list[Reply]]] = field(default_factory=list)
    queries: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = field(
        default_factory=list
    )

    def is_write(self) -> bool:
        return bool(
            self.events or self.runs or self.started or self.finished or self.policy_runs
            or self.moves or self.results or self.touched
        )  # fmt: skip
