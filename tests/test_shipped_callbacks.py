"""The shipped callback tree and etc/: each callback run directly, with its visible effects."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
CALLBACK_DIR = ROOT / "callback"
ETC_DIR = ROOT / "etc"
PERL = shutil.which("perl")
needs_perl = pytest.mark.skipif(PERL is None, reason="perl is not installed")

# A stand-in for the runtime's qb module: enough of it for the shipped callbacks.
QB_STANDIN = """
import os

def _int(name):
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else None

def jobid():
    return _int("QBJOBID")

def subid():
    return _int("QBSUBID")

def workid():
    return os.environ.get("QB_WORK")
"""


def event_doc(name: str, event_id: str, **extra: Any) -> dict[str, Any]:
    job = {"id": 1234, "name": "shot010 lighting", "user": "alice", "label": "render"}
    job |= {"status": name, "pgrp": 1234, "pid": 0}
    event = {"name": name, "type": "job", "job": job, "seq": 17, "event_id": event_id}
    event |= {"time": 1764064000.5, **extra}
    return {"event": event, "job": job, "callback": {"file": "x", "trigger": "y"}}


def run_python(
    tmp_path: Path, script: str, doc: dict[str, Any], *, redelivered: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run a shipped Python callback as the daemon would: own process, cwd, env, stdin."""
    stub_dir = tmp_path / "qbstub"
    stub_dir.mkdir(exist_ok=True)
    (stub_dir / "qb.py").write_text(QB_STANDIN)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "QBDIR": str(tmp_path),
        "QBJOBID": str(doc["job"]["id"]),
        "QB_EVENT_ID": doc["event"]["event_id"],
        "QB_EVENT_SEQ": str(doc["event"]["seq"]),
        "QB_REDELIVERED": "1" if redelivered else "0",
        "PYTHONPATH": str(stub_dir),
    }
    return subprocess.run(
        [sys.executable, str(CALLBACK_DIR / script)],
        input=json.dumps(doc),
        capture_output=True,
        text=True,
        cwd=CALLBACK_DIR,
        env=env,
        timeout=60,
        check=False,
    )


def failure_rows(tmp_path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(tmp_path / "state" / "failures.db") as db:
        rows = db.execute(
            "SELECT event_id, seq, job_id, name, user, status, time, redelivered"
            " FROM failures ORDER BY event_id"
        ).fetchall()
    db.close()
    return rows


def test_log_failures_writes_one_row(tmp_path: Path) -> None:
    result = run_python(tmp_path, "logFailuresToDB.py", event_doc("failed", "farm1-1"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("logFailuresToDB: recorded: job 1234 'shot010 lighting'")
    assert failure_rows(tmp_path) == [
        ("farm1-1", 17, 1234, "shot010 lighting", "alice", "failed", 1764064000.5, 0)
    ]


def test_log_failures_redelivery_does_not_duplicate(tmp_path: Path) -> None:
    doc = event_doc("failed", "farm1-2")
    first = run_python(tmp_path, "logFailuresToDB.py", doc)
    again = run_python(tmp_path, "logFailuresToDB.py", doc, redelivered=True)
    assert (first.returncode, again.returncode) == (0, 0), first.stderr + again.stderr
    assert "already recorded" in again.stdout
    assert len(failure_rows(tmp_path)) == 1


def test_log_failures_distinct_events_are_distinct_rows(tmp_path: Path) -> None:
    for event_id in ("farm1-3", "farm1-4"):
        assert run_python(tmp_path, "logFailuresToDB.py", event_doc("failed", event_id)).stdout
    assert [row[0] for row in failure_rows(tmp_path)] == ["farm1-3", "farm1-4"]


def test_log_failures_records_redelivered_flag(tmp_path: Path) -> None:
    run_python(tmp_path, "logFailuresToDB.py", event_doc("failed", "farm1-5"), redelivered=True)
    assert failure_rows(tmp_path)[0][-1] == 1


def submissions(tmp_path: Path) -> list[str]:
    return (tmp_path / "state" / "submissions.log").read_text().splitlines()


def test_submitted_appends_a_line(tmp_path: Path) -> None:
    result = run_python(tmp_path, "submitted.py", event_doc("submit", "farm1-10"))
    assert result.returncode == 0, result.stderr
    assert submissions(tmp_path) == [
        '2025-11-25T09:46:40+00:00 job=1234 name="shot010 lighting" user=alice label=render'
        " event=farm1-10"
    ]
    assert "submitted: 2025-11-25T09:46:40+00:00 job=1234" in result.stdout


def test_submitted_one_line_per_job(tmp_path: Path) -> None:
    for event_id in ("farm1-11", "farm1-12"):
        run_python(tmp_path, "submitted.py", event_doc("submit", event_id))
    assert [line.rsplit("=", 1)[1] for line in submissions(tmp_path)] == ["farm1-11", "farm1-12"]


def test_submitted_redelivery_does_not_duplicate(tmp_path: Path) -> None:
    doc = event_doc("submit", "farm1-13")
    run_python(tmp_path, "submitted.py", doc)
    again = run_python(tmp_path, "submitted.py", doc, redelivered=True)
    assert again.returncode == 0, again.stderr
    assert "already in" in again.stdout
    assert len(submissions(tmp_path)) == 1


def run_perl(tmp_path: Path, doc: dict[str, Any], work: str) -> subprocess.CompletedProcess[str]:
    """checkWork.pl with $qb::jobid / $qb::workid set as the daemon's qb.pm would set them."""
    assert PERL is not None
    wrapper = "$qb::jobid = $ENV{QBJOBID}; $qb::workid = $ENV{QB_WORK}; do $ARGV[0]; die $@ if $@;"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    env |= {"QBDIR": str(tmp_path), "QBJOBID": "1234", "QB_WORK": work}
    return subprocess.run(
        [PERL, "-e", wrapper, str(CALLBACK_DIR / "checkWork.pl")],
        input=json.dumps(doc),
        capture_output=True,
        text=True,
        cwd=CALLBACK_DIR,
        env=env,
        timeout=60,
        check=False,
    )


def make_outputs(tmp_path: Path) -> None:
    (tmp_path / "frame.0007.exr").write_bytes(b"EXR" * 10)
    (tmp_path / "empty.exr").write_bytes(b"")


CHECK_WORK_CASES = [
    pytest.param({}, None, 0, "no output path in the event", id="no-path"),
    pytest.param({"work_output": "{d}/frame.0007.exr"}, None, 0, "ok ", id="exists"),
    pytest.param({"work_output": "{d}/empty.exr"}, None, 0, "WARNING empty", id="empty"),
    pytest.param({"work_output": "{d}/nope.exr"}, None, 1, "MISSING", id="missing"),
    pytest.param({"work_output": "{d}/frame.####.exr"}, None, 0, "frame.0007.exr", id="hashes"),
    pytest.param({"work_output": "{d}/frame.%04d.exr"}, None, 0, "frame.0007.exr", id="printf"),
    pytest.param(
        {"resultpackage": {"outputPaths": "{d}/frame.0007.exr,{d}/nope.exr"}},
        None,
        1,
        "MISSING",
        id="resultpackage-list",
    ),
    pytest.param({}, "{d}/frame.####.exr", 0, "ok ", id="job-outputPath"),
]


@needs_perl
@pytest.mark.parametrize(("event_extra", "job_output", "rc", "expected"), CHECK_WORK_CASES)
def test_check_work(
    tmp_path: Path, event_extra: dict[str, Any], job_output: str | None, rc: int, expected: str
) -> None:
    make_outputs(tmp_path)
    text = json.dumps(event_extra).replace("{d}", str(tmp_path))
    doc = event_doc("complete", "farm1-20", type="work", work="7", **json.loads(text))
    if job_output is not None:
        doc["job"] = {**doc["job"], "outputPath": job_output.replace("{d}", str(tmp_path))}
    result = run_perl(tmp_path, doc, work="7")
    assert result.returncode == rc, result.stdout + result.stderr
    assert result.stdout.startswith("checkWork: job 1234 work 7 (complete): ")
    assert expected in result.stdout
    assert result.stderr == ""


@needs_perl
def test_check_work_compiles() -> None:
    assert PERL is not None
    result = subprocess.run(
        [PERL, "-c", str(CALLBACK_DIR / "checkWork.pl")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def conf_pairs(path: Path) -> list[tuple[str, str]]:
    """The `key = value` lines of a qb.conf-syntax file, comments skipped."""
    pairs = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs.append((key.strip(), value.strip()))
    return pairs


def test_callbacks_conf_has_the_four_callbacks() -> None:
    assert conf_pairs(CALLBACK_DIR / "callbacks.conf") == [
        ("logFailuresToDB.py", "failed-job-self"),
        ("mail-status.qcb", "done-job-self"),
        ("checkWork.pl", "done-work-self-*"),
        ("submitted.py", "submit-job-self"),
    ]
    for file, _ in conf_pairs(CALLBACK_DIR / "callbacks.conf"):
        assert (CALLBACK_DIR / file).is_file()


def test_mail_status_qcb_is_one_code() -> None:
    lines = (CALLBACK_DIR / "mail-status.qcb").read_text().splitlines()
    assert [line for line in lines if line.strip() and not line.startswith("#")] == ["mail-status"]


def test_ruff_is_clean_on_the_callback_tree() -> None:
    ruff = Path(sys.executable).with_name("ruff")
    if not ruff.exists():
        pytest.skip("ruff is not installed next to this interpreter")
    result = subprocess.run(
        [str(ruff), "check", "callback"], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


SPEC_KEYS = [
    "supervisor_universal_callback_path",
    "supervisor_language_flags",
    "supervisor_logpath",
    "supervisor_event_socket",
    "supervisor_event_socket_mode",
    "supervisor_event_socket_group",
    "supervisor_event_allow_users",
    "supervisor_callback_state_dir",
    "supervisor_callback_timeout",
    "supervisor_callback_kill_grace",
    "supervisor_callback_output_limit",
    "supervisor_callback_concurrency",
    "supervisor_callback_job_retention",
    "supervisor_callback_user",
    "supervisor_callback_python",
    "supervisor_callback_perl",
    "supervisor_callback_per_job_order",
    "supervisor_callback_history_retention",
    "supervisor_callback_python_mode",
    "supervisor_callback_log_level",
    "mail_host",
    "mail_port",
    "mail_from",
    "mail_domain",
    "mail_administrator",
    "mail_connection_type",
    "mail_user",
    "mail_password",
    "mail_job_status_format",
    "mail_subjob_status_format",
    "mail_work_status_format",
]


@pytest.mark.parametrize("key", SPEC_KEYS)
def test_qbconf_documents_every_key(key: str) -> None:
    # Each key appears, set or commented out, so an administrator finds all of them.
    keys = {line.lstrip("#").partition("=")[0].strip() for line in conf_lines()}
    assert key in keys


def conf_lines() -> list[str]:
    return [line for line in (ETC_DIR / "qb.conf").read_text().splitlines() if "=" in line]


@pytest.mark.parametrize("name", ["job.mail", "subjob.mail", "work.mail"])
def test_mail_templates_start_with_subject(name: str) -> None:
    text = (ETC_DIR / name).read_text()
    assert text.startswith("Subject: ")
    assert "$JOB_ID" in text


def test_qbconf_parses_to_the_checkout() -> None:
    parse_qbconf = importlib.import_module("supervisord.core.qbconf").parse_qbconf
    path = ETC_DIR / "qb.conf"
    env = {"QBDIR": str(ROOT)}
    settings = parse_qbconf(path.read_text(), str(path), env, sys.executable)
    assert settings.callback_path == (str(CALLBACK_DIR),)
    assert (settings.logpath, settings.state_dir) == (f"{ROOT}/logs", f"{ROOT}/state")
    assert settings.event_socket == f"{ROOT}/run/callbacks.sock"
    assert (settings.callback_timeout, settings.kill_grace) == (600, 5)
    assert {"qube", "perl", "python", "mail"} <= settings.language_flags
    assert settings.mail.host is None
    assert settings.mail.job_status_format == "job.mail"


def test_shipped_tree_loads_without_errors() -> None:
    load = pytest.importorskip("supervisord.daemon.load")
    parse_qbconf = importlib.import_module("supervisord.core.qbconf").parse_qbconf
    path = ETC_DIR / "qb.conf"
    settings = parse_qbconf(path.read_text(), str(path), {"QBDIR": str(ROOT)}, sys.executable)
    loaded = load.load_callbacks(settings, daemon_uid=os.stat(CALLBACK_DIR).st_uid)
    assert [(c.file, c.language) for c in loaded.callbacks] == [
        ("logFailuresToDB.py", "python"),
        ("mail-status.qcb", "qube"),
        ("checkWork.pl", "perl"),
        ("submitted.py", "python"),
    ]


# --- callback/examples/apply_actions.py: the subscribe bridge ---

APPLY = CALLBACK_DIR / "examples" / "apply_actions.py"


def load_apply_actions() -> Any:
    spec = importlib.util.spec_from_file_location("apply_actions", APPLY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PLAN_CASES = [
    pytest.param("unblock", "1234", ("unblock", 1234), id="job-unblock"),
    pytest.param("complete", "1234", ("retire", 1234), id="job-complete-is-retire"),
    pytest.param("kill", "1234.2", ("kill", "1234.2"), id="instance-kill"),
    pytest.param("retry", "1234:frame5", ("retrywork", "1234:frame5"), id="work-retry"),
    pytest.param("complete", "1234:7", ("retirework", "1234:7"), id="work-complete"),
    pytest.param("fail", "1234", None, id="fail-has-no-api"),
    pytest.param("migrate", "1234:7", None, id="work-migrate-has-no-api"),
]


@pytest.mark.parametrize(("action", "target", "expected"), PLAN_CASES)
def test_apply_actions_plan(action: str, target: str, expected: tuple[str, Any] | None) -> None:
    assert load_apply_actions().plan(action, target) == expected


class FakeDaemon:
    """A real Unix socket speaking the daemon's subscribe protocol, one script per connection."""

    def __init__(self, path: str, scripts: list[list[dict[str, Any]]]) -> None:
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(path)
        self.server.listen()
        self.requests: list[dict[str, Any]] = []
        self.thread = threading.Thread(target=self.serve, args=(scripts,), daemon=True)
        self.thread.start()

    def serve(self, scripts: list[list[dict[str, Any]]]) -> None:
        for script in scripts:
            conn, _ = self.server.accept()
            with conn, conn.makefile("rw", encoding="utf-8") as stream:
                self.requests.append(json.loads(stream.readline()))
                for doc in [{"ok": True}, *script]:
                    stream.write(json.dumps(doc) + "\n")
                stream.flush()
                conn.shutdown(socket.SHUT_WR)
                stream.read()  # until the client closes its end

    def close(self) -> None:
        self.server.close()
        self.thread.join(timeout=10)


def action(seq: int, verb: str, target: str) -> dict[str, Any]:
    doc = {"op": "action", "seq": seq, "callback": "cb.py", "job_id": 1234}
    return doc | {"action": verb, "target": target}


@pytest.fixture
def sock_path() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="qbt", dir="/tmp") as tmp:
        yield f"{tmp}/s.sock"


def bridge(sock_path: str, pythonpath: Path, *args: str) -> subprocess.Popen[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(pythonpath)}
    env["CALLS"] = str(pythonpath / "calls")  # where the fake Qube API records its calls
    cmd = [sys.executable, str(APPLY), "--socket", sock_path, "--retry-delay", "0", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_apply_actions_prints_without_qube_api(sock_path: str, tmp_path: Path) -> None:
    daemon = FakeDaemon(sock_path, [[action(3, "unblock", "1234"), action(4, "fail", "1234")]])
    proc = bridge(sock_path, tmp_path, "--once", "--since", "2")
    out, err = proc.communicate(timeout=60)
    daemon.close()
    assert proc.returncode == 0, err
    assert daemon.requests == [{"op": "subscribe", "since": 2}]
    assert "would apply qb.unblock(1234): seq=3 callback=cb.py unblock 1234" in out
    assert "skipped (no Qube API for 'fail' on '1234')" in out


FAKE_QUBE_API = """
import json, os

def ping():
    return True

def submit(*jobs):
    return []

def retrywork(workid):
    with open(os.environ["CALLS"], "a") as calls:
        calls.write(json.dumps(["retrywork", workid]) + "\\n")
    return [workid]
"""


def test_apply_actions_applies_with_qube_api_and_resumes(sock_path: str, tmp_path: Path) -> None:
    (tmp_path / "qb.py").write_text(FAKE_QUBE_API)
    calls = tmp_path / "calls"
    # The daemon replays seq 5 on the reconnect (since 4): applied once all the same.
    scripts = [
        [action(5, "retry", "1234:frame5")],
        [action(5, "retry", "1234:frame5"), action(6, "retry", "1234:frame6")],
    ]
    daemon = FakeDaemon(sock_path, scripts)
    proc = bridge(sock_path, tmp_path, "--apply")
    assert proc.stdout is not None
    lines = [proc.stdout.readline() for _ in range(4)]  # banner, applied, closed, applied
    proc.terminate()
    proc.communicate(timeout=60)
    daemon.close()
    assert "applied qb.retrywork('1234:frame6')" in lines[3], lines
    assert daemon.requests == [{"op": "subscribe", "since": 0}, {"op": "subscribe", "since": 4}]
    assert calls.read_text().splitlines() == [
        '["retrywork", "1234:frame5"]',
        '["retrywork", "1234:frame6"]',
    ]
