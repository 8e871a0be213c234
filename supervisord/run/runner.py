"""Runs one callback per request as a child process (or .qcb in-process) and reports how it went."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any, Final

from supervisord.core.model import Settings
from supervisord.core.runtypes import (
    Action,
    JobInfo,
    RunRequest,
    RunResult,
    log_path,
)
from supervisord.run import cspawn, group, process
from supervisord.run.background import Background
from supervisord.run.child import Child, attach, failed_start, judge, once, stop
from supervisord.run.ending import Endings
from supervisord.run.env import RUNTIME_DIR
from supervisord.run.forkserver import ForkServerLost, SpawnRefused
from supervisord.run.output import LogWriter
from supervisord.run.qcb import run_qcb
from supervisord.run.servers import ForkServers
from supervisord.run.spawner import Spawner
from supervisord.run.start import Starter

__all__ = ["RUNTIME_DIR", "Action", "JobInfo", "RunRequest", "RunResult", "Runner"]

log = logging.getLogger(__name__)

# Tries of a run whose fork server dies under it. The last one takes the direct path when
# nothing needs the server, so a server that keeps dying costs speed, never a run.
_ATTEMPTS: Final = 3


class Runner:
    """Starts callback runs; owns every child and every cleanup task until aclose().

    A child starts one of three ways: ``spawn`` (posix_spawn of the interpreter, the fast
    path when no user switch or limit applies), ``code`` (a Python callback forked from
    the warm fork server, python_mode = forkserver) or ``exec`` (forked by the fork
    server, which switches user and sets limits, then execs the interpreter). The fork
    server is started lazily, by the first run that needs it, and stopped in aclose().
    What a callback leaves running when it exits is handed to Background (SPEC §4).
    """

    def __init__(self, settings: Settings, *, jobinfo: JobInfo | None = None) -> None:
        self._environ = dict(os.environ)
        self._jobinfo = jobinfo
        self._active: set[Child] = set()
        self._cleanups: set[asyncio.Task[None]] = set()
        self._closing = False
        self._forks = ForkServers()
        self._spawner = Spawner() if cspawn.available() else None
        self._logs = LogWriter()  # its thread starts with the first run that prints
        self._poller: process.Poller | None = None
        self._background = Background()
        self._endings = Endings(self._background)
        self._was_subreaper: bool | None = None  # None: not made one (yet)
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

    @property
    def background(self) -> int:
        """For ``status``: processes that callbacks left running, watched now (SPEC §4)."""
        return self._background.count

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
            return failed_start(req, started, problem)
        if req.callback.language == "qube":
            if on_start is not None:
                on_start()
            return await run_qcb(req, settings, self._logs)
        argv = starter.argv(req)
        if isinstance(argv, str):
            return failed_start(req, started, argv)
        if on_start is not None:  # once, however many tries the fork server needs
            on_start = once(on_start)
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
        return failed_start(req, started, "the fork server keeps dying")

    async def aclose(self) -> None:
        """Stop every child still running, and what callbacks left running, with the kill
        policy; await all cleanup."""
        self._closing = True
        for child in list(self._active):
            stop(child, "shutdown", self._settings.kill_grace)
        for child in list(self._active):
            await child.finished.wait()
        while self._cleanups:
            await asyncio.gather(*self._cleanups, return_exceptions=True)
        await self._background.aclose()
        self._endings.close()
        await self._forks.aclose(self._settings.kill_grace)
        self._background.sweep()  # what the fork server had not reaped came here at its exit
        if self._was_subreaper is False:
            group.set_subreaper(False)
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
        if self._was_subreaper is None:
            self._take_orphans()
        try:
            spawned = await starter.start(req, argv, last)
        except SpawnRefused as exc:
            return failed_start(req, started, str(exc))
        except (OSError, ValueError) as exc:
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            return failed_start(req, started, f"{argv[0]}: {detail}")
        readers = self._readers(asyncio.get_running_loop())
        child = attach(req, settings, started, spawned, self._logs, self._jobinfo, readers)
        self._active.add(child)
        if on_start is not None:
            on_start()
        try:
            return await self._await_child(req, child, settings, started)
        finally:
            self._active.discard(child)
            child.finished.set()

    def _take_orphans(self) -> None:
        """Before the first child: become a subreaper, so that what a callback leaves
        running is reparented here when the callback exits, to be watched and reaped
        (init, in a container, may never reap it)."""
        try:
            self._was_subreaper = group.set_subreaper(True)
        except OSError as exc:
            self._was_subreaper = True  # tried once; nothing to undo
            log.warning("cannot become a subreaper error=%s", exc)
        self._background.start_sweeping()

    def _readers(self, loop: asyncio.AbstractEventLoop) -> process.Poller:
        """The epoll set of this runner's children on ``loop`` (made on first use)."""
        poller = self._poller
        if poller is None or poller.loop is not loop:
            poller = self._poller = process.Poller(loop)
        return poller

    async def _await_child(
        self, req: RunRequest, child: Child, settings: Settings, started: float
    ) -> RunResult:
        loop = asyncio.get_running_loop()
        timeout = settings.callback_timeout if req.timeout is None else req.timeout
        timer = None
        if timeout > 0:
            timer = loop.call_later(timeout, stop, child, "timeout", settings.kill_grace)
        try:
            try:
                status = await asyncio.shield(child.exited)
            except ForkServerLost as exc:
                status = await self._lost(child, settings, exc)
        except asyncio.CancelledError:
            stop(child, "cancelled", settings.kill_grace)
            self._own(self._finish(child, settings))
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if child.stopper is not None:
            await child.stopper
        ended = time.time()
        # The common end takes no await: no qb channel (or one read at once), an empty
        # group, nothing printed to wait for.
        actions = () if child.channel is None else await child.channel.aclose()
        left = self._endings.release_now(child, settings.kill_grace)
        if left is None:
            left = await self._endings.release(child, self._readers(loop), settings,
                                               child.stop_reason)  # fmt: skip
        if child.drain.sink.wrote:
            await child.drain.sink.flushed()  # what it printed is in the log when it is done
        outcome, description = judge(status, child.stop_reason, timeout)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "exited seq=%d job=%s run=%d callback=%s pid=%d status=%r outcome=%s"
                " duration=%.3fs", req.seq, req.owner, req.run_id, req.callback.file, child.pid,
                str(status), outcome, ended - started,
            )  # fmt: skip
        sink = child.drain.sink
        return RunResult(
            started, ended, status.exit_code, status.signal, outcome, description,
            sink.truncated, sink.path, actions, child.pid, left,
        )  # fmt: skip

    async def _lost(self, child: Child, settings: Settings, exc: ForkServerLost) -> process.Status:
        """Its fork server died under the child: the run is retried (ForkServerLost is
        raised again) after a cleanup, unless the daemon was stopping it anyway."""
        if child.stop_reason is not None:
            return process.Status(None, signal.SIGKILL)
        if child.stopper is not None:
            await child.stopper
        await child.actions()
        await self._endings.release(child, self._readers(asyncio.get_running_loop()), settings,
                                    "fork server lost")  # fmt: skip
        raise exc

    async def _finish(self, child: Child, settings: Settings) -> None:
        """Cleanup of a run whose caller went away (cancelled): reap, collect, close."""
        await asyncio.wait({child.exited})
        if child.stopper is not None:
            await child.stopper
        await child.actions()
        await self._endings.release(child, self._readers(asyncio.get_running_loop()), settings,
                                    "cancelled")  # fmt: skip

    def _own(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)
