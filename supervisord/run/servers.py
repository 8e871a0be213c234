"""The daemon's one fork server: started on first use, restarted, replaced on a new interpreter."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Mapping
from typing import Any, Final

from supervisord.run import forkserver, process
from supervisord.run.env import RUNTIME_DIR
from supervisord.run.forkserver import ForkServer, ForkServerLost

log = logging.getLogger(__name__)

SCRIPT: Final = os.path.join(RUNTIME_DIR, "_forkserver.py")
_READY_SIZE: Final = 64


async def start_server(interpreter: str, env: Mapping[str, str]) -> ForkServer:
    """Spawn ``interpreter _forkserver.py`` (clean env, only fds 0-3) and await READY."""
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        stderr = 2 if _is_open(2) else devnull  # its own tracebacks go to the daemon's log
        fds = (devnull, devnull, stderr, theirs.fileno())
        pid = process.spawn([interpreter, SCRIPT], env, cwd="/", fds=fds)
    except BaseException:
        ours.close()
        raise
    finally:
        os.close(devnull)
        theirs.close()
    exited = process.watch(loop, pid)
    ours.setblocking(False)
    ready: asyncio.Future[Any] = loop.create_task(loop.sock_recv(ours, _READY_SIZE))
    done, _ = await asyncio.wait(
        [ready, exited], timeout=forkserver.START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
    )
    if ready not in done or ready.exception() is not None or ready.result()[:2] != b"R ":
        ready.cancel()
        process.kill_group(pid, signal.SIGKILL)
        status = await exited
        ours.close()
        raise ForkServerLost(f"fork server did not start ({status})")
    log.info("fork server started pid=%d interpreter=%s", pid, interpreter)
    return ForkServer(ours, pid, exited, interpreter)


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


class ForkServers:
    """Keeps one fork server up: started on first use, restarted after it dies, replaced
    (after its runs end) when the interpreter changes."""

    def __init__(self) -> None:
        self._server: ForkServer | None = None
        self._starting: asyncio.Task[ForkServer] | None = None
        self._retired: set[asyncio.Task[None]] = set()
        self._ended_runs = 0
        self.restarts = 0

    async def get(self, interpreter: str, env: Mapping[str, str], grace: float) -> ForkServer:
        """A live server on ``interpreter``; ForkServerLost if one cannot be started."""
        server = self._server
        if server is not None and server.is_alive and server.interpreter == interpreter:
            return server
        if self._starting is None:
            self._starting = asyncio.get_running_loop().create_task(
                self._replace(interpreter, env, grace)
            )
            self._starting.add_done_callback(self._started)
        return await asyncio.shield(self._starting)

    def state(self) -> dict[str, Any]:
        server = self._server
        if server is None:
            return {"pid": None, "restarts": self.restarts, "runs": self._ended_runs}
        pid = server.pid if server.is_alive else None
        return {"pid": pid, "restarts": self.restarts, "runs": self._ended_runs + server.runs}

    async def aclose(self, grace: float) -> None:
        if self._starting is not None:
            await asyncio.gather(self._starting, return_exceptions=True)
        server = self._server
        if server is not None:
            await server.aclose(grace)
        while self._retired:
            await asyncio.gather(*self._retired, return_exceptions=True)

    async def _replace(self, interpreter: str, env: Mapping[str, str], grace: float) -> ForkServer:
        old = self._server
        if old is not None:
            self._server = None
            self._ended_runs += old.runs
            if old.is_alive:  # another interpreter now: the old one finishes its runs first
                task = asyncio.get_running_loop().create_task(old.aclose(grace))
                self._retired.add(task)
                task.add_done_callback(self._retired.discard)
            else:
                self.restarts += 1
        self._server = await start_server(interpreter, env)
        return self._server

    def _started(self, task: asyncio.Task[ForkServer]) -> None:
        self._starting = None
        if not task.cancelled() and task.exception() is not None:
            log.warning("fork server start failed reason=%s", task.exception())
