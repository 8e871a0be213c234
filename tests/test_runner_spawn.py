"""What a spawned run is given and what its end waits for, with real child processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest

from supervisord.run import cspawn
from supervisord.run.runner import Runner
from tests.test_runner import make_callback, make_request, make_settings, output_lines

# Reports whether fd 3 is open, without the letters that would give the script qb.
FD3 = 'print((open(my $fh, "+<&=", 3) ? "fd 3 open" : "fd 3 closed"), "\\n");\n'


async def until(fact: Any, timeout: float = 10.0) -> None:
    """Wait for a fact (a line in a log), under a deadline."""
    deadline = time.monotonic() + timeout
    while not fact():
        if time.monotonic() > deadline:
            raise TimeoutError("fact never became true")
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("glibc", [True, False], ids=["cspawn", "os-posix-spawn"])
async def test_a_perl_script_that_never_names_qb_gets_no_channel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, glibc: bool
) -> None:
    # The qb channel (fd 3) costs a run a socket pair, a hello line, a reader and a
    # close; a script that cannot load qb has no use for it and is not given one.
    if not glibc:
        monkeypatch.setattr(cspawn, "available", lambda: False)
    (tmp_path / "plain.pl").write_text(FD3)
    (tmp_path / "named.pl").write_text("# may call qb::unblock\n" + FD3)
    runner = Runner(make_settings(tmp_path))
    try:
        plain = await runner.run(make_request(make_callback("plain.pl", tmp_path), owner=1))
        named = await runner.run(make_request(make_callback("named.pl", tmp_path), owner=2))
    finally:
        await runner.aclose()
    assert plain.outcome == named.outcome == "ok"
    assert output_lines(plain)[1:] == ["fd 3 closed"]
    assert output_lines(named)[1:] == ["fd 3 open"]


async def test_a_process_that_escaped_the_group_does_not_hold_up_the_run(
    tmp_path: Path,
) -> None:
    # A grandchild that left the callback's group (setsid) keeps its stdout: the run
    # ends at the callback's exit all the same (not a grace period later), and what the
    # grandchild prints later still reaches the job's log.
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    (tmp_path / "escape.py").write_text(
        "import os\n"
        "r, w = os.pipe()\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    os.write(w, b'x')  # out of the group: its parent may exit now\n"
        "    print(f'escaped={os.getpid()}', flush=True)\n"
        f"    with open({str(fifo)!r}) as f:\n"
        "        f.read()\n"
        "    print('late', flush=True)\n"
        "    os._exit(0)\n"
        "os.read(r, 1)\n"
    )
    runner = Runner(make_settings(tmp_path, kill_grace=60.0))  # python_mode fresh: spawned
    try:
        run = runner.run(make_request(make_callback("escape.py", tmp_path)))
        result = await asyncio.wait_for(run, 30.0)  # the grandchild is still waiting
        assert result.outcome == "ok" and result.log is not None
        log = Path(result.log)
        await until(lambda: log.exists() and "escaped=" in log.read_text())
        assert "late" not in log.read_text()
        await asyncio.to_thread(fifo.write_text, "go")  # opens once the grandchild reads
        await until(lambda: "late" in log.read_text())
    finally:
        await runner.aclose()
    found = re.search(r"escaped=(\d+)", log.read_text())
    assert found is not None
    pid = int(found.group(1))
    with contextlib.suppress(ChildProcessError):  # else reaped by the runner's sweep
        os.waitpid(pid, 0)  # an orphan of ours (the runner made us a subreaper)
    assert output_lines(result)[1:3] == [f"escaped={pid}", "late"]
