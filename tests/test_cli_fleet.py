"""``qbsupervisor fleet`` and history's member column (SPEC §8): the pure text, the command
against a socket stub, and once against a real daemon on its default SQLite journal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest

from supervisord.cli.fleet import format_age, format_fleet, format_runs
from supervisord.cli.main import main
from supervisord.core import textfmt
from tests.daemon_harness import DEADLINE, Daemon
from tests.test_client import Reply, StubServer

MEMBER_A = {
    "member": "render1:/run/qbcallbacks/callbacks.sock", "role": "all", "host": "render1",
    "pid": 4242, "heartbeat_age_s": 0.42, "running": 3, "version": "0.1.0", "state": "up",
}  # fmt: skip
MEMBER_B = MEMBER_A | {
    "member": "render2-exec", "role": "executor", "host": "render2", "pid": 17,
    "heartbeat_age_s": 125.0, "running": 0, "state": "lost",
}  # fmt: skip
RUN = {
    "run_id": 7, "seq": 17, "event_id": "e-17", "callback": "a.py", "job_id": 1234,
    "started": 1764064000.0, "ended": 1764064000.25, "exit_code": 0, "signal": None,
    "outcome": "ok", "truncated": False, "log": "/l/1234.cb", "actions": [],
}  # fmt: skip
STATUS = {"ok": True, "version": "0.1.0", "uptime_s": 1.5, "running": 3}


def columns(table: str) -> list[dict[str, str]]:
    """The rows of a format_table table as dicts, cut at the header's column starts
    (a cell may hold a space, as ``0.4s ago`` does)."""
    header, *lines = table.splitlines()
    names = header.split()
    starts = [header.index(f"{name} " if name != names[-1] else name) for name in names]
    ends = [*starts[1:], None]
    return [
        {n: line[s:e].strip() for n, s, e in zip(names, starts, ends, strict=True)}
        for line in lines
    ]


@pytest.mark.parametrize(
    ("age", "text"),
    [
        pytest.param(0.42, "0.4s ago", id="fraction"),
        pytest.param(0, "0.0s ago", id="zero"),
        pytest.param(-0.3, "0.0s ago", id="clock-skew"),
        pytest.param(59.94, "59.9s ago", id="under-a-minute"),
        pytest.param(59.96, "1m00s ago", id="rounds-to-a-minute"),
        pytest.param(187.4, "3m07s ago", id="minutes"),
        pytest.param(7500, "2h05m ago", id="hours"),
        pytest.param(3 * 86400 + 7200, "3d02h ago", id="days"),
        pytest.param(None, "-", id="never"),
        pytest.param("soon", "-", id="not-a-number"),
        pytest.param(True, "-", id="bool"),
    ],
)
def test_format_age(age: Any, text: str) -> None:
    assert format_age(age) == text


def test_format_fleet_sorts_by_member_and_aligns() -> None:
    text = format_fleet([MEMBER_B, MEMBER_A])
    lines = text.splitlines()
    assert lines[0].split() == [
        "MEMBER", "ROLE", "HOST", "PID", "HEARTBEAT", "RUNNING", "VERSION", "STATE",
    ]  # fmt: skip
    assert columns(text) == [
        {"MEMBER": "render1:/run/qbcallbacks/callbacks.sock", "ROLE": "all", "HOST": "render1",
         "PID": "4242", "HEARTBEAT": "0.4s ago", "RUNNING": "3", "VERSION": "0.1.0",
         "STATE": "up"},
        {"MEMBER": "render2-exec", "ROLE": "executor", "HOST": "render2", "PID": "17",
         "HEARTBEAT": "2m05s ago", "RUNNING": "0", "VERSION": "0.1.0", "STATE": "lost"},
    ]  # fmt: skip
    starts = {line.index("STATE") if i == 0 else len(line) - len(line.split()[-1])
              for i, line in enumerate(lines)}  # fmt: skip
    assert len(starts) == 1, "the last column starts at one offset on every line"


def test_format_fleet_missing_fields_and_no_members() -> None:
    row = columns(format_fleet([{"member": "m1", "state": "stopped"}]))[0]
    assert row == {"MEMBER": "m1", "ROLE": "-", "HOST": "-", "PID": "-", "HEARTBEAT": "-",
                   "RUNNING": "-", "VERSION": "-", "STATE": "stopped"}  # fmt: skip
    assert format_fleet([]) == "(no members)"


@pytest.mark.parametrize(
    "runs",
    [
        pytest.param([RUN], id="no-member-key"),
        pytest.param([RUN | {"member": ""}, RUN | {"member": None}], id="empty-members"),
        pytest.param([], id="no-runs"),
        pytest.param([RUN | {"member": "m1"}, RUN | {"member": "m1"}], id="one-member"),
    ],
)
def test_format_runs_without_members_is_plain_history(runs: list[dict[str, Any]]) -> None:
    assert format_runs(runs, UTC) == textfmt.format_history(runs, UTC)


def test_format_runs_adds_member_before_log() -> None:
    runs = [RUN | {"run_id": 8, "member": "render2-exec"}, RUN | {"member": ""}]
    text = format_runs(runs, UTC)
    assert text.splitlines()[0].split()[-2:] == ["MEMBER", "LOG"]
    rows = columns(text)
    assert [(r["RUN"], r["MEMBER"], r["LOG"]) for r in rows] == [
        ("8", "render2-exec", "/l/1234.cb"),
        ("7", "-", "/l/1234.cb"),
    ]
    plain = columns(textfmt.format_history(runs, UTC))
    assert [{k: v for k, v in r.items() if k != "MEMBER"} for r in rows] == plain


# --- the command, against a socket stub speaking the real protocol ---------------------------


def answer_with(status: dict[str, Any]) -> Callable[[dict[str, Any]], list[Reply]]:
    def answer(doc: dict[str, Any]) -> list[Reply]:
        if doc.get("op") == "status":
            return [status]
        if doc.get("op") == "history":
            return [{"ok": True, "runs": [RUN | {"member": "render1"}, RUN | {"member": "r2"}]}]
        return [{"ok": False, "error": {"code": "unknown_op", "message": "no"}}]

    return answer


@pytest.fixture
def stub_for(short_tmp: Path) -> Iterator[Callable[[dict[str, Any]], str]]:
    made: list[StubServer] = []

    def start(status: dict[str, Any]) -> str:
        made.append(StubServer(str(short_tmp / f"s{len(made)}.sock"), answer_with(status)))
        return str(made[-1].server_address)

    yield start
    for server in made:
        server.stop()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv), env={})
    out, err = capsys.readouterr()
    return code, out, err


def test_fleet_prints_the_table(
    capsys: pytest.CaptureFixture[str], stub_for: Callable[[dict[str, Any]], str]
) -> None:
    sock = stub_for(STATUS | {"fleet": [MEMBER_B, MEMBER_A]})
    code, out, err = run(capsys, "fleet", "--socket", sock)
    assert (code, err) == (0, "")
    assert [r["MEMBER"] for r in columns(out)] == [MEMBER_A["member"], "render2-exec"]


def test_fleet_json_prints_the_list(
    capsys: pytest.CaptureFixture[str], stub_for: Callable[[dict[str, Any]], str]
) -> None:
    sock = stub_for(STATUS | {"fleet": [MEMBER_A]})
    code, out, _ = run(capsys, "fleet", "--json", "--socket", sock)
    assert code == 0
    assert json.loads(out) == [MEMBER_A]


def test_status_without_fleet_is_an_error(
    capsys: pytest.CaptureFixture[str], stub_for: Callable[[dict[str, Any]], str]
) -> None:
    sock = stub_for(STATUS)
    for extra in ((), ("--json",)):
        code, out, err = run(capsys, "fleet", *extra, "--socket", sock)
        assert (code, out) == (1, "")
        assert "version 0.1.0" in err and "no fleet" in err and "older" in err


def test_fleet_error_reply_exits_1(
    capsys: pytest.CaptureFixture[str], stub_for: Callable[[dict[str, Any]], str]
) -> None:
    busy = {"ok": False, "error": {"code": "unavailable", "message": "the daemon is shutting down"}}
    code, out, err = run(capsys, "fleet", "--socket", stub_for(busy))
    assert (code, out) == (1, "")
    assert err.strip() == "error: unavailable: the daemon is shutting down"


def test_history_command_shows_members(
    capsys: pytest.CaptureFixture[str], stub_for: Callable[[dict[str, Any]], str]
) -> None:
    code, out, _ = run(capsys, "history", "--socket", stub_for(STATUS))
    assert code == 0
    assert columns(out)[0]["MEMBER"] == "render1"


# --- against a real daemon (SQLite journal: a fleet of one) ----------------------------------


def test_fleet_of_one_sqlite_daemon(daemon_factory: Callable[..., Daemon]) -> None:
    d = daemon_factory({"a.py": "pass\n"}, "a.py = complete-job-self\n")
    assert d.proc is not None
    cmd = [sys.executable, "-m", "supervisord", "fleet", "--config", str(d.conf)]
    env = {**os.environ, "QBDIR": str(d.root)}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=DEADLINE)
    assert out.returncode == 0, out.stderr
    rows = columns(out.stdout)
    assert len(rows) == 1, out.stdout
    (row,) = rows
    assert (row["ROLE"], row["PID"], row["STATE"]) == ("all", str(d.proc.pid), "up")
    assert row["HEARTBEAT"].endswith("s ago") and row["MEMBER"].endswith(d.sock)
