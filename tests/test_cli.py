"""The command line: parsing, discovery, exit codes and readable output (SPEC §5).

Client commands run against an in-test Unix-socket stub that answers canned replies
(our own boundary, the wire protocol of SPEC §3); end-to-end tests against the real
daemon live in the integration tests elsewhere.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest

from supervisord.cli.main import build_parser, main
from supervisord.core import textfmt
from tests.test_client import CLOSE, Reply, StubServer

RUN_OK = {
    "run_id": 7, "seq": 17, "event_id": "e-17", "callback": "a.py", "job_id": 1234,
    "started": 1764064000.0, "ended": 1764064000.25, "exit_code": 0, "signal": None,
    "outcome": "ok", "truncated": False, "log": "/l/1234.cb", "actions": [],
}  # fmt: skip
RUN_KILLED = RUN_OK | {"run_id": 8, "exit_code": None, "signal": 9, "outcome": "timeout"}
RUN_LIVE = RUN_OK | {"run_id": 9, "ended": None, "exit_code": None, "outcome": None}
CALLBACK = {
    "file": "a.py",
    "dir": "/cb",
    "line": 3,
    "language": "python",
    "trigger": "done-job-self",
}
STATUS = {
    "ok": True, "version": "0.1.0", "uptime_s": 12.5, "callbacks": 4, "running": 0,
    "queued": 0, "events_total": 17, "runs_total": 9, "runs_failed": 1,
    "config": {"qbconf": "/q/etc/qb.conf", "socket": "/q/run/callbacks.sock",
               "callback_path": ["/q/callback", "/site/cb"], "state_dir": "/q/state",
               "logpath": "/q/logs"},
}  # fmt: skip
RELOAD_ERRORS = ["/cb/callbacks.conf:3: unknown extension '.sh'", "/cb/callbacks.conf:5: no '='"]
RELOAD_FAILED = {
    "ok": False,
    "error": {"code": "invalid_config", "message": "2 errors; still serving the old table"},
    "errors": RELOAD_ERRORS,
}
TAIL = [
    {"op": "run", "state": "spawned", "run_id": 7, "seq": 17, "callback": "a.py", "job_id": 12},
    {"op": "run", "state": "exited", "run_id": 7, "seq": 17, "callback": "a.py", "job_id": 12,
     "outcome": "ok", "description": "exit status 0", "log": "/l/12.cb"},
]  # fmt: skip


def unknown_op(op: str) -> dict[str, Any]:
    return {"ok": False, "error": {"code": "unknown_op", "message": f"unknown op {op!r}"}}


def daemon(doc: dict[str, Any]) -> list[Reply] | None:
    """Canned replies; an event's seq is its job id, and ``wait`` is done below seq 100."""
    op = doc.get("op", "event")
    job_id = doc.get("job", {}).get("id") if isinstance(doc.get("job"), dict) else None
    replies: dict[str, dict[str, Any]] = {
        "status": STATUS,
        "callbacks": {"ok": True, "callbacks": [CALLBACK, CALLBACK | {"file": "b.pl", "line": 4}]},
        "history": {"ok": True, "runs": [RUN_LIVE, RUN_KILLED, RUN_OK]},
        "event": {"ok": True, "seq": job_id, "event_id": f"e-{job_id}", "duplicate": False,
                  "matched": ["a.py", "b.pl"]},
        "match": {"ok": True, "matched": []},
        "wait": {"ok": True, "done": doc.get("seq", 0) < 100},
        "reload": RELOAD_FAILED,
        "metrics": {"ok": True, "text": "qbcallbacks_up 1\n"},
    }  # fmt: skip
    if op == "event" and job_id == 999:
        return [{"ok": False, "error": {"code": "invalid_event", "message": "job.id: too big"}}]
    if op == "tail":
        return [{"ok": True}, *TAIL, CLOSE]
    return [replies.get(op, unknown_op(op))]


@pytest.fixture
def server(short_tmp: Path) -> Iterator[StubServer]:
    stub = StubServer(str(short_tmp / "d.sock"), daemon)
    yield stub
    stub.stop()


def run(
    capsys: pytest.CaptureFixture[str], argv: list[str], env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    code = main(argv, env=env if env is not None else {})
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        pytest.param(
            ["status"], {"command": "status", "json": False, "timeout": 30.0}, id="status"
        ),
        pytest.param(
            ["status", "--json", "--socket", "/s", "--config", "/c", "--timeout", "2"],
            {"json": True, "socket": "/s", "config": "/c", "timeout": 2.0},
            id="common-options",
        ),
        pytest.param(
            ["emit", "complete-job", "--job", "12", "--set", "a=1", "--set", "b=x", "--wait"],
            {"event": "complete-job", "job": 12, "set": ["a=1", "b=x"], "wait": True},
            id="emit",
        ),
        pytest.param(
            [
                "emit",
                "complete-work",
                "--job",
                "1",
                "--work",
                "f5",
                "--event-id",
                "X",
                "--time",
                "5.5",
                "--subid",
                "2",
                "--host",
                "h",
                "--wait-timeout",
                "3",
            ],
            {
                "work": "f5",
                "event_id": "X",
                "time": 5.5,
                "subid": 2,
                "host": "h",
                "wait_timeout": 3.0,
                "wait": False,
            },
            id="emit-all",
        ),
        pytest.param(["emit", "-"], {"event": "-", "job": None}, id="emit-stdin"),
        pytest.param(["match", "failed-job", "--job", "3"], {"event": "failed-job"}, id="match"),
        pytest.param(
            ["history", "--job", "5", "--callback", "a.py", "--outcome", "failed", "--limit", "3"],
            {"job": 5, "callback": "a.py", "outcome": "failed", "limit": 3},
            id="history",
        ),
        pytest.param(["history"], {"job": None, "limit": None}, id="history-bare"),
        pytest.param(
            ["serve", "--loop", "uvloop", "--log-level", "debug", "--log-format", "json"],
            {"loop": "uvloop", "log_level": "debug", "log_format": "json"},
            id="serve",
        ),
        pytest.param(
            ["serve"],
            {"loop": "auto", "log_level": None, "log_format": "text"},
            id="serve-defaults",
        ),
        pytest.param(
            ["simulate", "s.yaml", "--run"], {"scenario": "s.yaml", "run": True}, id="simulate"
        ),
        pytest.param(["check", "--config", "q"], {"config": "q"}, id="check"),
        pytest.param(["reload"], {"command": "reload"}, id="reload"),
        pytest.param(["callbacks"], {"command": "callbacks"}, id="callbacks"),
        pytest.param(["metrics"], {"command": "metrics"}, id="metrics"),
        pytest.param(["tail"], {"command": "tail"}, id="tail"),
    ],
)
def test_parse(argv: list[str], expected: dict[str, Any]) -> None:
    args = build_parser().parse_args(argv)
    assert {key: getattr(args, key) for key in expected} == expected


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param([], id="no-command"),
        pytest.param(["frobnicate"], id="unknown-command"),
        pytest.param(["--json", "status"], id="option-before-command"),
        pytest.param(["emit", "complete-job"], id="emit-without-job"),
        pytest.param(["emit", "complete", "--job", "1"], id="emit-no-type"),
        pytest.param(["emit", "complete-job", "--job", "x"], id="job-not-int"),
        pytest.param(["emit", "complete-job", "--job", "1", "--set", "novalue"], id="bad-set"),
        pytest.param(["match", "-", "--job", "1"], id="match-no-stdin"),
        pytest.param(["history", "--outcome", "great"], id="bad-outcome"),
        pytest.param(["serve", "--loop", "trio"], id="bad-loop"),
        pytest.param(["simulate"], id="simulate-no-file"),
        pytest.param(["status", "--timeout", "soon"], id="bad-timeout"),
    ],
)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, out, err = run(capsys, argv)
    assert code == 2
    assert "usage:" in err
    assert out == ""


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, ["emit", "--help"])
    assert code == 0
    assert "--wait-timeout" in out


def test_unreachable_missing_socket(capsys: pytest.CaptureFixture[str], short_tmp: Path) -> None:
    path = str(short_tmp / "gone.sock")
    code, _, err = run(capsys, ["status", "--socket", path])
    assert code == 69
    assert path in err
    assert "given by --socket" in err
    assert "no socket file" in err


def test_unreachable_nobody_listening(capsys: pytest.CaptureFixture[str], short_tmp: Path) -> None:
    path = str(short_tmp / "dead.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(path)
        argv = ["emit", "complete-job", "--job", "1", "--socket", path, "--deadline", "0"]
        code, _, err = run(capsys, argv)
    assert code == 69
    assert "connection refused" in err


def test_unreachable_default_socket(capsys: pytest.CaptureFixture[str], short_tmp: Path) -> None:
    if os.path.exists("/etc/qb.conf"):
        pytest.skip("/etc/qb.conf exists on this machine and would be used")
    code, _, err = run(capsys, ["status"], env={"QBDIR": str(short_tmp)})
    assert code == 69
    assert f"{short_tmp}/run/callbacks.sock" in err
    assert "default $QBDIR/run/callbacks.sock" in err


def test_socket_from_qbconf(
    capsys: pytest.CaptureFixture[str], server: StubServer, short_tmp: Path
) -> None:
    pytest.importorskip("supervisord.daemon.load")
    conf = short_tmp / "qb.conf"
    conf.write_text(f"supervisor_event_socket = {server.server_address}\n")
    code, out, _ = run(capsys, ["status"], env={"QB_CONF": str(conf), "QBDIR": str(short_tmp)})
    assert code == 0
    assert "events_total:" in out


@pytest.mark.parametrize(
    ("argv", "code", "shown", "request_doc"),
    [
        pytest.param(
            ["status"],
            0,
            ["version:              0.1.0", "config.callback_path: /q/callback, /site/cb"],
            {"op": "status"},
            id="status",
        ),
        pytest.param(
            ["callbacks"],
            0,
            [
                "FILE  LANGUAGE  TRIGGER        WHERE",
                "b.pl  python    done-job-self  /cb/callbacks.conf:4",
            ],
            {"op": "callbacks"},
            id="callbacks",
        ),
        pytest.param(
            ["history", "--job", "5", "--limit", "2"],
            0,
            ["RUN  SEQ  CALLBACK", "timeout", "SIGKILL", "0.250s", "running"],
            {"op": "history", "job": 5, "limit": 2},
            id="history",
        ),
        pytest.param(
            ["emit", "failed-job", "--job", "12", "--set", "user=bob"],
            0,
            ["seq=12 event_id=e-12 matched: a.py, b.pl"],
            {"op": "event", "name": "failed", "type": "job", "job": {"user": "bob", "id": 12}},
            id="emit",
        ),
        pytest.param(
            ["emit", "failed-job", "--job", "999"],
            1,
            [],
            {"op": "event", "name": "failed", "type": "job", "job": {"id": 999}},
            id="emit-invalid",
        ),
        pytest.param(
            ["match", "complete-work", "--job", "3", "--work", "f1"],
            0,
            ["matched: (none)"],
            {"op": "match", "name": "complete", "type": "work", "job": {"id": 3}, "work": "f1"},
            id="match",
        ),
        pytest.param(["reload"], 1, [], {"op": "reload"}, id="reload-failed"),
        pytest.param(["metrics"], 0, ["qbcallbacks_up 1"], {"op": "metrics"}, id="metrics"),
    ],
)
def test_commands(
    capsys: pytest.CaptureFixture[str],
    server: StubServer,
    argv: list[str],
    code: int,
    shown: list[str],
    request_doc: dict[str, Any],
) -> None:
    got, out, _ = run(capsys, [*argv, "--socket", str(server.server_address)])
    assert got == code
    for text in shown:
        assert text in out
    if argv[0] == "emit":  # the client gives every event an id and the time it was emitted
        sent = server.requests[0]
        assert isinstance(sent.pop("event_id"), str) and isinstance(sent.pop("time"), float)
    assert server.requests == [request_doc]


def test_error_reply_goes_to_stderr(capsys: pytest.CaptureFixture[str], server: StubServer) -> None:
    code, out, err = run(capsys, ["reload", "--socket", str(server.server_address)])
    assert code == 1
    assert out == ""
    assert err.splitlines() == [
        "error: invalid_config: 2 errors; still serving the old table",
        *RELOAD_ERRORS,
    ]


@pytest.mark.parametrize("op", ["frobnicate", "tail"])
def test_unknown_op_exits_1(capsys: pytest.CaptureFixture[str], short_tmp: Path, op: str) -> None:
    stub = StubServer(str(short_tmp / "u.sock"), lambda doc: [unknown_op(doc["op"])])
    try:
        code, _, err = run(
            capsys, ["metrics" if op != "tail" else "tail", "--socket", str(short_tmp / "u.sock")]
        )
    finally:
        stub.stop()
    assert code == 1
    assert "error: unknown_op:" in err


def test_json_prints_raw_replies(capsys: pytest.CaptureFixture[str], server: StubServer) -> None:
    socket_path = str(server.server_address)
    code, out, _ = run(capsys, ["status", "--json", "--socket", socket_path])
    assert code == 0
    assert json.loads(out) == STATUS
    code, out, _ = run(capsys, ["reload", "--json", "--socket", socket_path])
    assert code == 1
    assert json.loads(out) == RELOAD_FAILED


@pytest.mark.parametrize(
    ("job", "code", "last_line"),
    [
        pytest.param("12", 0, "done: every callback up to seq=12 finished", id="done"),
        pytest.param(
            "150", 1, "not done: callbacks up to seq=150 still running after 7 s", id="late"
        ),
    ],
)
def test_emit_wait(
    capsys: pytest.CaptureFixture[str], server: StubServer, job: str, code: int, last_line: str
) -> None:
    argv = ["emit", "done-job", "--job", job, "--wait", "--wait-timeout", "7"]
    got, out, _ = run(capsys, [*argv, "--socket", str(server.server_address)])
    assert got == code
    assert out.splitlines()[-1] == last_line
    assert server.requests[-1] == {"op": "wait", "seq": int(job), "timeout": 7.0}


def test_emit_stdin(
    capsys: pytest.CaptureFixture[str], server: StubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = [
        {"name": "submit", "type": "job", "job": {"id": 1}},
        "not json",
        {"name": "failed", "type": "job", "job": {"id": 999}},
        {"name": "complete", "type": "job", "job": {"id": 3}},
    ]
    text = "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))
    code, out, _ = run(capsys, ["emit", "-", "--wait", "--socket", str(server.server_address)])
    assert code == 1
    shown = out.splitlines()
    assert shown[0] == "seq=1 event_id=e-1 matched: a.py, b.pl"
    assert shown[1].startswith("line 2: error: bad_json: not JSON")
    assert shown[2] == "line 3: error: invalid_event: job.id: too big"
    assert shown[3] == "seq=3 event_id=e-3 matched: a.py, b.pl"
    assert shown[4].startswith("done:")
    assert server.requests[-1]["seq"] == 3  # waits for the highest seq acknowledged


def test_emit_spools_when_the_daemon_is_down_and_flush_delivers(
    capsys: pytest.CaptureFixture[str], short_tmp: Path
) -> None:
    path, spool = str(short_tmp / "d.sock"), str(short_tmp / "spool")
    argv = ["emit", "done-job", "--job", "4", "--socket", path, "--spool", spool]
    code, out, _ = run(capsys, [*argv, "--deadline", "0.1", "--wait"])
    assert code == 0
    assert out.startswith("spooled event_id=") and f"flush --spool {spool}" in out
    code, out, err = run(capsys, ["flush", "--spool", spool, "--socket", path, "--deadline", "0"])
    assert code == 69 and "1 left" in out and "no socket file there" in err
    stub = StubServer(path, daemon)
    try:
        code, out, _ = run(capsys, ["flush", "--spool", spool, "--socket", path])
        assert (code, out.strip()) == (0, f"{spool}: 1 delivered, 0 left")
        code, out, _ = run(capsys, ["flush", "--spool", spool, "--socket", path, "--json"])
        assert json.loads(out) == {"ok": True, "spool": spool, "delivered": 0, "rejected": 0,
                                   "left": 0, "busy": False}  # fmt: skip
    finally:
        stub.stop()
    assert [r["job"]["id"] for r in stub.requests] == [4]


@pytest.mark.parametrize("spooling", ["none", "unwritable"])
def test_emit_exits_69_when_neither_delivered_nor_spooled(
    capsys: pytest.CaptureFixture[str], short_tmp: Path, spooling: str
) -> None:
    (short_tmp / "f").write_text("")
    argv = ["emit", "done-job", "--job", "4", "--socket", str(short_tmp / "d.sock")]
    if spooling == "unwritable":
        argv += ["--spool", str(short_tmp / "f" / "spool")]
    code, out, err = run(capsys, [*argv, "--deadline", "0.1"])
    assert (code, out) == (69, "")
    assert "1 event not delivered in 0.1 s: no socket file there" in err
    assert ("spooling to" in err) is (spooling == "unwritable")


def test_emit_stdin_spools_every_line_while_the_daemon_is_down(
    capsys: pytest.CaptureFixture[str], short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = [
        {"name": "submit", "type": "job", "job": {"id": n}, "event_id": f"s{n}"} for n in (1, 2)
    ]
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(json.dumps(x) + "\n" for x in lines)))
    spool = short_tmp / "spool"
    argv = ["emit", "-", "--socket", str(short_tmp / "d.sock"), "--spool", str(spool)]
    code, out, _ = run(capsys, [*argv, "--deadline", "0"])
    assert code == 0
    assert [line.split()[1] for line in out.splitlines()] == ["event_id=s1", "event_id=s2"]
    stored = [json.loads(x)["event_id"] for x in (spool / "spool.ndjson").read_text().splitlines()]
    assert stored == ["s1", "s2"]


def test_emit_help_explains_deadline_and_spool(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, ["emit", "--help"])
    text = " ".join(out.split())
    assert code == 0
    assert "--deadline S" in text and "default: 60" in text
    assert "exits 0" in text and "Exit 69 only when neither worked" in text


def test_tail_follows_until_close(capsys: pytest.CaptureFixture[str], server: StubServer) -> None:
    code, out, _ = run(capsys, ["tail", "--socket", str(server.server_address)])
    assert code == 0
    assert out.splitlines()[1:] == [
        "run 7 seq=17 job=12 a.py spawned",
        "run 7 seq=17 job=12 a.py exited: ok (exit status 0) log=/l/12.cb",
    ]


@pytest.mark.parametrize(
    ("config", "env_qbdir", "message"),
    [
        pytest.param("missing.conf", False, "missing.conf", id="missing"),
        pytest.param(None, True, "no qb.conf", id="none-found"),
    ],
)
def test_serve_config_error_exits_78(
    capsys: pytest.CaptureFixture[str],
    short_tmp: Path,
    config: str | None,
    env_qbdir: bool,
    message: str,
) -> None:
    if config is None and os.path.exists("/etc/qb.conf"):
        pytest.skip("/etc/qb.conf exists on this machine and would be used")
    argv = ["serve"] + (["--config", str(short_tmp / config)] if config else [])
    code, _, err = run(capsys, argv, env={"QBDIR": str(short_tmp)} if env_qbdir else {})
    assert code == 78
    assert message in err


def test_check(capsys: pytest.CaptureFixture[str], short_tmp: Path) -> None:
    pytest.importorskip("supervisord.daemon.load")
    cbdir = short_tmp / "callback"
    cbdir.mkdir()
    (cbdir / "ok.py").write_text("print('hi')\n")
    (cbdir / "callbacks.conf").write_text("ok.py = done-job-self\n")
    conf = short_tmp / "qb.conf"
    conf.write_text(f"supervisor_universal_callback_path = {cbdir}\n")
    code, out, _ = run(capsys, ["check", "--config", str(conf)])
    assert code == 0
    assert "ok.py  python    done-job-self" in out
    (cbdir / "callbacks.conf").write_text("ok.py = done-job-self\nbad.sh = done-job-self\nx\n")
    code, out, _ = run(capsys, ["check", "--config", str(conf)])
    assert code == 1
    assert f"{cbdir}/callbacks.conf:2:" in out
    assert f"{cbdir}/callbacks.conf:3:" in out


REPO = Path(__file__).resolve().parent.parent


def test_simulate_shipped_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("supervisord.core.simulate")
    scenario = str(REPO / "callback" / "scenarios" / "parent-child.yaml")
    argv = ["simulate", scenario, "--config", str(REPO / "etc" / "qb.conf")]
    code, out, err = run(capsys, argv, env={"QBDIR": str(REPO)})
    assert (code, err) == (0, "")
    assert out.startswith("#1 ")


def test_simulate_run_sends_events(
    capsys: pytest.CaptureFixture[str], server: StubServer, short_tmp: Path
) -> None:
    pytest.importorskip("supervisord.core.simulate")
    scenario = short_tmp / "s.yaml"
    scenario.write_text(
        "events:\n  - {event: submit-job, job: 5}\n  - {event: failed-job, job: 6}\n"
    )
    argv = ["simulate", str(scenario), "--run", "--socket", str(server.server_address)]
    code, out, _ = run(capsys, argv)
    assert code == 0
    assert out.splitlines() == [
        "seq=5 event_id=e-5 matched: a.py, b.pl",
        "seq=6 event_id=e-6 matched: a.py, b.pl",
    ]
    assert [(r["op"], r["name"], r["job"]["id"]) for r in server.requests] == [
        ("event", "submit", 5),
        ("event", "failed", 6),
    ]


def test_python_m_entry_point() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "supervisord", "emit", "complete-job"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--job is required" in done.stderr


# -- textfmt ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("run_doc", "row"),
    [
        pytest.param(
            RUN_OK,
            [
                "7",
                "17",
                "a.py",
                "1234",
                "ok",
                "0",
                "2025-11-25T09:46:40+00:00",
                "0.250s",
                "/l/1234.cb",
            ],
            id="ok",
        ),
        pytest.param(
            RUN_KILLED,
            [
                "8",
                "17",
                "a.py",
                "1234",
                "timeout",
                "SIGKILL",
                "2025-11-25T09:46:40+00:00",
                "0.250s",
                "/l/1234.cb",
            ],
            id="signal",
        ),
        pytest.param(
            RUN_LIVE,
            [
                "9",
                "17",
                "a.py",
                "1234",
                "running",
                "-",
                "2025-11-25T09:46:40+00:00",
                "running",
                "/l/1234.cb",
            ],
            id="running",
        ),
        pytest.param(
            RUN_OK | {"truncated": True, "job_id": None, "signal": 99},
            [
                "7",
                "17",
                "a.py",
                "-",
                "ok+cut",
                "signal 99",
                "2025-11-25T09:46:40+00:00",
                "0.250s",
                "/l/1234.cb",
            ],
            id="odd",
        ),
    ],
)
def test_history_row(run_doc: dict[str, Any], row: list[str]) -> None:
    assert textfmt.history_row(run_doc, UTC) == row


@pytest.mark.parametrize(
    ("reply", "text"),
    [
        pytest.param(
            {"ok": True, "seq": 3, "event_id": "x", "matched": []},
            "seq=3 event_id=x matched: (none)",
            id="none",
        ),
        pytest.param(
            {"ok": True, "seq": 3, "event_id": "x", "matched": ["a"], "duplicate": True},
            "seq=3 event_id=x duplicate: accepted before, nothing new runs",
            id="duplicate",
        ),
    ],
)
def test_format_event(reply: dict[str, Any], text: str) -> None:
    assert textfmt.format_event(reply) == text


@pytest.mark.parametrize(
    ("reply", "text"),
    [
        pytest.param(
            {"ok": False, "error": {"code": "bad_json", "message": "m"}},
            "error: bad_json: m",
            id="plain",
        ),
        pytest.param({"ok": False, "error": "weird"}, "error: weird", id="not-an-object"),
        pytest.param(
            {
                "ok": False,
                "error": {"code": "invalid_config", "message": "m"},
                "errors": ["f:1: r"],
            },
            "error: invalid_config: m\nf:1: r",
            id="errors-list",
        ),
    ],
)
def test_format_error(reply: dict[str, Any], text: str) -> None:
    assert textfmt.format_error(reply) == text


def test_format_status_puts_config_last() -> None:
    lines = textfmt.format_status(STATUS | {"timeouts": 0}).splitlines()
    assert [line.split(":")[0] for line in lines[:3]] == ["version", "uptime_s", "callbacks"]
    assert lines[8].startswith("timeouts:")
    assert lines[-1] == "config.logpath:       /q/logs"


def test_format_table_and_mapping() -> None:
    table = textfmt.format_table(["A", "LONGER"], [["xyz", "1"], ["q", ""]])
    assert table.splitlines() == ["A    LONGER", "xyz  1", "q"]
    text = textfmt.format_mapping({"ok": True, "b": None, "a": {"c": [1, 2], "d": True}}, ["a"])
    assert text.splitlines() == ["a.c: 1, 2", "a.d: yes", "b:   -"]
    assert textfmt.format_history([]) == "(no runs)"
    assert textfmt.format_callbacks([]) == "(no callbacks)"
