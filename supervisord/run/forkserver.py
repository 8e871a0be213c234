"""The daemon's side of the fork server: start it, hand it runs, hear how they ended."""

from __future__ import annotations

import array
import asyncio
import collections
import contextlib
import json
import logging
import os
import signal
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from supervisord.run import process
from supervisord.run.process import Status

log = logging.getLogger(__name__)

# Interpreter start-up plus the pre-warmed imports take ~0.1 s, a fork ~1 ms: a server that
# has not said READY, or answered a run request, after this long is hung; it is replaced.
START_TIMEOUT: Final = 30.0
_RECV_SIZE: Final = 4096
# The fork server reads no bigger request (runtime/_forkserver.py MAX_REQUEST): a run's
# environment and a few paths are some KiB.
MAX_REQUEST: Final = 1 << 16


class ForkServerLost(Exception):
    """The fork server died before it reported this run's end; the run is retried."""


class SpawnRefused(Exception):
    """The fork server could not start the run (bad cwd, user switch, exec); args[0] says why."""


_Started: TypeAlias = tuple[int, asyncio.Future[Status]]  # a run's pid and its end
# One encoder for every request: json.dumps with an option builds a new one per call.
_ENCODE: Final = json.JSONEncoder(separators=(",", ":")).encode


@dataclass(slots=True, eq=False)
class _Running:
    exited: asyncio.Future[Status]
    pidfd: int | None  # watches the child if the server dies and cannot report its end


class ForkServer:
    """One fork server process and the runs it started."""

    def __init__(
        self, sock: socket.socket, pid: int, exited: asyncio.Future[Status], interpreter: str
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._sock = sock
        self.pid = pid
        self.interpreter = interpreter
        self.exited = exited  # the server process itself, reaped by the daemon
        self.runs = 0
        self._next_id = 0
        self._starting: dict[int, asyncio.Future[_Started]] = {}
        self._running: dict[int, _Running] = {}
        self._writable: asyncio.Future[None] | None = None
        self._sent: collections.deque[tuple[int, float]] = collections.deque()  # (id, when)
        self._watchdog: asyncio.TimerHandle | None = None
        self._closing = False
        self.is_alive = True
        self._loop.add_reader(sock.fileno(), self._on_readable)
        exited.add_done_callback(lambda fut: self._lose(f"it exited ({fut.result()})"))

    async def spawn(
        self, request: Mapping[str, Any], fds: Sequence[int]
    ) -> tuple[int, asyncio.Future[Status]]:
        """Start one run; its pid and a future of its Status (ForkServerLost if the server
        dies first). The caller may close ``fds`` as soon as this returns or raises."""
        if not self.is_alive:
            raise ForkServerLost("the fork server is gone")
        self._next_id += 1
        rid = self._next_id
        payload = _ENCODE({**request, "id": rid}).encode()
        if len(payload) > MAX_REQUEST:
            raise SpawnRefused(f"run request too large ({len(payload)} bytes)")
        started: asyncio.Future[_Started] = self._loop.create_future()
        self._starting[rid] = started
        try:
            await self._send(payload, fds)
        except BaseException:
            self._starting.pop(rid, None)
            raise
        self._watch_answer(rid)
        return await started  # if cancelled, _on_started kills the child nobody wants

    def _watch_answer(self, rid: int) -> None:
        """Note when request ``rid`` went out: one watchdog timer for all of them (rather
        than a timer per run) replaces the server if the oldest goes unanswered too long."""
        sent = self._sent
        while sent and sent[0][0] not in self._starting:  # answered: the oldest go first
            sent.popleft()
        sent.append((rid, self._loop.time()))
        if self._watchdog is None:
            self._watchdog = self._loop.call_later(START_TIMEOUT, self._on_watchdog)

    def _on_watchdog(self) -> None:
        self._watchdog = None
        sent = self._sent
        while sent and sent[0][0] not in self._starting:
            sent.popleft()
        if not sent or not self.is_alive:
            return
        due = sent[0][1] + START_TIMEOUT
        if due <= self._loop.time():
            self._lose("no answer to a run request (hung?)")
        else:
            self._watchdog = self._loop.call_at(due, self._on_watchdog)

    async def aclose(self, grace: float) -> None:
        """Let runs in flight end, hang up (the server exits on EOF), reap it."""
        self._closing = True
        pending = [r.exited for r in self._running.values()] + list(self._starting.values())
        if pending:
            await asyncio.wait(pending)
        self._hang_up()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.exited), grace)
        if not self.exited.done():
            process.kill_group(self.pid, signal.SIGKILL)
            await self.exited

    async def _send(self, payload: bytes, fds: Sequence[int]) -> None:
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
        while True:
            try:
                self._sock.sendmsg([payload], rights)
                return
            except BlockingIOError:
                await self._wait_writable()
            except OSError as exc:
                self._lose(f"send failed ({exc})")
                raise ForkServerLost("the fork server is gone") from exc

    async def _wait_writable(self) -> None:
        if self._writable is None:
            fut = self._writable = self._loop.create_future()
            fd = self._sock.fileno()

            def ready() -> None:
                self._loop.remove_writer(fd)
                self._writable = None
                if not fut.done():
                    fut.set_result(None)

            self._loop.add_writer(fd, ready)
        await asyncio.shield(self._writable)

    def _on_readable(self) -> None:
        while self.is_alive:
            try:
                data = self._sock.recv(_RECV_SIZE)
            except BlockingIOError:
                return
            except OSError as exc:
                self._lose(f"read failed ({exc})")
                return
            if not data:
                self._lose("it hung up")
                return
            self._dispatch(data.decode(errors="replace"))

    def _dispatch(self, message: str) -> None:
        kind, _, rest = message.partition(" ")
        first, _, second = rest.partition(" ")
        try:
            if kind == "S":
                self._on_started(int(first), int(second))
            elif kind == "E":
                fut = self._starting.pop(int(first), None)
                if fut is not None and not fut.done():
                    fut.set_exception(SpawnRefused(second))
            elif kind == "X":
                status, _, rid = second.partition(" ")
                self._on_exited(int(first), int(status), int(rid) if rid else None)
            else:
                raise ValueError(kind)
        except ValueError:
            log.warning("fork server said nonsense pid=%d message=%.80r", self.pid, message)

    def _on_started(self, rid: int, pid: int) -> None:
        self.runs += 1
        try:
            pidfd: int | None = os.pidfd_open(pid)
        except ProcessLookupError:
            pidfd = None  # already ended; its X message is on the way
        running = _Running(self._loop.create_future(), pidfd)
        running.exited.add_done_callback(_consume)
        self._running[pid] = running
        fut = self._starting.pop(rid, None)
        if fut is None or fut.done():  # the caller went away (cancelled): nobody will stop it
            process.kill_group(pid, signal.SIGKILL)
        else:
            fut.set_result((pid, running.exited))

    def _on_exited(self, pid: int, wait_status: int, rid: int | None) -> None:
        if os.WIFSIGNALED(wait_status):
            status = Status(None, os.WTERMSIG(wait_status))
        else:
            status = Status(os.waitstatus_to_exitcode(wait_status), None)
        running = self._running.pop(pid, None)
        if running is not None:
            if running.pidfd is not None:
                os.close(running.pidfd)
            running.exited.set_result(status)
            return
        # Ended before it said it had started (killed during its set-up): it ran, and ended.
        fut = self._starting.pop(rid, None) if rid is not None else None
        if fut is not None and not fut.done():
            self.runs += 1
            exited: asyncio.Future[Status] = self._loop.create_future()
            exited.set_result(status)
            fut.set_result((pid, exited))

    def _lose(self, why: str) -> None:
        """The server is gone: every run it held is killed (group and all) and lost."""
        if not self.is_alive:
            return
        self._hang_up()
        if not self._closing or self._running or self._starting:
            log.warning("fork server lost pid=%d reason=%s runs_lost=%d", self.pid, why,
                        len(self._running) + len(self._starting))  # fmt: skip
        process.kill_group(self.pid, signal.SIGKILL)
        for fut in self._starting.values():
            if not fut.done():
                fut.set_exception(ForkServerLost(why))
        self._starting.clear()
        for pid, running in self._running.items():
            process.kill_group(pid, signal.SIGKILL)  # its parent-death signal got the leader
            self._lose_when_gone(running, why)
        self._running.clear()

    def _lose_when_gone(self, running: _Running, why: str) -> None:
        def lost() -> None:
            if running.pidfd is not None:
                self._loop.remove_reader(running.pidfd)
                os.close(running.pidfd)
            if not running.exited.done():
                running.exited.set_exception(ForkServerLost(why))

        if running.pidfd is None:
            lost()
        else:
            self._loop.add_reader(running.pidfd, lost)

    def _hang_up(self) -> None:
        if self.is_alive:
            self.is_alive = False
            if self._watchdog is not None:
                self._watchdog.cancel()
                self._watchdog = None
            self._loop.remove_reader(self._sock.fileno())
            if self._writable is not None:
                self._loop.remove_writer(self._sock.fileno())
                self._writable.set_result(None)
                self._writable = None
            self._sock.close()


def _consume(fut: asyncio.Future[Status]) -> None:
    """A lost run whose caller already went away must not log 'exception never retrieved'."""
    if not fut.cancelled():
        fut.exception()
