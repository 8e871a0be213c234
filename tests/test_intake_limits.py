"""Intake limits of a real daemon: the 1 MiB line cap (SPEC §3), the connection cap and the
open-file limit (issue 13)."""

from __future__ import annotations

import json
import os
import resource
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_harness import Client, Daemon, event, wait_for_file

MAX_LINE = 1 << 20  # SPEC §3: a request line is at most 1 MiB
TOUCH = "import os, pathlib\npathlib.Path(os.environ['QBDIR'], 'ran-' + os.environ['QB_EVENT_SEQ']).write_text('x')\n"  # noqa: E501
CONF = "touch.py = running-job-self\n"
LOOPS = ["asyncio", "uvloop"]
PING = b'{"op": "ping"}\n'


def padded_ping(size: int) -> bytes:
    """A ping request line of exactly ``size`` bytes, its newline not counted."""
    head, tail = b'{"op": "ping", "pad": "', b'"}'
    return head + b"x" * (size - len(head) - len(tail)) + tail + b"\n"


def outcome(reply: dict[str, Any]) -> object:
    return True if reply["ok"] else reply["error"]["code"]


def exchange(c: Client, data: bytes, count: int) -> list[dict[str, Any]]:
    """Send ``data`` from a thread while this one reads ``count`` replies: a daemon that
    stops reading until its replies are read cannot deadlock the test."""
    sender = threading.Thread(target=c.send_raw, args=(data,))
    sender.start()
    try:
        return [c.read() for _ in range(count)]
    finally:
        sender.join()


# -- the line cap ------------------------------------------------------------------------


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("excess", [1, 100, 70_000])
def test_overlong_line_with_its_newline_in_one_send_is_too_large(
    daemon_factory: Callable[..., Daemon], loop: str, excess: int
) -> None:
    d = daemon_factory({"touch.py": TOUCH}, CONF, loop=loop)
    with d.connect() as c:
        replies = exchange(c, padded_ping(MAX_LINE + excess) + PING, 2)
    assert [outcome(r) for r in replies] == ["too_large", True]
    assert str(MAX_LINE) in replies[0]["error"]["message"]


def test_a_line_of_exactly_the_cap_is_served(daemon_factory: Callable[..., Daemon]) -> None:
    d = daemon_factory({"touch.py": TOUCH}, CONF)
    with d.connect() as c:
        replies = exchange(c, padded_ping(MAX_LINE) + PING, 2)
    assert [outcome(r) for r in replies] == [True, True]


@pytest.mark.parametrize("loop", LOOPS)
def test_overlong_lines_among_events_each_get_their_own_reply_in_order(
    daemon_factory: Callable[..., Daemon], loop: str
) -> None:
    d = daemon_factory({"touch.py": TOUCH}, CONF, loop=loop)
    docs = [event("running", job=i, event_id=f"ol-{i}") for i in range(4)]
    ev = [json.dumps(doc).encode() + b"\n" for doc in docs]
    lines = [
        ev[0], padded_ping(MAX_LINE + 1), ev[1], padded_ping(MAX_LINE + 5000), PING,
        padded_ping(3 * MAX_LINE), padded_ping(MAX_LINE), ev[2], padded_ping(MAX_LINE + 2), ev[3],
    ]  # fmt: skip
    with d.connect() as c:
        replies = exchange(c, b"".join(lines), len(lines))
        assert c.request({"op": "ping"})["ok"] is True
    assert [outcome(r) for r in replies] == [
        True, "too_large", True, "too_large", True, "too_large", True, True, "too_large", True,
    ]  # fmt: skip
    assert [r["event_id"] for r in replies if "event_id" in r] == [f"ol-{i}" for i in range(4)]


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_a_streamed_overlong_line_is_discarded_not_buffered(
    daemon_factory: Callable[..., Daemon],
) -> None:
    d = daemon_factory({"touch.py": TOUCH}, CONF)
    assert d.proc is not None
    with d.connect() as c:
        assert c.request({"op": "ping"})["ok"] is True
        before = peak_rss_kib(d.proc.pid)
        chunk = b"x" * (1 << 20)

        def send() -> None:
            c.send_raw(b'{"op": "ping", "pad": "')
            for _ in range(64):  # 64 MiB: a daemon keeping it would show it in its peak
                c.send_raw(chunk)
            c.send_raw(b'"}\n' + PING)

        sender = threading.Thread(target=send)
        sender.start()
        replies = [c.read(), c.read()]
        sender.join()
    assert [outcome(r) for r in replies] == ["too_large", True]
    assert peak_rss_kib(d.proc.pid) - before < 16 << 10  # KiB: the cap and a read or two


# -- connections and the open-file limit --------------------------------------------------


def nofile(soft: int, hard: int) -> Callable[[], None]:
    """A preexec_fn starting the daemon under RLIMIT_NOFILE (soft, hard)."""
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def start_limited(
    factory: Callable[..., Daemon], soft: int, hard: int, extra: str = "", loop: str = "asyncio"
) -> Daemon:
    qbconf = "supervisor_callback_concurrency = 2\n" + extra
    d = factory({"touch.py": TOUCH}, CONF, qbconf, start=False, loop=loop)
    return d.start(preexec_fn=nofile(soft, hard))


def open_idle(d: Daemon, count: int) -> list[Client]:
    """``count`` connections, each known to the daemon (it answered a ping on each)."""
    clients = []
    for _ in range(count):
        c = Client(d.sock, timeout=10)
        clients.append(c)
        assert c.request({"op": "ping"})["ok"] is True
    return clients


def close_all(clients: list[Client]) -> None:
    """Half-close each and read to the end: the daemon has closed it when this returns."""
    for c in clients:
        c.sock.shutdown(socket.SHUT_WR)
        assert c.file.read() == b""
        c.close()


def refused(d: Daemon) -> dict[str, Any]:
    """What a new client gets for its event when the daemon is full: one line, then the end."""
    with Client(d.sock, timeout=10) as c:
        c.send_raw(json.dumps(event("running", job=99)).encode() + b"\n")
        reply = c.read()
        assert c.file.readline() == b""
        return reply


def events_run(d: Daemon, count: int) -> None:
    """``count`` new clients each get their event acknowledged and its callback run."""
    for i in range(count):
        with d.connect() as c:
            reply = c.request(event("running", job=500 + i))
            assert reply["ok"] is True and reply["matched"] == ["touch.py"], reply
            assert c.request({"op": "wait", "seq": reply["seq"], "timeout": 30})["done"] is True
        wait_for_file(d.root / f"ran-{reply['seq']}")


def warnings_naming(d: Daemon, word: str) -> list[str]:
    return [line for line in d.read_log().splitlines() if "WARNING" in line and word in line]


@pytest.mark.parametrize("loop", LOOPS)
def test_a_connection_past_the_cap_gets_one_unavailable_line(
    daemon_factory: Callable[..., Daemon], loop: str
) -> None:
    d = start_limited(
        daemon_factory, 256, 256, "supervisor_event_max_connections = 16\n", loop=loop
    )
    idle = open_idle(d, 16)
    reply = refused(d)
    assert reply == {
        "ok": False,
        "error": {
            "code": "unavailable",
            "message": "too many connections (16 open; supervisor_event_max_connections = 16)",
        },
    }
    with Client(d.sock, timeout=10) as c:  # a client that reads before it writes
        assert c.read()["error"]["code"] == "unavailable"
        c.send_raw(json.dumps(event("running", job=98)).encode() + b"\n")  # no broken pipe
        assert c.file.readline() == b""
    lines = warnings_naming(d, "supervisor_event_max_connections=16")
    assert len(lines) == 1, d.read_log()  # at most one line a minute
    close_all(idle)
    events_run(d, 20)


def test_reload_changes_the_connection_cap(daemon_factory: Callable[..., Daemon]) -> None:
    d = start_limited(daemon_factory, 256, 256, "supervisor_event_max_connections = 2\n")
    idle = open_idle(d, 2)
    assert refused(d)["error"]["message"].endswith("supervisor_event_max_connections = 2)")
    text = d.conf.read_text()
    d.conf.write_text(text.replace("max_connections = 2", "max_connections = 3"))
    assert idle[0].request({"op": "reload"})["ok"] is True
    idle += open_idle(d, 1)
    assert refused(d)["error"]["message"].endswith("supervisor_event_max_connections = 3)")
    close_all(idle)


def test_the_open_file_limit_caps_connections(daemon_factory: Callable[..., Daemon]) -> None:
    d = start_limited(daemon_factory, 256, 256)  # supervisor_event_max_connections = 4096
    idle: list[Client] = []
    for _ in range(256):
        c = Client(d.sock, timeout=10)
        reply = c.request({"op": "ping"})
        if not reply["ok"]:
            c.close()
            break
        idle.append(c)
    else:
        raise AssertionError("256 connections served under a limit of 256 open files")
    cap = len(idle)
    assert 0 < cap < 256 - 64  # room kept for the journal and the callbacks' pipes
    message = f"too many connections ({cap} open; supervisor_event_max_connections = {cap})"
    assert reply["error"] == {"code": "unavailable", "message": message}
    assert warnings_naming(d, f"supervisor_event_max_connections={cap}")
    close_all(idle)
    events_run(d, 10)


def soft_and_hard(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-file limit")


def test_the_soft_open_file_limit_is_raised_to_the_hard_limit(
    daemon_factory: Callable[..., Daemon],
) -> None:
    d = start_limited(daemon_factory, 160, 1024, "supervisor_event_max_connections = 150\n")
    assert d.proc is not None
    assert soft_and_hard(d.proc.pid) == (1024, 1024)
    idle = open_idle(d, 150)  # more than a soft limit of 160 would leave room for
    assert refused(d)["error"]["message"].endswith("supervisor_event_max_connections = 150)")
    close_all(idle)


def lowest_free_fd(pid: int) -> int:
    used = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
    return next(fd for fd in range(len(used) + 1) if fd not in used)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_failed_accept_is_answered_logged_and_accepting_goes_on(
    daemon_factory: Callable[..., Daemon], loop: str
) -> None:
    d = start_limited(daemon_factory, 256, 256, loop=loop)
    assert d.proc is not None
    pid = d.proc.pid
    close_all(open_idle(d, 1))  # served, and its descriptor closed again: no hole opens later
    # Every descriptor the daemon might open next is at or above the soft limit: the
    # next accept fails with EMFILE.
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (lowest_free_fd(pid), 256))
    try:
        for _ in range(3):
            with Client(d.sock, timeout=10) as c:  # it is answered before it says anything
                reply = c.read()
            assert reply["ok"] is False and reply["error"]["code"] == "unavailable", reply
            assert "open files" in reply["error"]["message"]
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (256, 256))
    lines = warnings_naming(d, "accept failed")
    assert len(lines) == 1 and "EMFILE" in lines[0], d.read_log()
    events_run(d, 5)
