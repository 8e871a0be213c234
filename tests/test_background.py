"""Work a callback leaves running (SPEC §4): it lives on, watched and logged, until its
background timeout or the runner's close; the run itself ends with the callback."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from supervisord.core.runtypes import RunResult
from supervisord.run.background import Background
from supervisord.run.runner import Runner
from tests.test_forkserver import run_file, until, write_callback
from tests.test_runner import make_settings, output_lines

# Qube's recipe (the Callbacks page): start the slow part with Popen and return.
QUBE_RECIPE = """\
import subprocess
subprocess.Popen(["sh", "-c", 'echo $$ > bg.pid; trap "echo TERM >> log" TERM; sleep 1; \
echo done >> log; echo printed by the background'])
print("callback returns", flush=True)
"""
# Leaves a Python process that notes SIGTERM, ignores it and sleeps: only SIGKILL ends it.
STUBBORN = """\
import subprocess, sys
subprocess.Popen([sys.executable, "-c", '''
import os, signal, time
signal.signal(signal.SIGTERM, lambda *a: open("term", "a").write("TERM\\\\n"))
open("bg.pid.tmp", "w").write(str(os.getpid()))
os.rename("bg.pid.tmp", "bg.pid")
time.sleep(60)
'''])
"""
LEAVES_TWO = """\
import subprocess
for _ in range(2):
    print(f"pid={subprocess.Popen(['sleep', '60']).pid}", flush=True)
"""
# Its child has exited (waited for without being reaped) when it exits: a zombie is left
# (os._exit: Popen's finalizer would reap it).
LEAVES_A_ZOMBIE = """\
import os, subprocess
child = subprocess.Popen(["true"])
os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
print(f"pid={child.pid}", flush=True)
os._exit(0)
"""
# Leaves a zombie in a group of its own (same session), out of reach of the group's watch.
LEAVES_ITS_GROUP = LEAVES_A_ZOMBIE.replace('["true"]', '["true"], process_group=0')
HANGS_WITH_A_CHILD = """\
import subprocess, time
print(f"pid={subprocess.Popen(['sleep', '60']).pid}", flush=True)
time.sleep(60)
"""


@pytest.fixture(params=["fresh", "forkserver"])
def mode(request: pytest.FixtureRequest) -> str:
    """Both spawn paths: posix_spawn (the runner reaps the orphans, as their subreaper)
    and the fork server (which reaps them itself)."""
    return str(request.param)


@pytest.fixture
async def runner(tmp_path: Path, mode: str) -> AsyncIterator[Runner]:
    r = Runner(make_settings(tmp_path, python_mode=mode, kill_grace=0.3))
    yield r
    await r.aclose()


def configure(runner: Runner, tmp: Path, **changes: object) -> None:
    mode = runner.forkserver_state()["mode"]
    runner.update(make_settings(tmp, python_mode=mode, kill_grace=0.3, **changes))


def is_gone(pid: int) -> bool:
    """Not running and not a zombie either: reaped by whoever was its parent."""
    return not os.path.exists(f"/proc/{pid}")


def pids(result: RunResult) -> list[int]:
    return [int(x[4:]) for x in output_lines(result) if x.startswith("pid=")]


async def test_qube_popen_recipe_finishes_its_work(runner: Runner, tmp_path: Path) -> None:
    write_callback(tmp_path, "cb.py", QUBE_RECIPE)
    result = await run_file(runner, tmp_path, "cb.py")
    assert (result.outcome, result.exit_code) == ("ok", 0)
    assert result.left_running >= 1 and runner.background >= 1
    assert output_lines(result)[1:] == ["callback returns"]  # in the log when the run ends
    log = tmp_path / "log"
    await until(lambda: log.exists() and "done" in log.read_text())
    assert log.read_text() == "done\n"  # no TERM: nothing stopped it
    await until(lambda: runner.background == 0)
    assert is_gone(int((tmp_path / "bg.pid").read_text()))
    await until(lambda: "printed by the background" in output_lines(result))
    assert output_lines(result)[1:] == ["callback returns", "printed by the background"]


async def test_background_is_stopped_after_its_timeout(runner: Runner, tmp_path: Path) -> None:
    configure(runner, tmp_path, background_timeout=0.5)
    write_callback(tmp_path, "cb.py", STUBBORN)
    result = await run_file(runner, tmp_path, "cb.py")
    assert (result.outcome, result.left_running) == ("ok", 1)
    await until(lambda: (tmp_path / "bg.pid").exists())
    pid = int((tmp_path / "bg.pid").read_text())
    await until(lambda: runner.background == 0)  # TERM, grace, KILL, reaped
    assert (tmp_path / "term").read_text() == "TERM\n"
    await until(lambda: is_gone(pid))


async def test_close_stops_and_reaps_background_work(tmp_path: Path, mode: str) -> None:
    runner = Runner(make_settings(tmp_path, python_mode=mode, kill_grace=0.3))
    write_callback(tmp_path, "cb.py", LEAVES_TWO)
    result = await run_file(runner, tmp_path, "cb.py")
    left = pids(result)
    assert (result.outcome, result.left_running, runner.background) == ("ok", 2, 2)
    assert not any(is_gone(pid) for pid in left)
    await runner.aclose()
    assert runner.background == 0
    assert all(is_gone(pid) for pid in left)  # SIGTERMed and reaped before aclose returned
    assert not leftovers(os.getpid(), left)


async def test_a_zombie_left_behind_is_reaped_not_counted(
    runner: Runner, tmp_path: Path, mode: str
) -> None:
    write_callback(tmp_path, "cb.py", LEAVES_A_ZOMBIE)
    result = await run_file(runner, tmp_path, "cb.py")
    assert (result.outcome, result.left_running) == ("ok", 0)
    if mode == "fresh":  # the runner's own orphan: reaped before the result
        assert is_gone(pids(result)[0])
    else:  # the fork server's: it reaps it when it hears of it
        await until(lambda: is_gone(pids(result)[0]))


async def test_an_orphan_that_left_the_group_is_reaped_at_close(tmp_path: Path, mode: str) -> None:
    runner = Runner(make_settings(tmp_path, python_mode=mode, kill_grace=0.3))
    write_callback(tmp_path, "cb.py", LEAVES_ITS_GROUP)
    result = await run_file(runner, tmp_path, "cb.py")
    assert (result.outcome, result.left_running) == ("ok", 0)
    await runner.aclose()
    assert is_gone(pids(result)[0])


async def test_timeout_still_stops_the_whole_group(runner: Runner, tmp_path: Path) -> None:
    configure(runner, tmp_path, callback_timeout=0.5)
    write_callback(tmp_path, "cb.py", HANGS_WITH_A_CHILD)
    result = await run_file(runner, tmp_path, "cb.py")
    assert (result.outcome, result.signal, result.left_running) == ("timeout", signal.SIGTERM, 0)
    await until(lambda: is_gone(pids(result)[0]))


def leftovers(parent: int, pids_: list[int]) -> list[int]:
    """Of ``pids_``, those still a child (a zombie, say) of ``parent``."""
    found = []
    for pid in pids_:
        try:
            stat = Path(f"/proc/{pid}/stat").read_bytes()
        except FileNotFoundError:
            continue
        if int(stat[stat.rfind(b")") + 2 :].split()[1]) == parent:
            found.append(pid)
    return found


@pytest.mark.parametrize(("age", "reaped"), [(0.0, True), (3600.0, False)], ids=["old", "young"])
def test_sweep_reaps_a_stray_session_leader_only_once_it_is_old(age: float, reaped: bool) -> None:
    """A zombie child that leads a session of its own may be a callback whose watcher has
    not reaped it yet: the sweep leaves it alone until it has been one for a while."""
    pid = os.posix_spawn("/bin/true", ["true"], {}, setsid=True)
    try:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped
        Background(stray_age=age).sweep()
        assert is_gone(pid) is reaped
    finally:
        if not is_gone(pid):
            os.waitpid(pid, 0)
