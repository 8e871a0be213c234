"""Runs one callback per request as a child process (or .qcb in-process) and reports how it went."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from supervisord.core.model import Settings
from supervisord.core.runtypes import (
    Action,
    JobInfo,
    RunRequest,
    RunResult,
    log_path,
)
from supervisord.run import cspawn, process
from supervisord.run.channel import Channel, local_jobinfo
from supervisord.run.cspawn import Spawner
from supervisord.run.env import RUNTIME_DIR
from supervisord.run.forkserver import ForkServerLost, SpawnRefused
from supervisord.run.output import LogWriter, OutputSink, PipeDrain, header_line
from supervisord.run.qcb import run_qcb
from supervisord.run.start import ForkServers, Started, Starter

__all__ = ["RUNTIME_DIR", "Action", "JobInfo", "RunRequest", "RunResult", "Runner"]

log = logging.getLogger(__name__)

# Tries of a run whose fork server dies under it. The last one takes the direct path when
# nothing needs the server, so a server that keeps dying costs speed, never a run.
_ATTEMPTS: Final = 3


@dataclass(slots=True, eq=False)
class _Child:
    """The daemon's handles on one running callback process."""

    pid: int
    exited: asyncio.Future[process.Status]
    drain: PipeDrain
    channel: Channel
    stop_reason: str | None = None
    stopper: asyncio.Task[None] | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)


class Runner:
    """Starts callback runs; owns every child and every cleanup task until aclose().

    A child starts one of three ways: ``spawn`` (posix_spawn of the interpreter, the fast
    path when no user switch or limit applies), ``code`` (a Python callback forked from
    the warm fork server, python_mode = forkserver) or ``exec`` (forked by the fork
    server, which switches user and sets limits, then execs the interpreter). The fork
    server is started lazily, by the first run that needs it, and stopped in aclose().
    """

    def __init__(self, settings: Settings, *, jobinfo: JobInfo | None = None) -> None:
        self._environ = dict(os.environ)
        self._jobinfo = jobinfo
        self._active: set[_Child] = set()
        self._cleanups: set[asyncio.Task[None]] = set()
        self._closing = False
        self._forks = ForkServers()
        self._spawner = Spawner() if cspawn.available() else None
        self._logs = LogWriter()  # its thread starts with the first run that prints
        self._poller: process.Poller | None = None
        self.update(settings)

    def update(self, settings: Settings) -> None:
        """New runs use ``settings``; runs in flight keep the ones they started with."""
        self._settings = settings
        self._starter = Starter(settings, self._environ, self._forks, self._spawner)

    async def warm(self) -> None:
        """Pay the fork server's start-up before the first event needs it (when Python
        callbacks start from it); a failure here only means the first run starts it."""
        if self._settings.python_mode == "forkserver" and self._starter.problem is None:
            await self._starter.warm()

    def log_path(self, owner: int | None) -> str:
        return log_path(self._settings.logpath, owner)

    def forkserver_state(self) -> dict[str, Any]:
        """For ``status``: mode, the server's pid (None when not running), restarts, runs."""
        return {"mode": self._settings.python_mode, **self._forks.state()}

    async def run(self, req: RunRequest, on_start: Callable[[], None] | None = None) -> RunResult:
        """Run one callback to its end. Never raises for anything the callback does.
        ``on_start`` is called once its process exists (a .qcb run: at once); a run
        that waits for a spawn thread has not started."""
        starter = self._starter
        settings = starter.settings
        started = time.time()
        problem = self._refuse(req, settings)
        if problem is not None:
            return _failed_start(req, started, problem)
        if req.callback.language == "qube":
            if on_start is not None:
                on_start()
            return await run_qcb(req, settings, self._logs)
        argv = starter.argv(req)
        if isinstance(argv, str):
            return _failed_start(req, started, argv)
        if on_start is not None:  # once, however many tries the fork server needs
            on_start = _once(on_start)
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                return await self._run_once(
                    req, argv, starter, started, attempt == _ATTEMPTS, on_start
                )
            except ForkServerLost as exc:
                log.warning(
                    "retrying seq=%d job=%s run=%d callback=%s attempt=%d reason=%s",
                    req.seq, req.owner, req.run_id, req.callback.file, attempt, exc,
                )  # fmt: skip
            if self._closing:
                break
        return _failed_start(req, started, "the fork server keeps dying")

    async def aclose(self) -> None:
        """Stop every child still running with the kill policy; await all cleanup."""
        self._closing = True
        for child in list(self._active):
            self._stop(child, "shutdown", self._settings.kill_grace)
        for child in list(self._active):
            await child.finished.wait()
        while self._cleanups:
            await asyncio.gather(*self._cleanups, return_exceptions=True)
        await self._forks.aclose(self._settings.kill_grace)
        await asyncio.to_thread(self._logs.close)  # the last lines written, thread ended
        if self._spawner is not None:
            self._spawner.close()
        if self._poller is not None:
            self._poller.close()
            self._poller = None

    def _refuse(self, req: RunRequest, settings: Settings) -> str | None:
        cb = req.callback
        if self._closing:
            return "the runner is shutting down"
        if cb.language not in settings.language_flags:
            return f"language {cb.language} is disabled in supervisor_language_flags"
        if cb.language == "qube":
            return None
        return self._starter.problem  # an unreadable file is found by the start

    async def _run_once(
        self,
        req: RunRequest,
        argv: list[str],
        starter: Starter,
        started: float,
        last: bool,
        on_start: Callable[[], None] | None,
    ) -> RunResult:
        settings = starter.settings
        try:
            spawned = await starter.start(req, argv, last)
        except SpawnRefused as exc:
            return _failed_start(req, started, str(exc))
        except (OSError, ValueError) as exc:
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            return _failed_start(req, started, f"{argv[0]}: {detail}")
        child = self._attach(req, settings, started, spawned)
        self._active.add(child)
        if on_start is not None:
            on_start()
        try:
            return await self._await_child(req, child, settings, started)
        finally:
            self._active.discard(child)
            child.finished.set()

    def _attach(
        self, req: RunRequest, settings: Settings, started: float, spawned: Started
    ) -> _Child:
        """The daemon's handles on a started child: output drain, qb channel, exit watch."""
        loop = asyncio.get_running_loop()
        pid, exited, read_end, ours, hello = (
            spawned.pid,
            spawned.exited,
            spawned.output,
            spawned.channel,
            spawned.hello,
        )
        context = f"run={req.run_id} callback={req.callback.file} pid={pid}"
        log.debug("spawned seq=%d job=%s %s", req.seq, req.owner, context)
        path = log_path(settings.logpath, req.owner)
        sink = OutputSink(
            path, lambda: header_line(req, started), settings.output_limit, self._logs
        )
        answer = self._jobinfo or local_jobinfo((req.job_doc, req.event_doc.get("job") or {}))
        drain: PipeDrain | None = None
        channel: Channel | None = None
        readers = self._readers(loop)
        try:
            drain = PipeDrain(loop, read_end, sink, readers)
            channel = Channel(loop, ours, hello, answer, context, readers)
            return _Child(pid, exited or process.watch(loop, pid, readers), drain, channel)
        except BaseException:  # out of fds, most likely: leave nothing behind
            process.kill_group(pid, signal.SIGKILL)
            if exited is None:
                os.waitpid(pid, 0)  # SIGKILLed and not yet watched: returns at once
            if drain is None:
                os.close(read_end)
            else:
                drain.close()
            if channel is None:
                ours.close()
            else:
                channel.abandon()
            raise

    def _readers(self, loop: asyncio.AbstractEventLoop) -> process.Poller:
        """The epoll set of this runner's children on ``loop`` (made on first use)."""
        poller = self._poller
        if poller is None or poller.loop is not loop:
            poller = self._poller = process.Poller(loop)
        return poller

    async def _await_child(
        self, req: RunRequest, child: _Child, settings: Settings, started: float
    ) -> RunResult:
        loop = asyncio.get_running_loop()
        timeout = settings.callback_timeout
        timer = None
        if timeout > 0:
            timer = loop.call_later(timeout, self._stop, child, "timeout", settings.kill_grace)
        try:
            status = await self._exit_status(child, settings.kill_grace)
        except asyncio.CancelledError:
            self._stop(child, "cancelled", settings.kill_grace)
            self._own(self._finish(child, settings.kill_grace))
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if child.stopper is not None:
            await child.stopper
        ended = time.time()
        actions = await child.channel.aclose()
        await self._settle_output(child, settings.kill_grace)
        await child.drain.sink.flushed()  # what it printed is in the log when it is done
        outcome, description = _judge(status, child.stop_reason, timeout)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "exited seq=%d job=%s run=%d callback=%s pid=%d status=%r outcome=%s"
                " duration=%.3fs", req.seq, req.owner, req.run_id, req.callback.file, child.pid,
                str(status), outcome, ended - started,
            )  # fmt: skip
        sink = child.drain.sink
        return RunResult(
            started, ended, status.exit_code, status.signal, outcome, description,
            sink.truncated, sink.path, actions, child.pid,
        )  # fmt: skip

    async def _exit_status(self, child: _Child, grace: float) -> process.Status:
        """The child's Status. If its fork server died under it, the run is retried
        (ForkServerLost) after a cleanup, unless the daemon was stopping it anyway."""
        try:
            return await asyncio.shield(child.exited)
        except ForkServerLost:
            if child.stop_reason is not None:
                return process.Status(None, signal.SIGKILL)
            if child.stopper is not None:
                await child.stopper
            await child.channel.aclose()
            await self._reap_group(child, grace)
            raise

    async def _settle_output(self, child: _Child, grace: float) -> None:
        """After the leader's reap: the result waits for the output, not for grandchildren."""
        if process.is_group_alive(child.pid):
            self._own(self._reap_group(child, grace))  # awaited by aclose(), not by the caller
        else:
            await self._reap_group(child, grace, alive=False)

    async def _reap_group(self, child: _Child, grace: float, alive: bool = True) -> None:
        """Stop whatever the leader left in its process group, then finish the output.
        ``alive=False``: the caller just saw the group empty (a group never refills)."""
        if alive and process.is_group_alive(child.pid):
            await process.stop_group(child.pid, grace, child.drain.eof)
        if not child.drain.eof.done():
            await asyncio.wait({child.drain.eof}, timeout=grace)
        if not child.drain.eof.done():
            log.warning(
                "output still open after its group ended pid=%d (escaped process?)", child.pid
            )
        child.drain.close()

    async def _finish(self, child: _Child, grace: float) -> None:
        """Cleanup of a run whose caller went away (cancelled): reap, collect, close."""
        await asyncio.wait({child.exited})
        if child.stopper is not None:
            await child.stopper
        await child.channel.aclose()
        await self._reap_group(child, grace)

    def _stop(self, child: _Child, reason: str, grace: float) -> None:
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

    def _own(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)


def _once(fn: Callable[[], None]) -> Callable[[], None]:
    called = False

    def once() -> None:
        nonlocal called
        if not called:
            called = True
            fn()

    return once


def _judge(status: process.Status, stop_reason: str | None, timeout: float) -> tuple[str, str]:
    if stop_reason == "timeout":
        return "timeout", f"timed out after {timeout:g} s"
    if stop_reason is not None:
        return "timeout", f"stopped at {stop_reason}"
    if status.exit_code == 0:
        return "ok", str(status)
    return "failed", str(status)


def _failed_start(req: RunRequest, started: float, why: str) -> RunResult:
    log.warning(
        "could not start seq=%d job=%s run=%d callback=%s reason=%s",
        req.seq, req.owner, req.run_id, req.callback.file, why,
    )  # fmt: skip
    return RunResult(
        started, time.time(), None, None, "error", f"could not start: {why}", False, None, (), None
    )
