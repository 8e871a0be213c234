"""The intake protocol over a real socket of a real daemon process (SPEC §3)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from supervisord.daemon.replies import encode, encode_ack, encode_acks
from supervisord.daemon.server import WINDOW
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


def test_ack_batch_is_each_ack_in_turn() -> None:
    replies = [p.values[0] for p in ACKS]
    assert encode_acks(replies) == b"".join(encode(r) for r in replies)  # type: ignore[arg-type]


# Lines the server's one-pass parsing of a read must leave to json.loads, with what
# json.loads makes of each: True for a reply with "ok": true, else the error code.
ODD_LINES = [
    pytest.param(b'{"op": "ping"}\r', True, id="crlf"),
    pytest.param(b'  {"op": "ping"} \t', True, id="blanks"),
    pytest.param(b'\xef\xbb\xbf{"op": "ping"}', True, id="utf8-bom"),
    pytest.param('{"op": "ping"}'.encode("utf-16-le"), True, id="utf16"),
    pytest.param(b'{"op": "ping"} x', "bad_json", id="extra-data"),
    pytest.param(b'{"op": "ping"}{}', "bad_json", id="two-objects"),
    pytest.param(b'{"op":', "bad_json", id="cut"),
    pytest.param(b"[" * 100_000, "bad_json", id="nested-too-deeply"),
    pytest.param(b"7", "bad_json", id="number"),
    pytest.param(b"", "bad_json", id="empty"),
    pytest.param(b'{"name": "complete", "type": "job", "job": {"id": "1"}}', "invalid_event",
                 id="invalid-event"),
]  # fmt: skip


def outcome(reply: dict[str, object]) -> object:
    error = reply.get("error")
    return True if reply["ok"] else error["code"] if isinstance(error, dict) else None


@pytest.mark.parametrize(("line", "want"), ODD_LINES)
def test_odd_line_among_events_in_one_read(daemon: Daemon, line: bytes, want: object) -> None:
    before, after = (json.dumps(event("running", event_id=f"odd-{i}")).encode() for i in (1, 2))
    with daemon.connect() as c:
        c.send_raw(before + b"\n" + line + b"\n" + after + b"\n")
        replies = [c.read() for _ in range(3)]
    assert [outcome(r) for r in replies] == [True, want, True]
    assert [r.get("event_id") for r in replies[::2]] == ["odd-1", "odd-2"]


def test_an_object_across_two_lines_is_two_bad_lines(daemon: Daemon) -> None:
    with daemon.connect() as c:
        c.send_raw(b'{"op":\n"ping"}\n{"op": "ping"}\n')
        assert [outcome(c.read()) for _ in range(3)] == ["bad_json", "bad_json", True]


def test_a_read_that_is_not_utf8_is_answered_line_by_line(daemon: Daemon) -> None:
    lines = [event("running", event_id="u-1"), event("running", event_id="u-2")]
    data = [json.dumps(d).encode() + b"\n" for d in lines]
    with daemon.connect() as c:
        c.send_raw(data[0] + b'{"op": "ping", "x": "\xff"}\n' + data[1])
        assert [outcome(c.read()) for _ in range(3)] == [True, "bad_json", True]


def test_a_pipeline_longer_than_the_window_is_answered_in_order(daemon: Daemon) -> None:
    # Reading stops at WINDOW unanswered events and resumes as commits answer them.
    n = 3 * WINDOW + 7
    docs = [event("running", job=i % 50, event_id=f"w-{i}") for i in range(n)]
    data = b"".join(json.dumps(d).encode() + b"\n" for d in docs)
    with daemon.connect() as c:
        # Written from a thread while this one reads: replies nobody reads stop intake too.
        sender = threading.Thread(target=c.send_raw, args=(data,))
        sender.start()
        replies = [c.read() for _ in range(n)]
        sender.join()
        assert c.request({"op": "ping"})["ok"] is True
    assert [r["event_id"] for r in replies] == [d["event_id"] for d in docs]
    seqs = [r["seq"] for r in replies]
    assert seqs == list(range(seqs[0], seqs[0] + n))
