"""``supervisord.client.Client``: event ids, resend, the spool and its locks, thin calls.

Against the in-test Unix-socket stub of tests/test_client.py (our own boundary, the wire
protocol of SPEC §3); the real daemon, killed and restarted, is in test_client_resend.py.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisord.client import (
    Ack,
    BatchRejected,
    Client,
    FlushReport,
    Rejected,
    Undelivered,
    event,
)
from supervisord.client.spool import Spool
from tests.test_client import CLOSE, Reply, StubServer, stub


class Daemon:
    """A stand-in that acks events as the daemon does (seqs from 1, duplicates by event_id),
    and whose ``script`` can drop a connection or refuse at the Nth event."""

    def __init__(self) -> None:
        self.seqs: dict[str, int] = {}
        self.events = 0  # event requests received, duplicates included
        self.script: dict[int, list[Reply]] = {}  # event number -> replies instead of the ack
        self.refuse_from: int | None = None  # from this event number on: unavailable
        self.lock = threading.Lock()

    def __call__(self, doc: dict[str, Any]) -> list[Reply] | None:
        if doc.get("op", "event") != "event":
            return [{"ok": True, "op": doc["op"], "runs": [], "matched": ["m.py"], "done": True}]
        with self.lock:
            self.events += 1
            if self.events in self.script:
                return self.script[self.events] or None
            if self.refuse_from is not None and self.events >= self.refuse_from:
                return [UNAVAILABLE]
            if doc["job"]["id"] == 999:
                return [INVALID]
            eid = doc["event_id"]
            duplicate = eid in self.seqs
            seq = self.seqs.setdefault(eid, len(self.seqs) + 1)
        return [{"ok": True, "seq": seq, "event_id": eid, "duplicate": duplicate,
                 "matched": [] if duplicate else ["a.py"]}]  # fmt: skip


UNAVAILABLE = {"ok": False, "error": {"code": "unavailable", "message": "shutting down"}}
INVALID = {"ok": False, "error": {"code": "invalid_event", "message": "job.id: too big"}}


@pytest.fixture
def daemon(short_tmp: Path) -> Iterator[tuple[Daemon, StubServer]]:
    answer = Daemon()
    server = stub(short_tmp / "d.sock", answer)
    yield answer, server
    server.stop()


def client(path: Any, **kw: Any) -> Client:
    return Client(str(path), env={}, **kw)


def event_ids(server: StubServer) -> list[str]:
    return [r["event_id"] for r in server.requests if r.get("op") == "event"]


def spooled(spool: Path) -> list[dict[str, Any]]:
    path = spool / "spool.ndjson"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_emit_gives_an_event_id_and_returns_the_ack(daemon: tuple[Daemon, StubServer]) -> None:
    _, server = daemon
    with client(server.server_address) as c:
        ack = c.emit("complete", "job", 12, subid=3, user="alice")
        mine = c.emit("complete", "job", {"id": 12, "name": "s"}, event_id="farm1-1")
    assert ack == Ack(ack.event_id, 1, ("a.py",))
    assert mine.event_id == "farm1-1" and mine.seq == 2
    sent = server.requests[0]
    assert sent["job"] == {"id": 12} and sent["subid"] == 3 and sent["user"] == "alice"
    assert sent["event_id"] == ack.event_id and isinstance(sent["time"], float)
    assert server.requests[1]["job"] == {"id": 12, "name": "s"}


def test_event_ids_are_unique_per_client_and_across_clients(
    daemon: tuple[Daemon, StubServer],
) -> None:
    _, server = daemon
    with client(server.server_address) as a, client(server.server_address) as b:
        ids = [a.emit("submit", "job", n).event_id for n in range(300)]
        ids += [b.emit("submit", "job", n).event_id for n in range(300)]
    assert len(set(ids)) == 600
    assert all(str(os.getpid()) in i and len(i) <= 128 for i in ids)


@pytest.mark.parametrize(
    "failure",
    [
        pytest.param([], id="reply-lost"),
        pytest.param([UNAVAILABLE], id="unavailable"),
        pytest.param([b"not json\n"], id="garbage"),
    ],
)
def test_emit_resends_the_same_event_after_a_failed_attempt(
    daemon: tuple[Daemon, StubServer], failure: list[Reply]
) -> None:
    answer, server = daemon
    answer.script[1] = failure
    with client(server.server_address) as c:
        ack = c.emit("complete", "job", 5)
    assert ack.seq == 1
    assert event_ids(server) == [ack.event_id, ack.event_id]
    assert server.requests[0] == server.requests[1], "the same event, time included"


def test_invalid_event_raises_at_once(daemon: tuple[Daemon, StubServer]) -> None:
    _, server = daemon
    with client(server.server_address) as c, pytest.raises(Rejected) as info:
        c.emit("complete", "job", 999)
    assert info.value.code == "invalid_event" and "too big" in info.value.message
    assert len(server.requests) == 1


def test_no_daemon_and_no_spool_is_undelivered_after_the_deadline(short_tmp: Path) -> None:
    with client(short_tmp / "none.sock", deadline=0.2) as c, pytest.raises(Undelivered) as info:
        c.emit("complete", "job", 1, event_id="lost-1")
    assert "no socket file there" in info.value.reason
    assert [doc["event_id"] for doc in info.value.events] == ["lost-1"]


def test_emit_many_resends_the_unacknowledged_in_order(daemon: tuple[Daemon, StubServer]) -> None:
    answer, server = daemon
    answer.script[4] = []  # the daemon "dies" reading the 4th: replies 4.. are lost
    events = [event("complete", "job", n) for n in range(10)]
    with client(server.server_address) as c:
        acks = c.emit_many(events)
    assert [a.seq for a in acks] == list(range(1, 11))
    ids = [a.event_id for a in acks]
    sent = event_ids(server)
    assert sent[:4] == ids[:4] and sent[4:] == ids[3:], "resent from the 4th, in order"
    assert [a.duplicate for a in acks] == [False] * 10


def test_emit_many_reports_every_result_when_some_are_refused(
    daemon: tuple[Daemon, StubServer],
) -> None:
    _, server = daemon
    events = [event("complete", "job", n) for n in (1, 999, 3)]
    with client(server.server_address) as c, pytest.raises(BatchRejected) as info:
        c.emit_many(events)
    kinds = [type(r).__name__ for r in info.value.results]
    assert kinds == ["Ack", "Rejected", "Ack"] and info.value.code == "invalid_event"


def test_spool_keeps_what_the_daemon_missed_and_the_next_emit_sends_it_first(
    short_tmp: Path,
) -> None:
    path, spool = short_tmp / "d.sock", short_tmp / "spool"
    with client(path, deadline=0.1, spool=str(spool)) as c:
        early = c.emit("submit", "job", 1)
        assert early.spooled and early.seq is None
        assert c.emit_many([event("running", "job", 1)])[0].spooled
        assert spooled(spool)[0]["event_id"] == early.event_id
        first_time = spooled(spool)[0]["time"]
        server = stub(path, Daemon())
        try:
            late = c.emit("complete", "job", 1)
        finally:
            server.stop()
    assert [r["name"] for r in server.requests] == ["submit", "running", "complete"]
    assert server.requests[0]["event_id"] == early.event_id
    assert server.requests[0]["time"] == first_time, "a spooled event keeps its time"
    assert late.seq == 3 and not (spool / "spool.ndjson").exists()


def test_an_event_the_daemon_would_refuse_is_not_spooled(short_tmp: Path) -> None:
    with client(short_tmp / "d.sock", deadline=0, spool=str(short_tmp / "sp")) as c:
        with pytest.raises(Rejected) as info:
            c.emit("finished", "job", 1)
        assert info.value.code == "invalid_event" and "name" in info.value.message
    assert spooled(short_tmp / "sp") == []


def test_unwritable_spool_is_undelivered(short_tmp: Path) -> None:
    (short_tmp / "file").write_text("")
    bad = str(short_tmp / "file" / "spool")  # under a regular file: cannot be made
    with (
        client(short_tmp / "d.sock", deadline=0, spool=bad) as c,
        pytest.raises(Undelivered) as info,
    ):
        c.emit("complete", "job", 1)
    assert "spooling to" in info.value.reason


def test_flush_cut_off_keeps_the_rest_and_never_resends_what_was_acked(short_tmp: Path) -> None:
    path, spool = short_tmp / "d.sock", short_tmp / "spool"
    with client(path, deadline=0, spool=str(spool)) as c:
        ids = [ack.event_id for ack in c.emit_many(event("done", "job", n) for n in range(10))]
    answer = Daemon()
    answer.refuse_from = 4  # acks three, then is "unavailable" past the deadline
    server = stub(path, answer)
    try:
        with client(path, deadline=0.2, spool=str(spool)) as c:
            assert c.flush() == FlushReport(delivered=3, left=7)
            assert [d["event_id"] for d in spooled(spool)] == ids[3:]
            answer.refuse_from = None
            assert c.flush() == FlushReport(delivered=7)
    finally:
        server.stop()
    assert list(dict.fromkeys(event_ids(server))) == ids, "in order"
    assert sorted(answer.seqs.values()) == list(range(1, 11))
    assert not (spool / "spool.ndjson").exists()


def test_flush_moves_refused_and_unreadable_lines_aside(short_tmp: Path) -> None:
    path, spool = short_tmp / "d.sock", short_tmp / "spool"
    with client(path, deadline=0, spool=str(spool)) as c:
        c.emit("done", "job", 1)
    with open(spool / "spool.ndjson", "ab") as f:
        f.write(b'{"op": "event", "na')  # a crash cut this append short
    Spool(str(spool)).append([event("done", "job", 999, event_id="x")])  # this daemon refuses it
    assert len(spooled_lines := (spool / "spool.ndjson").read_text().splitlines()) == 3
    assert spooled_lines[1] == '{"op": "event", "na', "the cut line was ended, not joined"
    server = stub(path, Daemon())
    try:
        with client(path, deadline=1, spool=str(spool)) as c:
            assert c.flush() == FlushReport(delivered=1, rejected=2)
    finally:
        server.stop()
    rejected = [json.loads(x) for x in (spool / "rejected.ndjson").read_text().splitlines()]
    assert [r["error"].split(":")[0] for r in rejected] == ["not a JSON object", "invalid_event"]


def test_not_allowed_stops_a_flush_and_keeps_the_whole_spool(short_tmp: Path) -> None:
    path, spool = short_tmp / "d.sock", short_tmp / "spool"
    with client(path, deadline=0, spool=str(spool)) as c:
        c.emit_many(event("done", "job", n) for n in range(3))
    refused = {"ok": False, "error": {"code": "not_allowed", "message": "uid 1000 is not allowed"}}
    server = stub(path, lambda doc: [refused, CLOSE])
    try:
        c = client(path, deadline=1, spool=str(spool))
        with c, pytest.raises(Rejected, match="not_allowed"):
            c.flush()
    finally:
        server.stop()
    assert len(server.requests) == 1
    assert len(spooled(spool)) == 3 and not (spool / "rejected.ndjson").exists()


def test_flush_waits_for_another_flusher_only_until_the_deadline(short_tmp: Path) -> None:
    path, spool = short_tmp / "d.sock", short_tmp / "spool"
    with client(path, deadline=0, spool=str(spool)) as c:
        c.emit("done", "job", 1)
    server = stub(path, Daemon())
    try:
        with open(spool / ".flush.lock", "w") as held:
            fcntl.flock(held, fcntl.LOCK_EX)  # another client is flushing
            with client(path, deadline=0.2, spool=str(spool)) as c:
                assert c.flush() == FlushReport(busy=True)
                ack = c.emit("done", "job", 2)
        assert ack.spooled, "not sent ahead of the spooled event it cannot flush"
    finally:
        server.stop()
    assert server.requests == []
    assert len(spooled(spool)) == 2


def test_two_clients_flushing_at_once_send_each_event_once(short_tmp: Path) -> None:
    path, spool = short_tmp / "d.sock", short_tmp / "spool"
    with client(path, deadline=0, spool=str(spool)) as c:
        c.emit_many(event("done", "job", 5000 + n) for n in range(3000))
    answer = Daemon()
    server = stub(path, answer)
    reports: list[FlushReport] = []
    start = threading.Barrier(2)

    def flush() -> None:
        with client(path, deadline=30, spool=str(spool)) as c:
            start.wait()
            reports.append(c.flush())

    threads = [threading.Thread(target=flush) for _ in range(2)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        server.stop()
    assert answer.events == 3000 and len(answer.seqs) == 3000, "each sent once"
    assert sorted(r.delivered for r in reports) == [0, 3000]


def test_thin_calls(daemon: tuple[Daemon, StubServer], short_tmp: Path) -> None:
    _, server = daemon
    with client(server.server_address) as c:
        assert c.status()["op"] == "status"
        assert c.history(job=5, limit=3) == []
        assert c.match("complete", "job", 5) == ("m.py",)
        assert c.wait(17, timeout=2) is True
        assert c.request({"op": "ping"})["ok"] is True
    assert server.requests[1] == {"op": "history", "job": 5, "limit": 3}
    assert server.requests[2]["op"] == "match" and server.requests[2]["job"] == {"id": 5}
    assert server.requests[3] == {"op": "wait", "seq": 17, "timeout": 2}
    refusing = stub(short_tmp / "r.sock", lambda doc: [INVALID])
    try:
        with client(short_tmp / "r.sock") as c, pytest.raises(Rejected, match="invalid_event"):
            c.status()
    finally:
        refusing.stop()


def test_a_thin_call_reopens_a_connection_the_daemon_closed(short_tmp: Path) -> None:
    path = short_tmp / "d.sock"
    server = stub(path, Daemon())
    with client(path) as c:
        assert c.status()["ok"]
        server.stop()  # a daemon restart: the client's connection is now dead
        os.unlink(path)
        server = stub(path, Daemon())
        assert c.status()["ok"]
    server.stop()


def test_subscribe_streams_lines_until_the_daemon_closes(short_tmp: Path) -> None:
    actions: list[Reply] = [{"op": "action", "seq": n, "action": "unblock"} for n in (3, 4)]
    server = stub(short_tmp / "s.sock", lambda doc: [{"ok": True}, *actions, CLOSE])
    try:
        with client(short_tmp / "s.sock") as c:
            assert list(c.subscribe(since=2)) == actions
    finally:
        server.stop()
    assert server.requests == [{"op": "subscribe", "since": 2}]


def test_importing_the_client_pulls_in_no_daemon_and_no_asyncio() -> None:
    code = (
        "import sys; from supervisord.client import Client; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('asyncio', 'yaml', 'sqlite3', 'uvloop', 'subprocess') or m.startswith("
        "('supervisord.daemon', 'supervisord.journal', 'supervisord.run', 'supervisord.cli.'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
