"""The command line against a real daemon: exit codes and what an operator reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

from tests.daemon_harness import DEADLINE, REPO, Daemon


def cli(d: Daemon, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "supervisord", *args, "--config", str(d.conf)]
    env = {**os.environ, "QBDIR": str(d.root)}
    return subprocess.run(
        cmd, env=env, input=stdin, capture_output=True, text=True, timeout=DEADLINE
    )


def test_emit_ndjson_from_stdin_reports_each_line(daemon_factory: Callable[..., Daemon]) -> None:
    d = daemon_factory({"a.py": "pass\n"}, "a.py = complete-job-self\n")
    lines = [
        json.dumps({"name": "complete", "type": "job", "job": {"id": 1}, "event_id": "n1"}),
        json.dumps({"name": "complete", "type": "job", "job": {"id": "x"}}),
        json.dumps({"name": "submit", "type": "job", "job": {"id": 2}}),
    ]
    out = cli(d, "emit", "-", "--wait", stdin="\n".join(lines) + "\n")
    assert out.returncode == 1, "one line was refused"
    report = out.stdout.splitlines()
    assert "n1" in report[0] and "a.py" in report[0]
    assert "invalid_event" in report[1] and "job.id" in report[1]
    assert d.request({"op": "status"})["events_total"] == 2


def test_reload_command_prints_every_error(daemon_factory: Callable[..., Daemon]) -> None:
    d = daemon_factory({"a.py": "pass\n"}, "a.py = complete-job-self\n")
    (d.root / "callback" / "callbacks.conf").write_text("a.py = nope\nb.sh = done-job-self\n")
    out = cli(d, "reload")
    assert out.returncode == 1
    text = out.stdout + out.stderr
    assert "callbacks.conf:1:" in text and "callbacks.conf:2:" in text
    (d.root / "callback" / "callbacks.conf").write_text("a.py = failed-job-self\n")
    assert cli(d, "reload").returncode == 0
    assert cli(d, "match", "failed-job", "--job", "3").stdout.strip().endswith("a.py")


def test_simulate_run_sends_the_scenario_to_the_daemon(
    daemon_factory: Callable[..., Daemon],
) -> None:
    d = daemon_factory({"a.py": "pass\n"}, "a.py = complete-job-parent\n")
    out = cli(d, "simulate", str(REPO / "callback" / "scenarios" / "parent-child.yaml"), "--run")
    assert out.returncode == 0, out.stderr
    status = d.request({"op": "status"})
    assert status["events_total"] > 0
    assert d.request({"op": "wait", "seq": status["last_seq"], "timeout": DEADLINE})["done"]


def test_unreachable_daemon_exits_69(daemon_factory: Callable[..., Daemon]) -> None:
    d = daemon_factory({}, "", start=False)
    out = cli(d, "status")
    assert out.returncode == 69 and d.sock in out.stderr
