"""What an operator sees and relies on: metrics, tail, backpressure, mail, log formats."""

from __future__ import annotations

import json
import queue
import shutil
import socket
import threading
from collections.abc import Callable, Iterator
from email import message_from_bytes
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from tests.daemon_harness import DEADLINE, REPO, Daemon, event

# Perl: cheap to start, so thousands of runs after the release take seconds.
HOLD = 'until (-e "$ENV{QBDIR}/release") { select(undef, undef, undef, 0.02); }\n'


def test_metrics_are_prometheus_text(daemon_factory: Callable[..., Daemon]) -> None:
    d = daemon_factory({"a.py": "import sys; sys.exit(2)\n"}, "a.py = complete-job-self\n")
    seq = d.request(event("complete"))["seq"]
    assert d.request({"op": "wait", "seq": seq, "timeout": DEADLINE})["done"]
    text = d.request({"op": "metrics"})["text"]
    lines = text.splitlines()
    assert "qbcallbacks_events_total 1" in lines
    assert "qbcallbacks_runs_failed_total 1" in lines
    assert 'qbcallbacks_callback_failed_total{callback="a.py"} 1' in lines
    assert "# TYPE qbcallbacks_runs_total counter" in lines
    # A fleet of one on SQLite: this daemon, up, with its heartbeat age (SPEC §8).
    member = [ln for ln in lines if ln.startswith("qbcallbacks_member_heartbeat_age_seconds{")]
    assert len(member) == 1 and 'role="all",state="up"} 0.0' in member[0], member


def test_tail_streams_spawned_and_exited(daemon_factory: Callable[..., Daemon]) -> None:
    d = daemon_factory({"a.py": "pass\n"}, "a.py = complete-job-self\n")
    with d.connect() as tail:
        assert tail.request({"op": "tail"}) == {"ok": True}
        seq = d.request(event("complete", job=3))["seq"]
        spawned, exited = tail.read(), tail.read()
    assert (spawned["state"], spawned["seq"], spawned["callback"]) == ("spawned", seq, "a.py")
    assert (exited["state"], exited["outcome"], exited["job_id"]) == ("exited", "ok", 3)


def test_backpressure_delays_replies_and_loses_nothing(
    daemon_factory: Callable[..., Daemon],
) -> None:
    d = daemon_factory(
        {"hold.pl": HOLD}, "hold.pl = complete-job-self\n",
        qbconf_extra="supervisor_callback_concurrency = 8\nsupervisor_callback_queue_limit = 4\n"
        "supervisor_callback_per_job_order = false\n",
    )  # fmt: skip
    n = 5000  # more than one 256 KiB read of the socket, so the pause shows
    with d.connect() as c:
        data = b"".join(json.dumps(event("complete", job=j)).encode() + b"\n" for j in range(n))
        # From a thread: the daemon stops reading, so a blocking send would never return.
        sender = threading.Thread(target=c.send_raw, args=(data,))
        sender.start()
        replies: queue.Queue[dict[str, Any]] = queue.Queue()
        reader = threading.Thread(target=lambda: [replies.put(c.read()) for _ in range(n)])
        reader.start()
        acked = 0
        try:
            while acked < n:
                assert replies.get(timeout=2.0)["ok"]
                acked += 1
        except queue.Empty:
            pass  # no reply for 2 s: intake is paused
        assert acked < n, "intake must pause while the queue is over its limit"
        status = d.request({"op": "status"})
        assert 0 < status["queued"] < n, status["queued"]
        (d.root / "release").write_text("go")
        while acked < n:
            assert replies.get(timeout=DEADLINE)["ok"]
            acked += 1
        sender.join(DEADLINE)
        reader.join(DEADLINE)
    assert d.request({"op": "wait", "seq": n, "timeout": DEADLINE})["done"]
    assert d.request({"op": "status"})["runs_total"] == n


class Inbox:
    """Collects messages delivered to a real local SMTP server."""

    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.rcpt_tos, message_from_bytes(envelope.content)))
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, port
    controller.stop()


def test_shipped_mail_status_sends_a_real_mail(
    daemon_factory: Callable[..., Daemon], smtp: tuple[Inbox, int]
) -> None:
    inbox, port = smtp
    d = daemon_factory(
        {"mail-status.qcb": (REPO / "callback" / "mail-status.qcb").read_text()},
        "mail-status.qcb = done-job-self\n", start=False,
        qbconf_extra=f"mail_host = 127.0.0.1\nmail_port = {port}\nmail_from = qube@farm\n"
        "mail_job_status_format = job.mail\n",
    )  # fmt: skip
    shutil.copy(REPO / "etc" / "job.mail", d.root / "etc" / "job.mail")
    d.start()
    doc = event("failed", job=4321)
    doc["job"].update(name="shot010_lighting", user="alice", mailaddress="alice@example.com")
    seq = d.request(doc)["seq"]
    assert d.request({"op": "wait", "seq": seq, "timeout": DEADLINE})["done"]
    runs = d.request({"op": "history", "job": 4321})["runs"]
    assert runs[0]["outcome"] == "ok", runs
    assert len(inbox.messages) == 1
    rcpt, msg = inbox.messages[0]
    assert rcpt == ["alice@example.com"]
    assert "4321" in msg["Subject"]
    assert "shot010_lighting" in msg.get_payload()


def test_json_log_format_and_level_from_qbconf(daemon_factory: Callable[..., Daemon]) -> None:
    d = daemon_factory(
        {"a.py": "pass\n"}, "a.py = complete-job-self\n", start=False,
        qbconf_extra="supervisor_callback_log_level = debug\n",
    )  # fmt: skip
    d.extra_args = ["--log-format", "json"]
    d.start()
    seq = d.request(event("complete", job=11, event_id="json-1"))["seq"]
    assert d.request({"op": "wait", "seq": seq, "timeout": DEADLINE})["done"]
    d.stop()
    records = [json.loads(line) for line in d.read_log().splitlines()]
    messages = [r["message"] for r in records]
    assert any(m.startswith("received seq=") and "json-1" in m for m in messages)  # debug
    assert any(m.startswith("exited ") and "job=11" in m for m in messages)
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)


def test_a_resumed_connection_that_congests_again_is_resumed_again(
    daemon_factory: Callable[..., Daemon],
) -> None:
    # A tiny limit and requests that flush events mid-read (each ping does): the connection
    # meets congestion again while it catches up, many times over; every reply must arrive.
    d = daemon_factory(
        {"a.qcb": "unblock-self\n"}, "a.qcb = complete-job-self\n",
        qbconf_extra="supervisor_callback_queue_limit = 2\n",
    )  # fmt: skip
    docs: list[dict[str, Any]] = []
    for j in range(1500):
        docs += [event("complete", job=j), {"op": "ping"}]
    with d.connect() as c:
        sender = threading.Thread(
            target=c.send_raw, args=(b"".join(json.dumps(x).encode() + b"\n" for x in docs),)
        )
        sender.start()
        replies = [c.read() for _ in docs]
        sender.join(DEADLINE)
    assert all(r["ok"] for r in replies)
    assert [r["seq"] for r in replies[::2]] == list(range(1, 1501))
