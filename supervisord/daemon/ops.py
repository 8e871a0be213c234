"""The socket operations other than `event` (SPEC §3.2), as methods of the daemon."""

from __future__ import annotations

import asyncio
import time
from array import array
from collections import Counter
from typing import TYPE_CHECKING, Any, Final

from supervisord.core.errors import EventError
from supervisord.core.events import validate_event
from supervisord.core.matching import match
from supervisord.daemon.policyops import PolicyOps, int_field, str_field
from supervisord.daemon.server import Connection, Reply, error
from supervisord.journal import reads
from supervisord.journal.backend import is_shared, member_name
from supervisord.journal.lease import fleet_view

if TYPE_CHECKING:
    from supervisord.core.matching import MatchState
    from supervisord.core.runtypes import RunRequest, RunResult
    from supervisord.daemon.view import Daemon

# Bytes a subscriber may leave unread before it is cut off (it can resume with `since`).
SUBSCRIBER_BUFFER: Final = 4 << 20
# Durations kept per callback for the p50/p99 of `status`.
DURATION_SAMPLES: Final = 512
# Seconds between looks at the journal while `wait` waits for a fleet's runs.
FLEET_WAIT_POLL: Final = 0.05


class Samples:
    """The last ``size`` durations, as doubles in one array: a deque of float objects
    made during bursts kept CPython's memory arenas from being returned (bench/b_rss.py)."""

    __slots__ = ("_filled", "_next", "_values")

    def __init__(self, size: int) -> None:
        self._values = array("d", bytes(8 * size))
        self._next = 0
        self._filled = 0

    def append(self, value: float) -> None:
        self._values[self._next] = value
        self._next = (self._next + 1) % len(self._values)
        self._filled = min(self._filled + 1, len(self._values))

    def values(self) -> list[float]:
        return self._values[: self._filled].tolist()


def _action_key(line: Reply) -> tuple[Any, ...]:
    return (line["seq"], line["callback"], line["job_id"], line["action"], line["target"])


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Ops:
    """The daemon's operations: one coroutine per op, looked up by name, plus status."""

    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon
        self.policy = PolicyOps(daemon)  # dead, replay, resume and status of SPEC §7

    async def call(self, op: str, doc: dict[str, Any], conn: Connection) -> Reply:
        name = f"op_{op}" if isinstance(op, str) else ""
        handler = getattr(self, name, None) or getattr(self.policy, name, None)
        if handler is None:
            return error("unknown_op", f"unknown op {op!r}")
        try:
            reply: Reply = await handler(doc, conn)
        except EventError as exc:
            # The protocol's one code for a bad field in a request (SPEC §3).
            return error("invalid_event", str(exc), field=exc.field)
        return reply

    async def op_ping(self, doc: dict[str, Any], conn: Connection) -> Reply:
        return {"ok": True, "version": self.d.version}

    async def op_status(self, doc: dict[str, Any], conn: Connection) -> Reply:
        return {"ok": True, **await self.full_status()}

    async def op_callbacks(self, doc: dict[str, Any], conn: Connection) -> Reply:
        rows = [
            {"file": cb.file, "dir": cb.dir, "line": cb.line, "language": cb.language,
             "trigger": cb.trigger_text}
            for cb in self.d.table.callbacks
        ]  # fmt: skip
        return {"ok": True, "callbacks": rows}

    async def op_match(self, doc: dict[str, Any], conn: Connection) -> Reply:
        event = validate_event({**doc, "op": "event"}, time.time())
        table = self.d.table

        def dry_run(_db: Any, state: MatchState) -> list[str]:
            return [f.callback.file for f in match(table, state, event, dry_run=True)]

        return {"ok": True, "matched": await self.d.query(dry_run)}

    async def op_wait(self, doc: dict[str, Any], conn: Connection) -> Reply:
        seq = int_field(doc, "seq")
        if seq is None:
            raise EventError("seq", "required: the seq to wait for")
        timeout = doc.get("timeout", 60)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0:
            raise EventError("timeout", f"expected a number of seconds >= 0, got {timeout!r}")
        scheduler, end = self.d.scheduler, time.monotonic() + float(timeout)
        if is_shared(self.d.settings):
            return await self._wait_fleet(seq, end)
        while True:
            done = await scheduler.wait(seq, max(0.0, end - time.monotonic()))
            waiting = await self.d.query(lambda db, _state: reads.waiting_through(db, seq))
            # The query passed every commit before it, and the runs those commits queued (a
            # retry that came due meanwhile) were handed to the scheduler first: look again.
            if not done or scheduler.is_done_through(seq):
                return {"ok": True, "done": done, "seq": seq, **waiting}

    async def _wait_fleet(self, seq: int, end: float) -> Reply:
        """`wait` in a fleet: the runs of events up to ``seq`` may run on any member, so the
        journal is asked, every FLEET_WAIT_POLL seconds, until none is unfinished."""
        while True:
            left = await self.d.query(lambda db, _state: reads.unfinished_through(db, seq))
            done = left["unfinished"] == 0
            if done or time.monotonic() >= end:
                waiting = {k: v for k, v in left.items() if k != "unfinished"}
                return {"ok": True, "done": done, "seq": seq, **waiting}
            await asyncio.sleep(min(FLEET_WAIT_POLL, max(0.0, end - time.monotonic())))

    async def op_history(self, doc: dict[str, Any], conn: Connection) -> Reply:
        job = int_field(doc, "job")
        limit = int_field(doc, "limit", 100) or 100
        callback, outcome = str_field(doc, "callback"), str_field(doc, "outcome")

        dead = doc.get("dead") is True

        def read(db: Any, _state: MatchState) -> list[dict[str, Any]]:
            count = max(1, min(limit, 100_000))
            return reads.history(db, job, callback, outcome, count, dead=dead)

        rows = await self.d.query(read)
        if not is_shared(self.d.settings):  # one daemon: every run was this one's
            me = member_name(self.d.settings)
            for row in rows:
                row["member"] = me
        return {"ok": True, "runs": rows}

    async def op_reload(self, doc: dict[str, Any], conn: Connection) -> Reply:
        return await self.d.reload()

    async def op_subscribe(self, doc: dict[str, Any], conn: Connection) -> Reply:
        since = int_field(doc, "since")
        if since is None:
            self.d.subscribers[conn] = None  # live from now on
            return {"ok": True}
        # Live actions are held while the stored ones are read: the backlog goes first,
        # then what was held, less what the backlog already had (an action is stored
        # when its run's end record commits, which may be before or after the read).
        held: list[Reply] = []
        self.d.subscribers[conn] = held
        backlog = await self.d.query(lambda db, _state: reads.actions_since(db, since))
        # Sent after the ok reply, in order, before any live action.
        asyncio.get_running_loop().call_soon(self._catch_up, conn, backlog, held)
        return {"ok": True}

    def _catch_up(self, conn: Connection, backlog: list[Reply], held: list[Reply]) -> None:
        if self.d.subscribers.get(conn) is not held:
            return  # gone meanwhile
        stored = Counter(_action_key(line) for line in backlog)
        for line in backlog:
            conn.send_line(line)
        for line in held:
            key = _action_key(line)
            if stored[key]:
                stored[key] -= 1
            else:
                conn.send_line(line)
        self.d.subscribers[conn] = None

    async def op_tail(self, doc: dict[str, Any], conn: Connection) -> Reply:
        self.d.tails.add(conn)
        return {"ok": True}

    async def op_metrics(self, doc: dict[str, Any], conn: Connection) -> Reply:
        from supervisord.core.metrics import render

        return {"ok": True, "text": render(await self.full_status())}

    async def full_status(self) -> dict[str, Any]:
        """`status` with the delivery policy's counts, read after every write queued before."""
        settings, running = self.d.settings, self.d.scheduler.running

        def read(db: Any, _state: MatchState) -> tuple[Any, Any]:
            return reads.waiting_counts(db), fleet_view(db, settings, running)

        waiting, fleet = await self.d.query(read)
        doc = self.status_doc()
        doc["fleet"] = fleet
        extra = self.policy.status(waiting)
        per_cb = doc["per_callback"]
        for name, fields in extra.pop("delivery").items():
            per_cb.setdefault(name, {"runs": 0, "failed": 0, "p50_s": 0.0, "p99_s": 0.0})
            per_cb[name].update(fields)
        return {**doc, **extra}

    # -- helpers used by the daemon -------------------------------------------------------

    def status_doc(self) -> dict[str, Any]:
        assert self.d.sequencer is not None
        c = self.d.sequencer.counters
        s = self.d.settings
        per_cb = {
            name: {
                "runs": v["runs"], "failed": v["failed"],
                "p50_s": round(_percentile(v["durations"].values(), 0.5), 4),
                "p99_s": round(_percentile(v["durations"].values(), 0.99), 4),
            }
            for name, v in self.d.stats.get("callbacks", {}).items()
        }  # fmt: skip
        return {
            "version": self.d.version,
            "uptime_s": round(time.time() - self.d.started_at, 3),
            "callbacks": len(self.d.table.callbacks),
            "running": self.d.scheduler.running,
            "queued": self.d.scheduler.queued,
            "oldest_queued_s": round(self.d.scheduler.oldest_queued_age(), 3),
            "events_total": c["events_total"],
            "runs_total": c["runs_total"],
            "runs_failed": c["runs_failed"],
            "timeouts": self.d.stats["timeouts"],
            "last_seq": c["last_seq"],
            "per_callback": per_cb,
            "forkserver": self.forkserver_state(),
            "config": {
                "qbconf": self.d.qbconf, "socket": s.event_socket,
                "callback_path": list(s.callback_path), "state_dir": s.state_dir,
                "logpath": s.logpath,
            },
        }  # fmt: skip

    def forkserver_state(self) -> dict[str, Any]:
        state = getattr(self.d.runner, "forkserver_state", None)
        if state is None:
            return {"mode": "fresh"}
        result: dict[str, Any] = state()
        return result

    def status_line(self) -> str:
        if self.d.sequencer is None:
            return "starting"
        c = self.d.sequencer.counters
        return (
            f"running={self.d.scheduler.running} queued={self.d.scheduler.queued} "
            f"events={c['events_total']} runs={c['runs_total']} failed={c['runs_failed']}"
        )

    def record_duration(self, name: str, seconds: float, outcome: str) -> None:
        per_cb = self.d.stats.setdefault("callbacks", {})
        entry = per_cb.setdefault(
            name, {"runs": 0, "failed": 0, "durations": Samples(DURATION_SAMPLES)}
        )
        entry["runs"] += 1
        entry["failed"] += outcome != "ok"
        entry["durations"].append(seconds)

    def run_fields(self, req: RunRequest) -> dict[str, Any]:
        return {
            "run_id": req.run_id, "seq": req.seq, "event_id": req.event_id,
            "callback": req.callback.file, "job_id": req.owner,
        }  # fmt: skip

    def publish_actions(self, req: RunRequest, result: RunResult) -> None:
        lines: list[Reply] = [
            {"op": "action", "seq": req.seq, "callback": req.callback.file,
             "job_id": req.owner, "action": a.action, "target": a.target}
            for a in result.actions
        ]  # fmt: skip
        self.publish_lines(lines)

    def publish_lines(self, lines: list[Reply]) -> None:
        """Actions to the subscribers: live ones get them, catching-up ones hold them. In a
        fleet they come from the journal, as any member's runs stored them (with `id`)."""
        for line in lines:
            for conn, held in list(self.d.subscribers.items()):
                if held is None:
                    self._send_bounded(conn, line)
                else:
                    held.append(line)

    def publish_tail(self, line: Reply) -> None:
        for conn in list(self.d.tails):
            self._send_bounded(conn, line)

    def _send_bounded(self, conn: Connection, line: Reply) -> None:
        if conn.buffered() > SUBSCRIBER_BUFFER:
            conn.send_line(
                error("unavailable", "subscriber too slow: disconnected; resume with since")
            )
            if conn.transport is not None:
                conn.transport.close()
            self.d.forget(conn)
        elif not conn.send_line(line):
            self.d.forget(conn)
