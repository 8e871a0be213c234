"""One started callback process as the runner holds it: its handles, its stop, its verdict."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from supervisord.core.model import Settings
from supervisord.core.runtypes import Action, JobInfo, RunRequest, RunResult, log_path
from supervisord.run import process
from supervisord.run.channel import Channel, local_jobinfo
from supervisord.run.output import LogWriter, OutputSink, PipeDrain, header_line
from supervisord.run.start import Started

log = logging.getLogger(__name__)


@dataclass(slots=True, eq=False)
class Child:
    """The daemon's handles on one running callback process."""

    pid: int
    exited: asyncio.Future[process.Status]
    drain: PipeDrain
    channel: Channel | None  # None: a run that cannot use qb has no fd 3
    context: str  # "seq=17 job=1234 run=12 callback=x.py pid=4242", for log lines
    stop_reason: str | None = None
    stopper: asyncio.Task[None] | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    async def actions(self) -> tuple[Action, ...]:
        """What the (exited) callback asked for on its qb channel; the channel closed."""
        return () if self.channel is None else await self.channel.aclose()


def attach(
    req: RunRequest,
    settings: Settings,
    started: float,
    spawned: Started,
    logs: LogWriter,
    jobinfo: JobInfo | None,
    readers: process.Poller,
) -> Child:
    """The daemon's handles on a started child: output drain, qb channel, exit watch."""
    loop = asyncio.get_running_loop()
    pid, exited, read_end, ours, hello = (
        spawned.pid,
        spawned.exited,
        spawned.output,
        spawned.channel,
        spawned.hello,
    )
    context = (
        f"seq={req.seq} job={req.owner} run={req.run_id} callback={req.callback.file} pid={pid}"
    )
    log.debug("spawned %s", context)
    path = log_path(settings.logpath, req.owner)
    sink = OutputSink(path, lambda: header_line(req, started), settings.output_limit, logs)
    drain: PipeDrain | None = None
    channel: Channel | None = None
    try:
        drain = PipeDrain(loop, read_end, sink, readers)
        if ours is not None:
            answer = jobinfo or local_jobinfo((req.job_doc, req.event_doc.get("job") or {}))
            channel = Channel(loop, ours, hello, answer, context, readers)
        exited = exited or process.watch(loop, pid, readers)
        return Child(pid, exited, drain, channel, context)
    except BaseException:  # out of fds, most likely: leave nothing behind
        process.kill_group(pid, signal.SIGKILL)
        if exited is None:
            os.waitpid(pid, 0)  # SIGKILLed and not yet watched: returns at once
        if drain is None:
            os.close(read_end)
        else:
            drain.close()
        if channel is not None:
            channel.abandon()
        elif ours is not None:
            ours.close()
        raise


def stop(child: Child, reason: str, grace: float) -> None:
    """Start the stop policy on a child still running (timeout, shutdown)."""
    if child.stopper is not None or child.exited.done():
        return
    child.stop_reason = reason
    if reason == "timeout":
        log.warning("timed out pid=%d", child.pid)
    else:
        log.warning("stopping pid=%d reason=%s", child.pid, reason)
    child.stopper = asyncio.get_running_loop().create_task(
        process.stop_group(child.pid, grace, child.exited)
    )


def once(fn: Callable[[], None]) -> Callable[[], None]:
    called = False

    def call_once() -> None:
        nonlocal called
        if not called:
            called = True
            fn()

    return call_once


def judge(status: process.Status, stop_reason: str | None, timeout: float) -> tuple[str, str]:
    if stop_reason == "timeout":
        return "timeout", f"timed out after {timeout:g} s"
    if stop_reason is not None:
        return "timeout", f"stopped at {stop_reason}"
    if status.exit_code == 0:
        return "ok", str(status)
    return "failed", str(status)


def failed_start(req: RunRequest, started: float, why: str) -> RunResult:
    log.warning(
        "could not start seq=%d job=%s run=%d callback=%s reason=%s",
        req.seq, req.owner, req.run_id, req.callback.file, why,
    )  # fmt: skip
    return RunResult(
        started, time.time(), None, None, "error", f"could not start: {why}", False, None, (), None
    )
