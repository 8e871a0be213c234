"""`subscribe` with `since`: the stored backlog first, then the live actions that came
while it was read, each once. The race is made on purpose here, at our own boundary (the
daemon behind Ops), since a real daemon cannot be made to hit it on demand."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any, cast

from supervisord.core.runtypes import Action, RunResult
from supervisord.daemon.ops import Ops
from supervisord.daemon.server import Connection, Reply
from supervisord.daemon.service import Daemon
from tests.test_runner import make_callback, make_request


class Conn:
    def __init__(self) -> None:
        self.lines: list[Reply] = []
        self.transport = None

    def send_line(self, line: Reply) -> bool:
        self.lines.append(line)
        return True

    def buffered(self) -> int:
        return 0


class Backend:
    """What Ops needs of the daemon: its subscribers and a journal query we answer."""

    def __init__(self) -> None:
        self.subscribers: dict[Any, list[Reply] | None] = {}
        self.tails: set[Any] = set()
        self.answer: asyncio.Future[list[Reply]] = asyncio.get_running_loop().create_future()

    async def query(self, fn: Any) -> list[Reply]:
        return await self.answer

    def forget(self, conn: Any) -> None:
        self.subscribers.pop(conn, None)


def publish(ops: Ops, seq: int, *targets: str) -> None:
    req = dataclasses.replace(make_request(make_callback("act.py"), owner=seq), seq=seq)
    actions = tuple(Action("unblock", t) for t in targets)
    ops.publish_actions(req, RunResult(0.0, 1.0, 0, None, "ok", "", False, None, actions, 1))


def stored(seq: int, target: str, action_id: int) -> Reply:
    return {"op": "action", "id": action_id, "seq": seq, "callback": "act.py",
            "job_id": seq, "action": "unblock", "target": target}  # fmt: skip


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_since_sends_the_backlog_then_held_actions_once_each_then_live() -> None:
    backend = Backend()
    ops = Ops(cast(Daemon, backend))
    conn = Conn()
    subscribing = asyncio.ensure_future(ops.op_subscribe({"since": 0}, cast(Connection, conn)))
    await settle()
    publish(ops, 5, "5")  # its end record committed before the read: in the backlog too
    publish(ops, 6, "6")  # committed after the read: only live
    assert conn.lines == []  # held, not sent ahead of the backlog
    backend.answer.set_result([stored(4, "4", 1), stored(5, "5", 2)])
    assert await subscribing == {"ok": True}
    await settle()
    publish(ops, 7, "7")
    assert [(line["seq"], line.get("id")) for line in conn.lines] == [
        (4, 1),
        (5, 2),
        (6, None),
        (7, None),
    ]
    assert backend.subscribers[conn] is None


async def test_two_equal_actions_of_one_run_are_both_kept() -> None:
    # A run may ask for the same action twice: the backlog has it once, so the second
    # live copy is new, not a duplicate.
    backend = Backend()
    ops = Ops(cast(Daemon, backend))
    conn = Conn()
    subscribing = asyncio.ensure_future(ops.op_subscribe({"since": 0}, cast(Connection, conn)))
    await settle()
    publish(ops, 8, "8", "8")
    backend.answer.set_result([stored(8, "8", 1)])
    await subscribing
    await settle()
    assert [line["target"] for line in conn.lines] == ["8", "8"]


async def test_without_since_actions_are_live_at_once() -> None:
    backend = Backend()
    ops = Ops(cast(Daemon, backend))
    conn = Conn()
    assert await ops.op_subscribe({}, cast(Connection, conn)) == {"ok": True}
    publish(ops, 9, "9")
    assert [line["target"] for line in conn.lines] == ["9"]
