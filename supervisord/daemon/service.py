"""The daemon: startup, main loop, shutdown, and intake into the journal."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from supervisord import __version__
from supervisord.core.matching import MatchState, Table
from supervisord.core.model import Event, Settings
from supervisord.core.runtypes import RunRequest
from supervisord.daemon.acceptor import Acceptor
from supervisord.daemon.limits import connection_limit
from supervisord.daemon.listener import allowed_uids, bind, unlink_if_ours
from supervisord.daemon.load import Loaded
from supervisord.daemon.members import Member
from supervisord.daemon.memory import IdleRelease
from supervisord.daemon.ops import Ops
from supervisord.daemon.policies import Policies
from supervisord.daemon.reloading import Reloading, load_all
from supervisord.daemon.runs import Runs
from supervisord.daemon.server import Connection, Reply
from supervisord.daemon.systemd import Notifier, listen_fds, watchdog_interval
from supervisord.journal.batch import Intake, Query, Tick
from supervisord.journal.sequencer import Sequencer
from supervisord.run.runner import Runner
from supervisord.run.scheduler import Scheduler

__all__ = ["Daemon", "load_all"]

log = logging.getLogger(__name__)


class Daemon(Reloading, Runs):
    """Owns every piece of state: table, sequencer, scheduler, runner, listeners."""

    def __init__(
        self, qbconf: str, settings: Settings, loaded: Loaded, policies: Policies | None = None
    ) -> None:
        self.qbconf = qbconf
        self.settings = settings
        self.table = Table(loaded.callbacks)
        self.policies = policies or Policies()
        self.version = __version__
        self.closing = False
        self.started_at = time.time()
        self.notifier = Notifier(os.environ)
        self._stop = asyncio.Event()
        self._reload_requested = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._congested: set[Connection] = set()
        self._intake_pending = 0  # events handed to the sequencer, not yet answered
        # subscribe connections: None when live, else the actions held while catching up
        self.subscribers: dict[Connection, list[Reply] | None] = {}
        self.tails: set[Connection] = set()
        self.allowed, unknown = allowed_uids(settings)
        for user in unknown:
            log.warning("unknown user in supervisor_event_allow_users user=%s", user)
        self.runner = Runner(settings, jobinfo=self.jobinfo)
        self.scheduler = Scheduler(
            settings.concurrency, settings.per_job_order, self.execute, settings.queue_limit
        )
        self.scheduler.on_drained = self._resume_congested
        self.scheduler.on_idle = IdleRelease(self)  # memory back to the system after bursts
        self.sequencer: Sequencer | None = None
        self.member: Member | None = None
        self._clock: asyncio.TimerHandle | None = None
        self._socket_inode: int | None = None
        self.acceptor: Acceptor | None = None
        self.stats: dict[str, Any] = {"timeouts": 0}
        self.ops = Ops(self)
        self.status_line = self.ops.status_line
        self.call = self.ops.call

    # -- lifecycle -------------------------------------------------------------------------

    async def main(self) -> int:
        await self.startup()
        try:
            await self.main_loop()
        finally:
            await self.shutdown()
        return 0

    async def startup(self) -> None:
        loop = asyncio.get_running_loop()
        self.sequencer = Sequencer(self.settings, self.table, loop, self._committed)
        self.apply_policies(self.policies)  # before the journal's held and retrying runs load
        recovered = await asyncio.to_thread(self.sequencer.open)
        self.sequencer.start()
        self.scheduler.note_seq(self.sequencer.counters["last_seq"])
        self.scheduler.submit(recovered)
        limit = connection_limit(self.settings)
        inherited = listen_fds(os.environ)
        if self.settings.role == "executor" and inherited:  # it only runs callbacks (SPEC §8)
            log.warning(
                "an executor takes no events: the socket systemd passed is not used; stop"
                " and disable qbcallbacks.socket on this host fd=%d", inherited[0].fileno(),
            )  # fmt: skip
        if self.settings.role != "executor":
            if inherited:
                sock = inherited[0]
                log.info("using inherited socket fd=%d", sock.fileno())
            else:
                sock = bind(self.settings)
                self._socket_inode = os.stat(self.settings.event_socket).st_ino
            self.acceptor = Acceptor(sock, lambda: Connection(self), limit)
        for signum, handler in (
            (signal.SIGTERM, self._stop.set),
            (signal.SIGINT, self._stop.set),
            (signal.SIGHUP, self._reload_requested.set),
        ):
            loop.add_signal_handler(signum, handler)
        await self._warm_runner()
        self.sequencer.submit(Tick())  # fire time triggers that passed while we were down
        self.member = Member(
            self.settings, self.sequencer, self.scheduler, self.query, self.ops.publish_lines
        )
        await self.member.start()  # a fleet's heartbeat and listener; nothing on SQLite
        log.info(
            "listening socket=%s callbacks=%d redelivered=%d max_connections=%d loop=%s"
            " role=%s",
            self.settings.event_socket if self.acceptor else "-", len(self.table.callbacks),
            len(recovered), limit, type(loop).__module__, self.settings.role,
        )  # fmt: skip
        self.notifier.notify("READY=1", f"STATUS={self.status_line()}", f"MAINPID={os.getpid()}")

    async def _warm_runner(self) -> None:
        """Start the Python fork server before READY, so the first events do not queue
        behind its start-up (about 70 ms, measured by bench/b_latency.py)."""
        if not any(cb.language == "python" for cb in self.table.callbacks):
            return
        try:
            await self.runner.warm()
        except Exception as exc:  # contained: the first Python run starts it instead
            log.warning("fork server did not start early error=%s", exc)

    async def main_loop(self) -> None:
        interval = watchdog_interval(os.environ)
        while not self._stop.is_set():
            stop = asyncio.ensure_future(self._stop.wait())
            reload = asyncio.ensure_future(self._reload_requested.wait())
            await asyncio.wait({stop, reload}, timeout=interval, return_when="FIRST_COMPLETED")
            stop.cancel()
            reload.cancel()
            if self._reload_requested.is_set() and not self._stop.is_set():
                self._reload_requested.clear()
                await self.reload()
            if interval is not None:
                # Sent from the loop: a stuck loop stops the pings and systemd restarts us.
                self.notifier.notify("WATCHDOG=1", f"STATUS={self.status_line()}")

    async def shutdown(self) -> None:
        log.info("stopping running=%d queued=%d", self.scheduler.running, self.scheduler.queued)
        self.closing = True
        if self.acceptor is not None:
            self.acceptor.close()  # synchronous: from here on a connect is refused
        self.notifier.notify("STOPPING=1")
        if self._clock is not None:
            self._clock.cancel()
        if self.member is not None:
            self.member.stop()  # claims no more: what is claimed and not started goes back
        await self.scheduler.drain()
        await self.runner.aclose()
        for conn in list(self.subscribers) + list(self.tails):
            if conn.transport is not None:
                conn.transport.close()
        if self.acceptor is not None:
            await self.acceptor.wait_closed()
        if self.sequencer is not None:
            await asyncio.to_thread(self.sequencer.stop, True)
        unlink_if_ours(self.settings.event_socket, self._socket_inode)
        self.notifier.close()
        log.info("stopped queued_left=%d", self.scheduler.queued)

    # -- intake ----------------------------------------------------------------------------

    def is_allowed(self, uid: int) -> bool:
        return uid in self.allowed

    def backlog(self) -> int:
        """Runs waiting to start plus events read but not yet committed (each may add runs)."""
        return self.scheduler.queued + self._intake_pending

    def is_congested(self) -> bool:
        return self.backlog() >= self.scheduler.queue_limit

    def watch_congestion(self, conn: Connection) -> None:
        self._congested.add(conn)

    def _resume_congested(self) -> None:
        # Hysteresis: resume at half the limit, so intake does not flap on every run.
        if not self._congested or self.backlog() > self.scheduler.queue_limit // 2:
            return
        # Take the set first: a resumed connection that meets congestion again while it
        # catches up re-registers itself, and must stay registered to be resumed later.
        waiting, self._congested = self._congested, set()
        for conn in waiting:
            conn.resume("congestion")

    def forget(self, conn: Connection) -> None:
        self._congested.discard(conn)
        self.subscribers.pop(conn, None)
        self.tails.discard(conn)

    def disconnected(self, conn: Connection) -> None:
        self.forget(conn)
        if self.acceptor is not None:
            self.acceptor.discard(conn)  # its place among the open connections is free

    def submit_events(self, events: list[Event], done: Callable[[list[Reply]], None]) -> None:
        assert self.sequencer is not None
        self._intake_pending += len(events)

        def committed(replies: list[Reply]) -> None:
            self._intake_pending -= len(events)
            done(replies)
            self._resume_congested()

        self.sequencer.submit(Intake(events, committed))

    def _committed(self, runs: list[RunRequest], deadline: float | None) -> None:
        """On the loop after each commit: schedule new runs, re-arm the clock timer."""
        assert self.sequencer is not None
        if log.isEnabledFor(logging.DEBUG):  # each run's end is logged at info: enough
            for req in runs:
                log.debug(
                    "matched seq=%d event_id=%s callback=%s job=%s run_id=%d",
                    req.seq, req.event_id, req.callback.file, req.owner, req.run_id,
                )  # fmt: skip
        self.scheduler.note_seq(self.sequencer.counters["last_seq"])
        self.scheduler.submit(runs)
        self._arm_clock(deadline)

    def _arm_clock(self, deadline: float | None) -> None:
        if self._clock is not None:
            self._clock.cancel()
            self._clock = None
        if deadline is None or self.closing or self.sequencer is None:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, deadline - time.time())
        sequencer = self.sequencer
        self._clock = loop.call_at(loop.time() + delay, lambda: sequencer.submit(Tick()))

    async def query(self, fn: Callable[[Any, MatchState], Any]) -> Any:
        assert self.sequencer is not None
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.sequencer.submit(Query(fn, future))
        return await future
