"""A fleet's runs' actions reach the subscribers of any member (SPEC §3.2, §8): a bridge
subscribed to the intake member gets what callbacks on the executors asked for."""

from __future__ import annotations

import json
import socket

from tests.daemon_harness import DEADLINE
from tests.fleet_harness import Fleet, job_event, stream

UNBLOCK = "import qb\nqb.unblock(qb.jobid() + 1000)\n"


def read_lines(sock: socket.socket, count: int) -> list[dict[str, object]]:
    buf = b""
    lines: list[dict[str, object]] = []
    while len(lines) < count:
        chunk = sock.recv(65536)
        assert chunk, f"subscription closed after {lines}"
        buf += chunk
        *done, buf = buf.split(b"\n")
        lines += [json.loads(line) for line in done if line]
    return lines


def test_actions_of_runs_on_executors_reach_a_subscriber_of_the_intake_member(
    pg_url: str,
) -> None:
    with Fleet(pg_url, {"u.py": UNBLOCK}, "u.py = complete-job-self\n") as fleet:
        front = fleet.add("intake")
        fleet.add("executor")
        fleet.add("executor")
        sub = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sub.settimeout(DEADLINE)
        sub.connect(front.sock)
        sub.sendall(b'{"op": "subscribe"}\n')
        assert read_lines(sub, 1) == [{"ok": True}]
        replies = stream(front.sock, [job_event(f"a{i}", 10 + i) for i in range(6)])
        assert all(r["ok"] for r in replies), replies
        lines = read_lines(sub, 6)
        assert sorted((line["job_id"], line["action"], line["target"]) for line in lines) == [
            (10 + i, "unblock", str(1010 + i)) for i in range(6)
        ]
        assert all(line["op"] == "action" and isinstance(line["id"], int) for line in lines)
        ids = [line["id"] for line in lines]
        assert ids == sorted(set(ids))  # each once, in the journal's order
        sub.close()
