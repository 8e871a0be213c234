"""Work a callback leaves running (SPEC §4): watched, logged, reaped, stopped in time."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Final

from supervisord.run import group, process
from supervisord.run.output import PipeDrain

log = logging.getLogger(__name__)

# How often the daemon, a subreaper, looks for orphans that left their callback's group
# (setsid, start_new_session=True) and ended. Only a SIGCHLD would say when, and that
# would cost every run a signal; until then such a zombie holds a pid and little else.
SWEEP_INTERVAL: Final = 60.0
# A zombie session leader among the daemon's children is a stray only once it has been
# one this long: a callback just exited is one too, until its watcher reaps it (a turn of
# the loop).
_STRAY_AGE: Final = 10.0


@dataclass(slots=True, eq=False)
class _Group:
    """A callback's process group after the callback (its leader) exited."""

    pgid: int
    drain: PipeDrain  # its output pipe, which the members left hold
    grace: float
    context: str  # "seq=17 job=1234 run=12 callback=x.py pid=4242" (pid: the leader's)
    counted: asyncio.Future[int]  # the live members found when the leader exited
    empty: asyncio.Future[None]  # no live member left
    pidfds: dict[int, int] = field(default_factory=dict)  # live members watched: pid -> pidfd
    changed: asyncio.Event = field(default_factory=asyncio.Event)  # a watched member exited
    timer: asyncio.TimerHandle | None = None
    stopper: asyncio.Task[None] | None = None
    watcher: asyncio.Task[None] | None = None


class Background:
    """Every group whose callback exited with members still in it: each is watched (a
    pidfd per member, /proc read again when one exits), its output still goes to the
    job's log, its members are reaped (orphans come to the daemon, a subreaper), and it
    is stopped with the one stop policy after its timeout or at aclose()."""

    def __init__(self, stray_age: float = _STRAY_AGE) -> None:
        self._stray_age = stray_age
        self._groups: set[_Group] = set()
        self._closing = False
        self._sweeper: asyncio.TimerHandle | None = None
        self._zombies: dict[tuple[int, int], float] = {}  # (pid, start): first seen

    @property
    def count(self) -> int:
        """Processes watched now, over all groups."""
        return sum(len(g.pidfds) for g in self._groups)

    async def adopt(
        self,
        pgid: int,
        drain: PipeDrain,
        readers: process.Readers,
        *,
        grace: float,
        timeout: float,
        context: str,
        stop: str | None,
    ) -> int:
        """Take over group ``pgid``, whose leader was reaped: how many of its processes
        are left running. ``stop``: why the run itself is being stopped (timeout,
        shutdown, ...): then its group is stopped now, and none is left running. The
        drain is closed when the group ends."""
        loop = asyncio.get_running_loop()
        g = _Group(pgid, drain, grace, context, loop.create_future(), loop.create_future())
        self._groups.add(g)
        g.watcher = loop.create_task(self._watch(g, readers, timeout, stop))
        left = await asyncio.shield(g.counted)  # a cancelled caller leaves the group watched
        return 0 if stop is not None else left

    def start_sweeping(self) -> None:
        if self._sweeper is None and not self._closing:
            self._sweeper = asyncio.get_running_loop().call_later(SWEEP_INTERVAL, self._tick)

    async def aclose(self) -> None:
        """Stop every group (the stop policy) and await their ends."""
        self._closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for g in list(self._groups):
            self._stop(g, "shutdown")
        while self._groups:
            watchers = [g.watcher for g in self._groups if g.watcher is not None]
            await asyncio.gather(*watchers, return_exceptions=True)

    def sweep(self) -> None:
        """Reap the daemon's children that left a callback's group and ended: anything
        not in the daemon's own session that it did not start itself (every child it
        starts leads a session of its own), or a session leader long a zombie."""
        own_session = os.getsid(0)
        now = time.monotonic()
        seen: dict[tuple[int, int], float] = {}
        try:
            children = group.children()
        except OSError as exc:
            log.warning("cannot list children error=%s", exc)
            return
        for proc in children:
            if not proc.zombie or proc.sid == own_session:
                continue
            first = self._zombies.get((proc.pid, proc.start), now)
            if (proc.sid == proc.pid and now - first < self._stray_age) or not group.reap(proc.pid):
                seen[proc.pid, proc.start] = first
            else:
                log.info("reaped stray pid=%d sid=%d", proc.pid, proc.sid)
        self._zombies = seen

    def _tick(self) -> None:
        self._sweeper = None
        self.sweep()
        self.start_sweeping()

    async def _watch(
        self, g: _Group, readers: process.Readers, timeout: float, stop: str | None
    ) -> None:
        """The group's life after its leader: members watched until none is left."""
        try:
            await self._scan(g, readers)
            g.counted.set_result(len(g.pidfds))
            if stop is not None or self._closing:
                self._stop(g, stop or "shutdown")
            elif g.pidfds:
                log.info("left running %s processes=%d", g.context, len(g.pidfds))
                g.timer = asyncio.get_running_loop().call_later(timeout, self._stop, g, "timeout")
            while g.pidfds:
                await g.changed.wait()
                g.changed.clear()
                if g.pidfds or process.is_group_alive(g.pgid):  # else: all gone, reaped
                    await self._scan(g, readers)
        except Exception:  # /proc unreadable, out of fds: kill what cannot be watched
            log.exception("background watch failed %s", g.context)
            process.kill_group(g.pgid, signal.SIGKILL)
            for fd in g.pidfds.values():
                readers.remove_reader(fd)
                os.close(fd)
            g.pidfds.clear()
        finally:
            await self._end(g)

    async def _scan(self, g: _Group, readers: process.Readers) -> None:
        """Read the group from /proc (off the loop: a read per process of the host),
        reap its zombies that are the daemon's, watch the live members not yet watched."""
        me = os.getpid()
        for proc in await asyncio.to_thread(group.members, g.pgid):
            if proc.zombie:
                if proc.ppid == me:
                    group.reap(proc.pid)
            elif proc.pid not in g.pidfds:
                self._watch_pid(g, proc, readers)

    def _watch_pid(self, g: _Group, proc: group.Proc, readers: process.Readers) -> None:
        try:
            pidfd = os.pidfd_open(proc.pid)
        except ProcessLookupError:  # reaped since the scan
            return
        now = group.read_stat(proc.pid)
        if now is None or now.start != proc.start:  # reaped, and the pid reused, meanwhile
            os.close(pidfd)
            return
        g.pidfds[proc.pid] = pidfd
        readers.add_reader(pidfd, lambda: self._on_exit(g, proc.pid, readers))

    def _on_exit(self, g: _Group, pid: int, readers: process.Readers) -> None:
        pidfd = g.pidfds.pop(pid, None)
        if pidfd is None:
            return
        readers.remove_reader(pidfd)
        try:
            group.reap_pidfd(pidfd)  # the daemon's (an orphan): reaped; else its parent's
        finally:
            os.close(pidfd)
        g.changed.set()

    def _stop(self, g: _Group, reason: str) -> None:
        if g.timer is not None:
            g.timer.cancel()
        if g.stopper is not None or g.empty.done():
            return
        log.warning("stopping background %s reason=%s", g.context, reason)
        g.stopper = asyncio.get_running_loop().create_task(
            process.stop_group(g.pgid, g.grace, g.empty)
        )

    async def _end(self, g: _Group) -> None:
        """The group is empty: its output ends (unless a process that escaped it holds
        the pipe: then it is cut off after the grace period)."""
        if not g.counted.done():
            g.counted.set_result(0)
        if g.timer is not None:
            g.timer.cancel()
        g.empty.set_result(None)
        if g.stopper is not None:
            await g.stopper
        drain = g.drain
        if not drain.eof.done():
            await asyncio.wait({drain.eof}, timeout=g.grace)
        if not drain.eof.done():
            log.warning("output still open after its group ended pgid=%d (escaped process?)",
                        g.pgid)  # fmt: skip
        drain.close()
        self._groups.discard(g)
        log.info("background ended %s", g.context)
