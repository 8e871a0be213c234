"""The shipped callback/ and etc/qb.conf, served exactly as `make run` serves them."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_harness import DEADLINE, REPO, Daemon, wait_for_file


@pytest.fixture
def shipped(short_tmp: Path) -> Iterator[Daemon]:
    """A copy of the checkout's callback/ and etc/ (a short path, for the socket)."""
    shutil.copytree(REPO / "callback", short_tmp / "callback")
    shutil.copytree(REPO / "etc", short_tmp / "etc")
    d = Daemon(short_tmp)
    # `make run`: QBDIR=<checkout> qbsupervisor serve --config etc/qb.conf, from the checkout.
    d.start(cwd=short_tmp)
    yield d
    d.close()


def cli(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "supervisord", *args, "--config", str(d.conf)]
    env = {**os.environ, "QBDIR": str(d.root)}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=DEADLINE)


def test_failed_job_is_logged_to_the_database(shipped: Daemon) -> None:
    out = cli(shipped, "emit", "failed-job", "--job", "42", "--set", "name=shot010", "--wait")
    assert out.returncode == 0, out.stderr
    assert "logFailuresToDB.py" in out.stdout and "mail-status.qcb" in out.stdout
    db = sqlite3.connect(shipped.root / "state" / "failures.db")
    rows = db.execute("SELECT job_id, name FROM failures").fetchall()
    db.close()
    assert rows == [(42, "shot010")]
    runs = {r["callback"]: r for r in shipped.request({"op": "history", "job": 42})["runs"]}
    assert runs["logFailuresToDB.py"]["outcome"] == "ok"
    # No mail_host in the shipped qb.conf: the mail run fails and says why.
    assert runs["mail-status.qcb"]["outcome"] == "failed"
    assert "mail_host" in (runs["mail-status.qcb"]["description"] or "")
    history = cli(shipped, "history", "--job", "42")
    assert history.returncode == 0 and "logFailuresToDB.py" in history.stdout


def test_submit_appends_to_the_submissions_log(shipped: Daemon) -> None:
    out = cli(shipped, "emit", "submit-job", "--job", "7", "--set", "user=alice", "--wait")
    assert out.returncode == 0, out.stderr
    text = wait_for_file(shipped.root / "state" / "submissions.log")
    assert "job=7" in text and "alice" in text


def test_done_work_runs_checkwork_perl(shipped: Daemon, short_tmp: Path) -> None:
    frame = short_tmp / "frame5.exr"
    frame.write_bytes(b"pixels")
    out = cli(shipped, "emit", "complete-work", "--job", "9", "--work", "frame5",
              "--set", f"outputPath={frame}", "--wait")  # fmt: skip
    assert out.returncode == 0, out.stderr
    runs = shipped.request({"op": "history", "callback": "checkWork.pl"})["runs"]
    assert [r["outcome"] for r in runs] == ["ok"]
    log = Path(runs[0]["log"]).read_text()
    assert "frame5" in log
