"""glibc posix_spawn through ctypes (supervisord.run.cspawn): what the child gets, errors,
and the spawn threads' cancellation contract — with real child processes."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator

import pytest

from supervisord.run import cspawn, process
from supervisord.run.spawner import Spawner

pytestmark = pytest.mark.skipif(not cspawn.available(), reason="libc lacks posix_spawn extras")

REPORT = r"""
import json, os, signal
print(json.dumps({
    "cwd": os.getcwd(),
    "fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
    "sid": os.getsid(0),
    "pid": os.getpid(),
    "env": dict(os.environ),
    "stdin": os.read(0, 100).decode(),
}))
"""


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        with contextlib.suppress(OSError):
            os.close(fd)


def read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_child_gets_exactly_its_fds_cwd_env_session_and_default_signals(
    tmp_path: object, pipe: tuple[int, int]
) -> None:
    r, w = pipe
    stdin_r, stdin_w = os.pipe()
    os.write(stdin_w, b"the doc")
    os.close(stdin_w)
    stray = os.open(os.devnull, os.O_RDONLY)  # inheritable: closefrom must still drop it
    os.set_inheritable(stray, True)
    try:
        pid = cspawn.spawn(
            [sys.executable, "-c", REPORT],
            {"ONLY": "this"},
            cwd=str(tmp_path),
            fds=(stdin_r, w, w),
        )
    finally:
        os.close(stray)
        os.close(stdin_r)
    os.close(w)
    report = json.loads(read_all(r))
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert report["cwd"] == str(tmp_path)
    assert report["fds"] == [0, 1, 2, 3]  # 3: listdir's own handle on /proc/self/fd
    assert report["sid"] == report["pid"] == pid
    assert report["stdin"] == "the doc"
    assert {k: v for k, v in report["env"].items() if k != "LC_CTYPE"} == {"ONLY": "this"}


def test_signals_start_unblocked_and_sigpipe_not_ignored(pipe: tuple[int, int]) -> None:
    # Python ignores SIGPIPE and the daemon may block signals in a thread: a callback
    # must not inherit either. /bin/cat reports its own mask without changing it.
    r, w = pipe
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
    try:
        pid = cspawn.spawn(["/bin/cat", "/proc/self/status"], {}, cwd="/", fds=(0, w, w))
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGUSR1])
    os.close(w)
    status = dict(
        line.split(":\t", 1) for line in read_all(r).decode().splitlines() if ":\t" in line
    )
    os.waitpid(pid, 0)
    assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN  # the test process's own
    assert int(status["SigIgn"], 16) & (1 << (signal.SIGPIPE - 1)) == 0
    assert int(status["SigBlk"], 16) == 0


@pytest.mark.parametrize("spawn", [cspawn.spawn, process.spawn], ids=["glibc", "os"])
def test_a_source_fd_that_is_also_a_target_number_is_not_clobbered(
    pipe: tuple[int, int], spawn: cspawn.SpawnFunction
) -> None:
    r, w = pipe
    # Child fds 1 and 2 come from a descriptor numbered below len(fds), which the child's
    # fds 3.. also fill: it must be moved out of the way first, and closed after.
    script = "import os; os.write(1, b'out'); os.write(2, b'err')"
    low = min(fd for fd in range(3, 64) if not _is_open(fd))
    os.dup2(w, low)
    before = sorted(os.listdir("/proc/self/fd"))
    try:
        fds = [os.open(os.devnull, os.O_RDONLY)] + [low, low] + [w] * (low - 2)
        pid = spawn([sys.executable, "-c", script], {}, cwd="/", fds=fds)
        os.close(fds[0])
        assert sorted(os.listdir("/proc/self/fd")) == before  # nothing left open
    finally:
        os.close(low)
    os.close(w)
    assert read_all(r) == b"outerr"
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_a_program_that_cannot_be_started_raises_naming_it() -> None:
    with pytest.raises(OSError) as caught:
        cspawn.spawn(["/nonexistent/perl", "x"], {}, cwd="/", fds=(0, 1, 2))
    assert caught.value.errno == errno.ENOENT
    assert caught.value.filename == "/nonexistent/perl"


def test_a_bad_cwd_raises() -> None:
    with pytest.raises(OSError) as caught:
        cspawn.spawn(["/bin/true"], {}, cwd="/nonexistent-dir", fds=(0, 1, 2))
    assert caught.value.errno == errno.ENOENT


async def test_spawner_runs_the_job_on_a_spawn_thread_and_after_on_the_loop() -> None:
    spawner = Spawner()
    afters: list[str] = []
    try:
        name = await spawner.call(
            lambda: threading.current_thread().name,
            lambda: afters.append(threading.current_thread().name),
            lambda _: pytest.fail("nothing to discard"),
        )
    finally:
        spawner.close()
    assert name.startswith("qb-spawn")
    assert afters == [threading.current_thread().name]


async def test_a_failed_job_raises_and_still_runs_after() -> None:
    spawner = Spawner()
    afters: list[int] = []

    def job() -> int:
        return cspawn.spawn(["/nonexistent/perl"], {}, cwd="/", fds=(0, 1, 2))

    try:
        with pytest.raises(FileNotFoundError):
            await spawner.call(job, lambda: afters.append(1), lambda _: None)
    finally:
        spawner.close()
    assert afters == [1]


@pytest.mark.parametrize("program", ["/bin/sleep", "/nonexistent/sleep"])
async def test_a_cancelled_caller_leaves_no_child_behind(program: str) -> None:
    spawner = Spawner()
    loop = asyncio.get_running_loop()
    discarded: asyncio.Future[int | None] = loop.create_future()
    afters: list[int] = []

    def job() -> int:
        return cspawn.spawn([program, "60"], {}, cwd="/", fds=(0, 1, 2))

    def discard(pid: int | None) -> None:
        if pid is not None:
            process.kill_group(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        discarded.set_result(pid)

    async def caller() -> int:
        return await spawner.call(job, lambda: afters.append(1), discard)

    try:
        task = loop.create_task(caller())
        await asyncio.sleep(0)  # the job is handed to its thread
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        pid = await asyncio.wait_for(discarded, 30)
    finally:
        spawner.close()
    assert afters == [1]
    if program == "/nonexistent/sleep":
        assert pid is None  # the launch failed: only the cleanup ran
        return
    assert pid is not None
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reaped by discard: not our child any more
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_many_spawns_leave_no_descriptor_behind() -> None:
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        pid = cspawn.spawn(["/bin/true"], {}, cwd="/", fds=(0, 1, 2))
        os.waitpid(pid, 0)
    assert len(os.listdir("/proc/self/fd")) == before
