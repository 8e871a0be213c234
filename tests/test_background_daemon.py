"""Work a callback leaves running, through a real daemon: it outlives the run, its output
reaches the job's .cb log, and a daemon stop ends it (SPEC §4)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.daemon_harness import DEADLINE, Daemon, event, wait_for_file

# The background part waits for the test to write a line into a FIFO: whatever it writes
# afterwards proves it outlived the run, whose end the test saw first.
WAITS_FOR_THE_TEST = """\
import subprocess
subprocess.Popen(["sh", "-c", 'echo $$ > bg.pid; read line < go.fifo; \
echo "$line" > done.txt; echo background finished'])
"""
LIVES_ON = """\
import subprocess
subprocess.Popen(["sh", "-c", 'trap "echo TERM > term.txt; exit 0" TERM; \
echo $$ > bg.pid; sleep 60 & wait'])
"""
CONF = "cb.py = complete-job-self\n"


def run_to_its_end(d: Daemon, job: int) -> None:
    reply = d.request(event("complete", job=job))
    assert reply["ok"] is True, reply
    assert d.request({"op": "wait", "seq": reply["seq"], "timeout": DEADLINE})["done"] is True


@pytest.mark.parametrize("mode", ["forkserver", "fresh"])
def test_background_work_outlives_the_run_and_is_logged(
    daemon_factory: Callable[..., Daemon], mode: str
) -> None:
    extra = f"supervisor_callback_python_mode = {mode}\n"
    d = daemon_factory({"cb.py": WAITS_FOR_THE_TEST}, CONF, extra)
    cbdir = d.root / "callback"
    os.mkfifo(cbdir / "go.fifo")
    run_to_its_end(d, 1234)
    status = d.request({"op": "status"})
    assert status["running"] == 0
    assert status.get("background", 1) == 1  # SPEC §4: counted while it runs
    runs = d.request({"op": "history", "job": 1234})["runs"]
    assert runs[0]["outcome"] == "ok" and runs[0]["ended"] is not None
    assert runs[0].get("left_running", 1) == 1
    with open(cbdir / "go.fifo", "w") as fifo:  # the run is over: only now may it go on
        fifo.write("after the run\n")
    assert wait_for_file(cbdir / "done.txt") == "after the run\n"
    log = d.root / "logs" / "job" / "1000" / "1234" / "1234.cb"
    wait_for_file(log)
    wait_until_logged(log, "background finished")
    assert d.stop() == 0
    assert gone(int((cbdir / "bg.pid").read_text()))


@pytest.mark.parametrize(
    ("mode", "loop"), [("forkserver", "asyncio"), ("fresh", "asyncio"), ("fresh", "uvloop")]
)
def test_daemon_stop_ends_background_work(
    daemon_factory: Callable[..., Daemon], mode: str, loop: str
) -> None:
    extra = f"supervisor_callback_python_mode = {mode}\n"
    d = daemon_factory({"cb.py": LIVES_ON}, CONF, extra, loop=loop)
    cbdir = d.root / "callback"
    run_to_its_end(d, 7)
    pid = int(wait_for_file(cbdir / "bg.pid"))
    assert d.proc is not None
    # Orphaned when the callback exited: taken in by the daemon (a subreaper), or by the
    # fork server (one too) that forked the callback.
    parent = parent_of(pid)
    assert d.proc.pid in (parent, parent_of(parent))
    assert d.stop() == 0
    assert wait_for_file(cbdir / "term.txt") == "TERM\n"
    assert gone(pid)  # reaped before the daemon exited: no zombie handed on


def wait_until_logged(log: Path, line: str) -> None:
    end = time.monotonic() + DEADLINE
    while line not in log.read_text().splitlines():
        assert time.monotonic() < end, log.read_text()
        time.sleep(0.02)  # polling a file the daemon writes; the fact is the line itself


def gone(pid: int) -> bool:
    return not os.path.exists(f"/proc/{pid}")


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    return int(stat[stat.rfind(b")") + 2 :].split()[1])
