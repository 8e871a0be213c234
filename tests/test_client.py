"""The socket client and socket discovery, against an in-test Unix-socket stub server.

The stub answers canned replies at our own boundary (the wire protocol of SPEC §3);
end-to-end tests against the real daemon live in the integration tests elsewhere.
"""

from __future__ import annotations

import json
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from supervisord.cli.events import (
    event_request,
    parse_set,
    read_ndjson,
    send_entries,
    split_event_spec,
)
from supervisord.client import Client
from supervisord.client.connection import Connection, ProtocolError, Unreachable
from supervisord.client.locate import find_qbconf, find_socket

Reply = dict[str, Any] | bytes
Answer = Callable[[dict[str, Any]], list[Reply] | None]
CLOSE: Final = b""  # in an answer: close the connection there


def echo(doc: dict[str, Any]) -> list[Reply] | None:
    """Reply ok with the request echoed; ``{"op": "close"}`` closes the connection."""
    return None if doc.get("op") == "close" else [{"ok": True, "echo": doc}]


class _Handler(socketserver.StreamRequestHandler):
    server: StubServer

    def handle(self) -> None:
        try:
            self._answer_each_line()
        except ConnectionError:
            return  # the client went away mid-batch: nothing more to answer

    def _answer_each_line(self) -> None:
        for line in self.rfile:
            doc = json.loads(line)
            self.server.requests.append(doc)
            for reply in self.server.answer(doc) or [CLOSE]:
                if reply == CLOSE:
                    return
                self.wfile.write(reply if isinstance(reply, bytes) else _line(reply))


def _line(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc) + "\n").encode()


class StubServer(socketserver.ThreadingUnixStreamServer):
    """A daemon stand-in: listens as soon as it is built, answers from ``answer``."""

    daemon_threads = True

    def __init__(self, path: str, answer: Answer) -> None:
        self.answer = answer
        self.requests: list[dict[str, Any]] = []
        super().__init__(path, _Handler)
        self.thread = threading.Thread(target=self.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join()


def stub(path: Path, answer: Answer = echo) -> StubServer:
    return StubServer(str(path), answer)


@pytest.fixture
def echo_server(short_tmp: Path) -> Iterator[StubServer]:
    server = stub(short_tmp / "s.sock")
    yield server
    server.stop()


def test_request_round_trip(echo_server: StubServer) -> None:
    with Connection(str(echo_server.server_address), timeout=10) as client:
        assert client.request({"op": "ping"}) == {"ok": True, "echo": {"op": "ping"}}
        assert client.request({"op": "status", "é": "ü"})["echo"]["é"] == "ü"
    assert echo_server.requests == [{"op": "ping"}, {"op": "status", "é": "ü"}]


def test_pipeline_large_batch_keeps_order(echo_server: StubServer) -> None:
    # Far more than the socket buffers hold: sending must overlap reading.
    docs = [{"op": "event", "n": n, "pad": "x" * 200} for n in range(5000)]
    with Connection(str(echo_server.server_address), timeout=30) as client:
        replies = list(client.pipeline(docs))
        assert client.request({"op": "ping"})["ok"] is True  # connection still usable
    assert [r["echo"]["n"] for r in replies] == list(range(5000))


def test_pipeline_abandoned_midway_closes_cleanly(echo_server: StubServer) -> None:
    client = Connection(str(echo_server.server_address), timeout=30)
    replies = client.pipeline({"n": n, "pad": "y" * 1000} for n in range(20000))
    assert next(replies)["echo"]["n"] == 0
    replies.close()  # must not hang on a sender blocked in sendall
    client.close()


def test_unreachable_no_file(short_tmp: Path) -> None:
    path = str(short_tmp / "missing.sock")
    with pytest.raises(Unreachable) as info:
        Connection(path, timeout=5)
    assert info.value.path == path
    assert "no socket file" in info.value.reason


def test_unreachable_nobody_listening(short_tmp: Path) -> None:
    path = str(short_tmp / "dead.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(path)  # the file exists, but no listen(): connect is refused
        with pytest.raises(Unreachable) as info:
            Connection(path, timeout=5)
    assert "connection refused" in info.value.reason


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        pytest.param(lambda doc: None, "closed the connection", id="closed"),
        pytest.param(lambda doc: [b"not json\n"], "not JSON", id="not-json"),
        pytest.param(lambda doc: [b"[1, 2]\n"], "not a JSON object", id="not-object"),
    ],
)
def test_protocol_errors(short_tmp: Path, answer: Answer, match: str) -> None:
    server = stub(short_tmp / "p.sock", answer)
    try:
        with (
            Connection(str(short_tmp / "p.sock"), timeout=10) as client,
            pytest.raises(ProtocolError, match=match),
        ):
            client.request({"op": "ping"})
    finally:
        server.stop()


def test_stream_reads_until_close(short_tmp: Path) -> None:
    lines: list[Reply] = [{"op": "run", "n": n} for n in range(3)]
    server = stub(short_tmp / "t.sock", lambda doc: [{"ok": True}, *lines, CLOSE])
    try:
        with Connection(str(short_tmp / "t.sock"), timeout=10) as client:
            assert client.request({"op": "tail"}) == {"ok": True}
            assert list(client.stream()) == lines
    finally:
        server.stop()


def acking(doc: dict[str, Any]) -> list[Reply] | None:
    """An event's ack as the daemon gives it: its seq is its job id."""
    seq = doc["job"]["id"]
    return [
        {"ok": True, "seq": seq, "event_id": doc["event_id"], "duplicate": False, "matched": []}
    ]


def test_send_entries_orders_local_errors(short_tmp: Path) -> None:
    server = stub(short_tmp / "e.sock", acking)
    text = ['{"job": {"id": 1}}\n', "\n", "oops\n", "[3]\n", '{"job": {"id": 5}}\n', "{\n"]
    text.append('{"op": "status"}\n')
    try:
        with Client(str(short_tmp / "e.sock"), env={}) as client:
            results = list(send_entries(client, read_ndjson(text)))
    finally:
        server.stop()
    assert [(n, r["ok"]) for n, r in results] == [
        (1, True),
        (3, False),
        (4, False),
        (5, True),
        (6, False),
        (7, False),
    ]
    assert results[1][1]["error"]["code"] == "bad_json"
    assert results[3][1]["seq"] == 5
    assert "emit sends events only" in results[5][1]["error"]["message"]
    assert [r["job"]["id"] for r in server.requests] == [1, 5]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        pytest.param("failed-job", ("failed", "job"), id="job"),
        pytest.param("complete-work", ("complete", "work"), id="work"),
        pytest.param("done-sub-job", ("done", "sub-job"), id="first-dash-only"),
        pytest.param("complete", None, id="no-dash"),
        pytest.param("-job", None, id="no-name"),
        pytest.param("complete-", None, id="no-type"),
    ],
)
def test_split_event_spec(spec: str, expected: tuple[str, str] | None) -> None:
    if expected is None:
        with pytest.raises(ValueError, match="NAME-TYPE"):
            split_event_spec(spec)
    else:
        assert split_event_spec(spec) == expected


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        pytest.param("user=alice", ("user", "alice"), id="string"),
        pytest.param("pid=12", ("pid", 12), id="int"),
        pytest.param("x=1.5", ("x", 1.5), id="float"),
        pytest.param("ok=true", ("ok", True), id="bool"),
        pytest.param("n=null", ("n", None), id="null"),
        pytest.param('l=["a", 1]', ("l", ["a", 1]), id="list"),
        pytest.param("label=a=b", ("label", "a=b"), id="first-equals"),
        pytest.param("empty=", ("empty", ""), id="empty-value"),
        pytest.param("novalue", None, id="no-equals"),
        pytest.param("=1", None, id="no-key"),
    ],
)
def test_parse_set(item: str, expected: tuple[str, Any] | None) -> None:
    if expected is None:
        with pytest.raises(ValueError, match="key=value"):
            parse_set(item)
    else:
        assert parse_set(item) == expected


def test_event_request_fields() -> None:
    doc = event_request(
        "event",
        "complete-work",
        12,
        ["user=bob", "id=99", "pgrp=12"],
        {"work": "frame5", "subid": None, "host": None, "event_id": "e1", "time": 5.0},
    )
    assert doc == {
        "op": "event",
        "name": "complete",
        "type": "work",
        "job": {"user": "bob", "id": 12, "pgrp": 12},
        "work": "frame5",
        "event_id": "e1",
        "time": 5.0,
    }
    with pytest.raises(ValueError, match="--job"):
        event_request("event", "complete-job", None, [], {})


def _touch(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    return str(path)


@pytest.mark.parametrize(
    ("given", "env_keys", "files", "expected"),
    [
        pytest.param("A", {"QB_CONF": "B"}, ["etc", "qbdir"], "A", id="flag-first"),
        pytest.param(None, {"QB_CONF": "B"}, ["etc", "qbdir"], "B", id="env-second"),
        pytest.param(None, {}, ["etc", "qbdir"], "etc", id="etc-third"),
        pytest.param(None, {}, ["qbdir"], "qbdir", id="qbdir-fourth"),
        pytest.param(None, {"QB_CONF": ""}, [], None, id="none-found"),
    ],
)
def test_find_qbconf(
    short_tmp: Path,
    given: str | None,
    env_keys: dict[str, str],
    files: list[str],
    expected: str | None,
) -> None:
    paths = {"etc": short_tmp / "etc.conf", "qbdir": short_tmp / "q" / "etc" / "qb.conf"}
    for name in files:
        _touch(paths[name])
    env = {"QBDIR": str(short_tmp / "q"), **env_keys}
    found = find_qbconf(given, env, etc_path=str(paths["etc"]))
    assert found == (str(paths[expected]) if expected in paths else expected)


def test_find_socket_flag_and_default() -> None:
    assert find_socket("/x.sock", "/nonexistent/qb.conf", {}) == ("/x.sock", "given by --socket")
    path, how = find_socket(None, None, {"QBDIR": "/q"})
    assert path == "/q/run/callbacks.sock"
    assert "default" in how
    assert find_socket(None, None, {})[0] == "/usr/local/pfx/qube/run/callbacks.sock"


def test_find_socket_from_qbconf(short_tmp: Path) -> None:
    pytest.importorskip("supervisord.daemon.load")
    conf = short_tmp / "qb.conf"
    conf.write_text('supervisor_event_socket = "$QBDIR/r/cb.sock"\n')
    path, how = find_socket(None, str(conf), {"QBDIR": str(short_tmp)})
    assert path == f"{short_tmp}/r/cb.sock"
    assert str(conf) in how
