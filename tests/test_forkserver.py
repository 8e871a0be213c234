"""The Python fork server: what callbacks do to it, its death, its cache, its hygiene."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from supervisord.core.runtypes import RunResult
from supervisord.run import forkserver
from supervisord.run.env import RUNTIME_DIR
from supervisord.run.forkserver import ForkServerLost, SpawnRefused
from supervisord.run.runner import Runner
from supervisord.run.servers import start_server
from tests.test_runner import make_callback, make_request, make_settings, output_lines, wait_exit


def write_callback(directory: Path, name: str, source: str) -> Path:
    path = directory / name
    path.write_text(source)
    return path


async def run_file(runner: Runner, directory: Path, name: str, **event: Any) -> RunResult:
    return await runner.run(make_request(make_callback(name, directory), **event))


async def until(fact: Any, timeout: float = 10.0) -> None:
    """Wait for a fact a callback makes true (a file it wrote), under a deadline."""
    deadline = time.monotonic() + timeout
    while not fact():
        if time.monotonic() > deadline:
            raise TimeoutError("fact never became true")
        await asyncio.sleep(0.01)


@pytest.fixture
async def runner(tmp_path: Path) -> AsyncIterator[Runner]:
    r = Runner(make_settings(tmp_path, python_mode="forkserver", kill_grace=0.3))
    yield r
    await r.aclose()


OK = 'print("ok again")\n'


@pytest.mark.parametrize(
    ("source", "outcome", "exit_code", "shown"),
    [
        ("import sys\nsys.exit(3)\n", "failed", 3, None),
        ("import sys\nsys.exit('bye')\n", "failed", 1, "bye"),
        ("import sys\nsys.exit(None)\n", "ok", 0, None),
        ("import os\nos._exit(0)\n", "ok", 0, None),
        ("raise ValueError('boom')\n", "failed", 1, "ValueError: boom"),
        ("def broken(:\n", "failed", 1, "SyntaxError: invalid syntax"),
        ("import os, time\nif os.fork() == 0:\n    time.sleep(30)\n", "ok", 0, None),
        ("import json, sys\njson.dumps = None\nsys.modules.clear()\n", "ok", 0, None),
        (
            "import threading, time\n"
            "def late():\n    time.sleep(0.05)\n    print('thread joined')\n"
            "threading.Thread(target=late).start()\n",
            "ok", 0, "thread joined",
        ),
        ("import atexit\natexit.register(print, 'atexit ran')\n", "ok", 0, "atexit ran"),
        ("import sys\nsys.stdout.write('unflushed')\n", "ok", 0, "unflushed"),
        ("f = open('unclosed.txt', 'w')\nf.write('kept')\nprint(qb.jobid())\n", "ok", 0, "1234"),
    ],
    ids=[
        "sys-exit-3", "sys-exit-message", "sys-exit-none", "os-exit-0", "raises",
        "syntax-error", "fork-leaves-child", "corrupts-interpreter", "non-daemon-thread",
        "atexit", "unflushed-stdout", "unclosed-file",
    ],
)  # fmt: skip
@pytest.mark.parametrize("mode", ["forkserver", "fresh"])
async def test_callbacks_cannot_hurt_the_server(
    tmp_path: Path, mode: str, source: str, outcome: str, exit_code: int, shown: str | None
) -> None:
    """The same behaviour with a fresh interpreter and from the fork server, which lives on."""
    runner = Runner(make_settings(tmp_path, python_mode=mode, kill_grace=0.3))
    write_callback(tmp_path, "cb.py", source)
    write_callback(tmp_path, "ok.py", OK)
    try:
        result = await run_file(runner, tmp_path, "cb.py")
        server = runner.forkserver_state()
        after = await run_file(runner, tmp_path, "ok.py")
        later = runner.forkserver_state()
    finally:
        await runner.aclose()
    assert (result.outcome, result.exit_code, result.signal) == (outcome, exit_code, None)
    if shown is not None:
        assert shown in output_lines(result)
    assert after.outcome == "ok" and output_lines(after)[-1] == "ok again"
    if mode == "forkserver":
        assert server["pid"] is not None and server["runs"] == 1
        assert later == {**server, "runs": 2}  # the same server, still up
    if (tmp_path / "unclosed.txt").exists():  # its finalizer ran before the child exited
        assert (tmp_path / "unclosed.txt").read_text() == "kept"


async def test_timeout_kills_the_callbacks_grandchildren(runner: Runner, tmp_path: Path) -> None:
    write_callback(
        tmp_path, "cb.py",
        "import os, subprocess\n"
        "child = subprocess.Popen(['sleep', '30'])\n"
        "print(f'grandchild={child.pid}', flush=True)\n"
        "os.system('sleep 30')\n",
    )  # fmt: skip
    runner.update(make_settings(tmp_path, python_mode="forkserver", callback_timeout=0.5,
                                kill_grace=0.3))  # fmt: skip
    result = await run_file(runner, tmp_path, "cb.py")
    assert (result.outcome, result.signal) == ("timeout", signal.SIGTERM)
    line = next(x for x in output_lines(result) if x.startswith("grandchild="))
    await wait_exit(int(line.partition("=")[2]))
    assert runner.forkserver_state()["pid"] is not None  # the server lives on


async def test_killed_server_is_restarted_and_the_run_retried(
    runner: Runner, tmp_path: Path
) -> None:
    write_callback(
        tmp_path, "cb.py",
        "import os, time\n"
        "if not os.path.exists('first-try'):\n"
        "    open('first-try', 'w').close()\n"
        "    time.sleep(30)\n"
        "print('second try')\n",
    )  # fmt: skip
    run = asyncio.ensure_future(run_file(runner, tmp_path, "cb.py"))
    await until(lambda: (tmp_path / "first-try").exists())
    old = runner.forkserver_state()["pid"]
    os.kill(old, signal.SIGKILL)
    result = await run
    assert result.outcome == "ok" and output_lines(result)[-1] == "second try"
    state = runner.forkserver_state()
    assert state["restarts"] == 1 and state["pid"] not in (None, old)
    with pytest.raises(ProcessLookupError):
        os.kill(old, 0)  # the daemon reaped its dead server


@pytest.mark.parametrize(
    ("second", "bump"),
    [('print("version 2, longer")\n', False), ('print("v2")\n', True)],
    ids=["new-size", "same-size-new-mtime"],
)
async def test_edits_take_effect_on_the_next_run(
    runner: Runner, tmp_path: Path, second: str, bump: bool
) -> None:
    path = write_callback(tmp_path, "cb.py", 'print("v1")\n')
    assert output_lines(await run_file(runner, tmp_path, "cb.py"))[-1] == "v1"
    before = path.stat()
    path.write_text(second)
    if bump:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))
    result = await run_file(runner, tmp_path, "cb.py")
    assert output_lines(result)[-1] == second[7:-3]


async def test_server_has_a_clean_environment_and_no_daemon_fds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    runner = Runner(make_settings(tmp_path, python_mode="forkserver"))
    leaked = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leaked.set_inheritable(True)  # as a systemd-passed listening socket would be
    try:
        write_callback(tmp_path, "ok.py", OK)
        assert (await run_file(runner, tmp_path, "ok.py")).outcome == "ok"
        pid = runner.forkserver_state()["pid"]
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        names = {entry.partition(b"=")[0].decode() for entry in environ if entry}
        assert names == {"PATH", "LANG", "QBDIR", "HOME", "USER", "LOGNAME", "PYTHONPATH"}
        fds = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
        target = os.readlink(f"/proc/{os.getpid()}/fd/{leaked.fileno()}")
        assert all(os.readlink(f"/proc/{pid}/fd/{fd}") != target for fd in fds)
        assert {0, 1, 2, 3} <= fds and len(fds) <= 7  # stdio, control, epoll, wake-up pipe
    finally:
        leaked.close()
        await runner.aclose()
    assert runner.forkserver_state()["pid"] is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_concurrent_runs_all_get_their_own_child(runner: Runner, tmp_path: Path) -> None:
    write_callback(tmp_path, "cb.py", "import os\nprint(os.environ['QBJOBID'])\n")
    results = await asyncio.gather(
        *(runner.run(make_request(make_callback("cb.py", tmp_path), owner=n)) for n in range(8))
    )
    assert [output_lines(r)[-1] for r in results] == [str(n) for n in range(8)]
    assert len({r.pid for r in results}) == 8 and runner.forkserver_state()["runs"] == 8


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        ({"cwd": "/nonexistent", "path": "/x.py"}, "cwd /nonexistent: No such file or directory"),
        ({"cwd": "/", "argv": ["/nonexistent/perl"]}, "/nonexistent/perl: No such file"),
        ({"cwd": "/", "limits": [[7, 1 << 40]], "path": "/x.py"}, "set limits: "),
    ],
    ids=["bad-cwd", "bad-exec", "bad-limit"],
)
async def test_a_child_that_cannot_start_is_refused(request_: dict[str, Any], reason: str) -> None:
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": RUNTIME_DIR}
    server = await start_server(sys.executable, env)
    read_end, write_end = os.pipe()
    ours, theirs = socket.socketpair()
    try:
        with pytest.raises(SpawnRefused, match=reason):
            await server.spawn({"env": env, "creds": None, **request_},
                               (read_end, write_end, theirs.fileno()))  # fmt: skip
        assert server.is_alive
    finally:
        for fd in (read_end, write_end):
            os.close(fd)
        ours.close()
        theirs.close()
        await server.aclose(1.0)
    assert server.exited.done()


async def test_another_interpreter_gets_another_server(runner: Runner, tmp_path: Path) -> None:
    other = "/usr/bin/python3"
    if not os.access(other, os.X_OK) or os.path.realpath(other) == os.path.realpath(sys.executable):
        pytest.skip("needs a second python")
    write_callback(tmp_path, "cb.py", "import sys\nprint(sys.executable)\n")
    assert (await run_file(runner, tmp_path, "cb.py")).outcome == "ok"
    first = runner.forkserver_state()["pid"]
    runner.update(make_settings(tmp_path, python_mode="forkserver", callback_python=other))
    result = await run_file(runner, tmp_path, "cb.py")
    assert output_lines(result)[-1] == other
    state = runner.forkserver_state()
    assert state["pid"] not in (None, first) and (state["restarts"], state["runs"]) == (0, 2)
    await runner.aclose()  # awaits the retired server too
    with pytest.raises(ProcessLookupError):
        os.kill(first, 0)


async def test_a_server_that_stops_answering_is_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    # One watchdog for every request in flight: the oldest unanswered past the start
    # timeout loses the server (killed, reaped), and its runs with it (they are retried).
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": RUNTIME_DIR}
    server = await start_server(sys.executable, env)
    monkeypatch.setattr(forkserver, "START_TIMEOUT", 0.3)
    os.kill(server.pid, signal.SIGSTOP)  # alive, but hears nothing
    read_end, write_end = os.pipe()
    ours, theirs = socket.socketpair()
    request = {"env": env, "creds": None, "cwd": "/", "path": "/x.py"}
    try:
        with pytest.raises(ForkServerLost, match="hung"):
            await asyncio.wait_for(
                server.spawn(request, (read_end, write_end, theirs.fileno())), 10.0
            )
        await asyncio.wait_for(server.exited, 10.0)  # SIGKILLed, reaped
    finally:
        for fd in (read_end, write_end):
            os.close(fd)
        ours.close()
        theirs.close()
    assert not server.is_alive
