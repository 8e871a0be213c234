"""What a fork server child starts with: exactly its run's environment, pre-warmed imports."""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from supervisord.run.env import RUNTIME_DIR
from supervisord.run.forkserver import ForkServer, SpawnRefused
from supervisord.run.runner import Runner
from supervisord.run.servers import start_server
from tests.test_forkserver import run_file, write_callback
from tests.test_runner import make_settings, output_lines

ENV_PROBE = """\
import json, os, subprocess
c_environ = subprocess.run(["env", "-0"], capture_output=True, check=True).stdout
json.dump({"python": dict(os.environ),
           "c": dict(e.split("=", 1) for e in c_environ.decode().split("\\0") if e)},
          open(os.environ["OUT"], "w"))
"""


@pytest.fixture
async def server() -> AsyncIterator[ForkServer]:
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": RUNTIME_DIR}
    started = await start_server(sys.executable, env)
    yield started
    await started.aclose(1.0)


async def run_in(server: ForkServer, request: dict[str, Any]) -> int | None:
    """One run through ``server``; its exit code."""
    stdin = os.open(os.devnull, os.O_RDONLY)
    output = os.open(os.devnull, os.O_WRONLY)
    ours, theirs = socket.socketpair()
    try:
        _, exited = await server.spawn(request, (stdin, output, theirs.fileno()))
    finally:
        for fd in (stdin, output):
            os.close(fd)
        theirs.close()
    try:
        return (await exited).exit_code
    finally:
        ours.close()


async def test_each_child_gets_exactly_its_runs_environment(
    server: ForkServer, tmp_path: Path
) -> None:
    """Python's os.environ and the C environ (what a subprocess inherits) both, as keys
    come, change and go from run to run."""
    path = write_callback(tmp_path, "cb.py", ENV_PROBE)
    base = {"PATH": os.environ["PATH"], "PYTHONPATH": RUNTIME_DIR}
    envs = [
        {**base, "OUT": str(tmp_path / "1"), "QBJOBID": "1", "QBSUBID": "4", "QB_WORK": "é"},
        {**base, "OUT": str(tmp_path / "2"), "QBJOBID": "2"},
        {**base, "OUT": str(tmp_path / "3"), "QBJOBID": "2", "QB_HOST": "h"},
    ]
    for n, env in enumerate(envs, 1):
        request = {"env": env, "creds": None, "cwd": str(tmp_path), "path": str(path)}
        assert await run_in(server, request) == 0
        seen = json.loads((tmp_path / str(n)).read_text())
        assert seen["python"] == env and seen["c"] == env


async def test_an_environment_execve_could_not_pass_is_refused(
    server: ForkServer, tmp_path: Path
) -> None:
    path = write_callback(tmp_path, "cb.py", "pass\n")
    for env in ({"QB_WORK": "a\0b"}, {"A=B": "1"}):
        request = {"env": env, "creds": None, "cwd": str(tmp_path), "path": str(path)}
        with pytest.raises(SpawnRefused, match="bad request: cannot pass"):
            await run_in(server, request)
    request = {"env": {"A": "1"}, "creds": None, "cwd": str(tmp_path), "path": str(path)}
    assert await run_in(server, request) == 0  # and the server lives on
    assert server.is_alive


async def test_standard_modules_a_callback_imports_are_prewarmed_its_own_are_not(
    tmp_path: Path,
) -> None:
    """The server imports the standard-library modules it sees the callback import (so
    they are in sys.modules before the callback runs), never the callback's own."""
    write_callback(
        tmp_path, "mine.py", "import os\nopen('imported', 'a').write(f'{os.getpid()}\\n')\n"
    )
    write_callback(
        tmp_path, "cb.py",
        "import sys\n"
        "print('email.utils' in sys.modules, 'mine' in sys.modules)\n"
        "import email.utils\n"
        "def later():\n    import mine\n"
        "later()\n",
    )  # fmt: skip
    runner = Runner(make_settings(tmp_path, python_mode="forkserver"))
    try:
        first = await run_file(runner, tmp_path, "cb.py")
        second = await run_file(runner, tmp_path, "cb.py")
        server = runner.forkserver_state()["pid"]
    finally:
        await runner.aclose()
    assert (first.outcome, second.outcome) == ("ok", "ok")
    assert output_lines(first)[-1] == output_lines(second)[-1] == "True False"
    importers = (tmp_path / "imported").read_text().split()
    assert len(importers) == 2 and str(server) not in importers  # one import in each child


async def test_the_server_and_its_helpers_load_nothing_of_the_daemon(tmp_path: Path) -> None:
    """_forkserver.py runs as a script: its helpers come from its own directory, and no
    module of the daemon's package is imported into the server (or its children)."""
    write_callback(
        tmp_path, "cb.py",
        "import sys\n"
        "ours = ('_forkchild', '_forkprep', '_qbrun')\n"
        "print(sorted(m for m in sys.modules if m.startswith('supervisord') or m in ours))\n",
    )  # fmt: skip
    runner = Runner(make_settings(tmp_path, python_mode="forkserver"))
    try:
        result = await run_file(runner, tmp_path, "cb.py")
    finally:
        await runner.aclose()
    assert result.outcome == "ok", output_lines(result)
    assert output_lines(result)[-1] == "['_forkchild', '_forkprep', '_qbrun']"
