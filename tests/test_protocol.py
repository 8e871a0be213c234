"""The intake protocol over a real socket of a real daemon process (SPEC §3)."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from supervisord.server import encode, encode_ack, parse_line
from tests.daemon_harness import Client, Daemon, event, wait_for_file

TOUCH = "import os, pathlib\npathlib.Path(os.environ['QBDIR'], 'ran-' + os.environ['QB_EVENT_SEQ']).write_text('x')\n"  # noqa: E501
CONF = "touch.py = complete-job-self\nother.py = failed-job-42\n"


@pytest.fixture
def daemon(daemon_factory: Callable[..., Daemon]) -> Daemon:
    return daemon_factory({"touch.py": TOUCH, "other.py": "pass\n"}, CONF)


BAD_REQUESTS = [
    pytest.param(b"{nope\n", "bad_json", id="bad-json"),
    pytest.param(b"[1, 2]\n", "bad_json", id="not-an-object"),
    pytest.param(b'{"op": "event", "name": "\xff\xfe"}\n', "bad_json", id="invalid-utf8"),
    pytest.param(b'{"op": "frobnicate"}\n', "unknown_op", id="unknown-op"),
    pytest.param(b'{"op": 7}\n', "unknown_op", id="op-not-a-string"),
    pytest.param(b'{"name": "complete", "type": "job"}\n', "invalid_event", id="no-job"),
    pytest.param(
        b'{"name": "complete", "type": "job", "job": {"id": "12"}}\n',
        "invalid_event",
        id="string-job-id",
    ),
    pytest.param(
        b'{"name": "complete", "type": "subjob", "job": {"id": 1}, "subid": 1.5}\n',
        "invalid_event",
        id="float-subid",
    ),
    pytest.param(
        b'{"name": "finished", "type": "job", "job": {"id": 1}}\n',
        "invalid_event",
        id="unknown-name",
    ),
    pytest.param(b'{"op": "wait"}\n', "invalid_event", id="wait-without-seq"),
    pytest.param(
        b'{"name": "complete", "type": "job", "job": {"id": 1}, "x": "\\ud800"}\n',
        "invalid_event",
        id="escaped-lone-surrogate",
    ),
    pytest.param(
        b'{"name": "complete", "type": "job", "job": {"id": 1}, "x": "\xed\xa0\x80"}\n',
        "invalid_event",
        id="raw-lone-surrogate",
    ),
]


@pytest.mark.parametrize(("line", "code"), BAD_REQUESTS)
def test_bad_request_gets_its_code_and_the_connection_stays_usable(
    daemon: Daemon, line: bytes, code: str
) -> None:
    with daemon.connect() as c:
        c.send_raw(line)
        reply = c.read()
        assert reply["ok"] is False
        assert reply["error"]["code"] == code
        assert reply["error"]["message"]
        assert c.request({"op": "ping"})["ok"] is True


def test_invalid_event_names_the_field(daemon: Daemon) -> None:
    reply = daemon.request({"name": "complete", "type": "job", "job": {"id": "12"}})
    assert "job.id" in reply["error"]["message"]


def test_two_mib_line_is_too_large_and_the_next_request_is_served(daemon: Daemon) -> None:
    with daemon.connect() as c:
        c.send_raw(b'{"op": "ping", "pad": "' + b"x" * (2 << 20) + b'"}\n')
        assert c.read()["error"]["code"] == "too_large"
        assert c.request({"op": "ping"})["ok"] is True


def test_pipelined_requests_are_answered_in_order(daemon: Daemon) -> None:
    docs = []
    for i in range(200):
        docs.append(event("running", job=i, event_id=f"pipe-{i}"))
        if i % 50 == 0:
            docs.append({"op": "ping"})
            docs.append({"op": "nope"})
    with daemon.connect() as c:
        c.send_raw(b"".join(json.dumps(d).encode() + b"\n" for d in docs))
        replies = [c.read() for _ in docs]
    for doc, reply in zip(docs, replies, strict=True):
        if doc.get("op") == "ping":
            assert reply["version"]
        elif doc.get("op") == "nope":
            assert reply["error"]["code"] == "unknown_op"
        else:
            assert reply["event_id"] == doc["event_id"]
    seqs = [r["seq"] for r in replies if "seq" in r]
    assert seqs == sorted(seqs) and len(set(seqs)) == 200


def test_event_runs_its_callback_and_wait_history_report_it(daemon: Daemon) -> None:
    reply = daemon.request(event("complete", job=7, event_id="e-7"))
    assert reply["ok"] and reply["matched"] == ["touch.py"] and reply["duplicate"] is False
    seq = reply["seq"]
    assert daemon.request({"op": "wait", "seq": seq, "timeout": 30})["done"] is True
    assert (daemon.root / f"ran-{seq}").exists()
    runs = daemon.request({"op": "history", "job": 7})["runs"]
    assert [(r["callback"], r["outcome"], r["seq"]) for r in runs] == [("touch.py", "ok", seq)]


def test_duplicate_event_id_runs_nothing(daemon: Daemon) -> None:
    first = daemon.request(event("complete", job=8, event_id="dup-1"))
    again = daemon.request(event("complete", job=8, event_id="dup-1"))
    assert again["duplicate"] is True and again["seq"] == first["seq"] and again["matched"] == []
    status = daemon.request({"op": "status"})
    assert status["events_total"] == 1


def test_match_is_a_dry_run(daemon: Daemon) -> None:
    reply = daemon.request({**event("failed", job=42), "op": "match"})
    assert reply == {"ok": True, "matched": ["other.py"]}
    assert daemon.request({"op": "status"})["events_total"] == 0


def test_status_and_callbacks(daemon: Daemon) -> None:
    status = daemon.request({"op": "status"})
    assert status["callbacks"] == 2 and status["config"]["socket"] == daemon.sock
    for key in ("version", "uptime_s", "running", "queued", "runs_total", "runs_failed"):
        assert key in status
    cbs = daemon.request({"op": "callbacks"})["callbacks"]
    assert cbs[0] == {
        "file": "touch.py", "dir": str((daemon.root / "callback").resolve()), "line": 1,
        "language": "python", "trigger": "complete-job-self",
    }  # fmt: skip


def test_wait_for_a_seq_not_yet_assigned_times_out_false(daemon: Daemon) -> None:
    reply = daemon.request({"op": "wait", "seq": 10_000, "timeout": 0.2})
    assert reply["done"] is False


def test_half_closed_client_still_gets_every_reply(daemon: Daemon) -> None:
    c = Client(daemon.sock)
    c.send_raw(b'{"op": "ping"}\n' * 3)
    c.sock.shutdown(socket.SHUT_WR)
    assert [c.read()["ok"] for _ in range(3)] == [True] * 3
    c.close()


def test_callback_output_lands_in_the_job_log(daemon_factory: Callable[..., Daemon]) -> None:
    d = daemon_factory(
        {"say.py": "print('hello from', qb.jobid())\n"}, "say.py = submit-job-self\n"
    )
    seq = d.request(event("submit", job=1234))["seq"]
    assert d.request({"op": "wait", "seq": seq, "timeout": 30})["done"]
    log = Path(d.root / "logs" / "job" / "1000" / "1234" / "1234.cb")
    text = wait_for_file(log)
    assert "hello from 1234" in text and "say.py" in text.splitlines()[0]


ACKS = [
    pytest.param(
        {"ok": True, "seq": 1, "event_id": "a", "duplicate": False, "matched": []}, id="new"
    ),
    pytest.param(
        {"ok": True, "seq": 7, "event_id": 'é"\\\u2028', "duplicate": True, "matched": []},
        id="escapes",
    ),
    pytest.param(
        {"ok": True, "seq": 2, "event_id": "b", "duplicate": False, "matched": ["a.py", "b é"]},
        id="matched",
    ),
    pytest.param({"ok": False, "error": {"code": "unavailable", "message": "m"}}, id="error"),
    pytest.param(
        {"ok": True, "seq": True, "event_id": "c", "duplicate": 1, "matched": []}, id="odd"
    ),
]


@pytest.mark.parametrize("reply", ACKS)
def test_ack_shortcut_writes_what_json_writes(reply: dict[str, object]) -> None:
    want = json.dumps(reply, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
    assert encode_ack(reply) == encode(reply) == want


LINES = [
    pytest.param(b'{"a": 1}', id="object"),
    pytest.param(b'{"a": "\xed\xa0\x80"}', id="lone-surrogate"),
    pytest.param(b'\xef\xbb\xbf{"a": 1}', id="utf8-bom"),
    pytest.param('{"a": 1}'.encode("utf-16-le"), id="utf16"),
    pytest.param(b'{"a": 1} x', id="extra-data"),
    pytest.param(b"{", id="cut"),
    pytest.param(b"[1]", id="array"),
]


@pytest.mark.parametrize("line", LINES)
def test_parse_line_is_json_loads(line: bytes) -> None:
    def outcome(parse: Callable[[bytes], object]) -> object:
        try:
            return parse(line)
        except ValueError as exc:
            return repr(exc)

    assert outcome(lambda b: parse_line(b)[0]) == outcome(json.loads)
