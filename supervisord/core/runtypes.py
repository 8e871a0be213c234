"""The values a callback run takes and gives: request, actions, result (pure)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from supervisord.core.model import Callback

# The verbs a callback may ask for (SPEC §3.2 subscribe); the daemon applies none.
ACTION_VERBS: Final = frozenset(
    {
        "unblock",
        "block",
        "fail",
        "kill",
        "retry",
        "requeue",
        "complete",
        "remove",
        "migrate",
        "preempt",
        "interrupt",
        "suspend",
        "resume",
    }
)
OUTCOMES: Final = ("ok", "failed", "timeout", "error")
# A Qube id string: a job "1234", an instance "1234.2", a work item "1234:frame5".
_TARGET_RE: Final = re.compile(r"\d+(?:\.\d+|:.+)?", re.DOTALL)


def is_target(text: str) -> bool:
    """True for a Qube id string: ``1234``, ``1234.2`` or ``1234:work``."""
    return _TARGET_RE.fullmatch(text) is not None and "\n" not in text


@dataclass(frozen=True, slots=True)
class Action:
    """One action a callback asked for; applied by subscribe clients, not here."""

    action: str
    target: str

    def __post_init__(self) -> None:
        if self.action not in ACTION_VERBS:
            raise ValueError(f"unknown action {self.action!r}")
        if not is_target(self.target):
            raise ValueError(f"bad target {self.target!r}: expected 1234, 1234.2 or 1234:work")


@dataclass(frozen=True, slots=True)
class RunRequest:
    """One callback instance to run for one event."""

    run_id: int
    seq: int
    event_id: str
    callback: Callback
    owner: int | None  # owning job id -> QBJOBID; None for global time triggers
    event_doc: Mapping[str, Any]  # the event as received plus seq, event_id, time
    job_doc: Mapping[str, Any]  # the owning job
    redelivered: bool = False
    attempt: int = 1  # QB_ATTEMPT: 1, more on a retry (SPEC §7.2)
    first_run_id: int | None = None  # the first attempt's run_id on a retry; None on it
    replayed: bool = False  # QB_REPLAYED: a run made by `replay` (SPEC §7.3)
    timeout: float | None = None  # policy.yaml `timeout`; None: supervisor_callback_timeout


@dataclass(frozen=True, slots=True)
class RunResult:
    """How one run went, in the words of SPEC §3.2."""

    started: float
    ended: float
    exit_code: int | None
    signal: int | None
    outcome: str  # ok | failed | timeout | error
    description: str  # "exit status 3", "killed by SIGKILL", "timed out after 600 s", ...
    truncated: bool
    log: str | None
    actions: tuple[Action, ...]
    pid: int | None
    # Processes of the callback's group still running when it exited (SPEC §4): they go
    # on, watched, and the history row says so.
    left_running: int = 0

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {self.outcome!r}")


# ("-id", 12) / ("-pgrp", 12) -> job dicts, from the daemon's job registry.
JobInfo: TypeAlias = Callable[[str, Any], Awaitable[list[dict[str, Any]]]]


def log_path(logpath: str, owner: int | None) -> str:
    """Qube's layout: ``<logpath>/job/<G>/<id>/<id>.cb``, G = id rounded down to 1000."""
    if owner is None:
        return f"{logpath}/global.cb"
    return f"{logpath}/job/{owner // 1000 * 1000}/{owner}/{owner}.cb"


def event_work(event_doc: Mapping[str, Any]) -> str | None:
    """The work name of an event, if it has one (an integer is its decimal string)."""
    work = event_doc.get("work")
    return None if work is None or work == "" else str(work)


def event_subid(event_doc: Mapping[str, Any]) -> int | None:
    """The subjob id of an event, if it has one."""
    subid = event_doc.get("subid")
    return subid if isinstance(subid, int) and not isinstance(subid, bool) else None


def event_job_id(event_doc: Mapping[str, Any]) -> int | None:
    """The id of the job the event is about."""
    job = event_doc.get("job")
    job_id = job.get("id") if isinstance(job, Mapping) else None
    return job_id if isinstance(job_id, int) and not isinstance(job_id, bool) else None
