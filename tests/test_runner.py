"""The runner with real child processes: outcomes, timeouts, process groups, output, env, qb."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisord.core.model import Callback, Settings, Term
from supervisord.core.runtypes import Action, RunRequest, RunResult, log_path
from supervisord.run import cspawn
from supervisord.run.env import RUNTIME_DIR
from supervisord.run.process import Poller, decode_status
from supervisord.run.runner import Runner

FIXTURES = Path(__file__).parent / "fixtures" / "cb"
LANGUAGES = {".py": "python", ".pl": "perl", ".qcb": "qube"}


def make_settings(tmp: Path, **changes: Any) -> Settings:
    """Settings as the qb.conf parser would give them, for a tree under ``tmp``."""
    base = Settings(
        path=str(tmp / "qb.conf"),
        qbdir=str(tmp),
        callback_path=(str(FIXTURES),),
        language_flags=frozenset({"qube", "perl", "python", "mail"}),
        logpath=str(tmp / "logs"),
        event_socket=str(tmp / "cb.sock"),
        event_socket_mode=0o660,
        event_socket_group=None,
        event_allow_users=(),
        state_dir=str(tmp / "state"),
        callback_timeout=30.0,
        kill_grace=0.5,
        output_limit=1 << 20,
        concurrency=8,
        job_retention=86400.0,
        callback_user=None,
        callback_python=sys.executable,
        callback_perl="perl",
        per_job_order=True,
        history_retention=30 * 86400.0,
        python_mode="fresh",
        log_level="info",
    )
    return dataclasses.replace(base, **changes)


def make_callback(file: str, directory: Path = FIXTURES, **changes: Any) -> Callback:
    term = Term("complete", "job", "self", None)
    cb = Callback(
        file=file,
        dir=str(directory),
        line=1,
        language=LANGUAGES[Path(file).suffix],
        trigger_text="complete-job-self",
        trigger=term,
        terms=(term,),
    )
    return dataclasses.replace(cb, **changes)


def make_request(cb: Callback, owner: int | None = 1234, **event: Any) -> RunRequest:
    job = {"id": owner, "name": "shot010", "user": "alice", "pgrp": owner, "status": "complete"}
    doc = {"name": "complete", "type": "job", "job": job, "seq": 17, "event_id": "e-17"}
    doc["time"] = 1764064000.5
    doc.update(event)
    return RunRequest(
        run_id=5, seq=17, event_id="e-17", callback=cb, owner=owner, event_doc=doc, job_doc=job
    )


@pytest.fixture(params=["fresh", "forkserver"])
def mode(request: pytest.FixtureRequest) -> str:
    """supervisor_callback_python_mode: every Python run test runs both ways."""
    return str(request.param)


@pytest.fixture
async def runner(tmp_path: Path, mode: str) -> AsyncIterator[Runner]:
    r = Runner(make_settings(tmp_path, python_mode=mode))
    yield r
    await r.aclose()


def with_settings(runner: Runner, tmp: Path, **changes: Any) -> Runner:
    mode = runner.forkserver_state()["mode"]
    runner.update(make_settings(tmp, **{"python_mode": mode, **changes}))
    return runner


def output_lines(result: RunResult) -> list[str]:
    assert result.log is not None
    return Path(result.log).read_text().splitlines()


async def wait_exit(pid: int, timeout: float = 10.0) -> None:
    """Wait, under a deadline, for a process that is not our child to exit (pidfd)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    gone = loop.create_future()
    loop.add_reader(pidfd, gone.set_result, None)
    try:
        await asyncio.wait_for(gone, timeout)
        with contextlib.suppress(ChildProcessError):  # ours only as subreaper
            os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)


@pytest.fixture
def subreaper() -> Iterator[None]:
    """Orphans re-parent to this process, so their zombies can be reaped (PID 1 here
    does not reap, and a zombie still answers kill(pid, 0))."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_child_subreaper = 36
    assert libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0) == 0
    yield
    libc.prctl(pr_set_child_subreaper, 0, 0, 0, 0)


@pytest.mark.parametrize(
    ("exit_code", "sig", "words"),
    [
        (0, None, "exit status 0"),
        (3, None, "exit status 3"),
        (None, signal.SIGKILL, "killed by SIGKILL"),
        (None, signal.SIGSEGV, "killed by SIGSEGV"),
        (None, 77, "killed by signal 77"),
    ],
    ids=["ok", "exit3", "sigkill", "sigsegv", "unknown-signal"],
)
def test_decode_status(exit_code: int | None, sig: int | None, words: str) -> None:
    assert decode_status(exit_code, sig) == words


@pytest.mark.parametrize(
    ("owner", "path"),
    [(1234, "logs/job/1000/1234/1234.cb"), (999, "logs/job/0/999/999.cb"),
     (None, "logs/global.cb")],
    ids=["job", "below-1000", "global"],
)  # fmt: skip
def test_log_path(tmp_path: Path, owner: int | None, path: str) -> None:
    assert Runner(make_settings(tmp_path)).log_path(owner) == str(tmp_path / path)
    assert log_path(str(tmp_path / "logs"), owner) == str(tmp_path / path)


@pytest.mark.parametrize(
    ("file", "outcome", "exit_code", "sig", "description"),
    [
        ("ok.py", "ok", 0, None, "exit status 0"),
        ("exit3.py", "failed", 3, None, "exit status 3"),
        ("raises.py", "failed", 1, None, "exit status 1"),
        ("segv.py", "failed", None, signal.SIGSEGV, "killed by SIGSEGV"),
    ],
    ids=["exit0", "exit3", "raises", "sigsegv"],
)
async def test_outcomes(
    runner: Runner, file: str, outcome: str, exit_code: int, sig: int, description: str
) -> None:
    result = await runner.run(make_request(make_callback(file)))
    assert (result.outcome, result.exit_code, result.signal) == (outcome, exit_code, sig)
    assert result.description == description
    assert result.pid is not None and not result.truncated and result.actions == ()


async def test_traceback_goes_to_the_log(runner: Runner) -> None:
    result = await runner.run(make_request(make_callback("raises.py")))
    lines = output_lines(result)
    assert "callback=raises.py" in lines[0] and "job=1234" in lines[0] and "seq=17" in lines[0]
    assert lines[-1] == "RuntimeError: boom from raises.py"


async def test_header_then_output_and_runs_append(runner: Runner) -> None:
    first = await runner.run(make_request(make_callback("ok.py")))
    second = await runner.run(make_request(make_callback("exit3.py")))
    assert first.log == second.log == runner.log_path(1234)
    lines = output_lines(second)
    assert [line.startswith("=== ") for line in lines] == [True, False, True, False]
    assert lines[1] == "hello from ok.py" and lines[3] == "about to exit 3"


async def test_silent_run_leaves_no_log(runner: Runner) -> None:
    result = await runner.run(make_request(make_callback("quiet.py")))
    assert result.outcome == "ok"
    assert result.log is not None and not os.path.exists(result.log)


@pytest.mark.parametrize(
    ("file", "sig"),
    [("hang.py", signal.SIGTERM), ("ignore_term.pl", signal.SIGKILL)],
    ids=["dies-on-sigterm", "needs-sigkill"],
)
async def test_timeout(runner: Runner, tmp_path: Path, file: str, sig: int, mode: str) -> None:
    if file.endswith(".pl") and mode == "forkserver":
        pytest.skip("perl never goes through the fork server")
    with_settings(runner, tmp_path, callback_timeout=1.0, kill_grace=0.5)
    result = await runner.run(make_request(make_callback(file)))
    assert (result.outcome, result.description) == ("timeout", "timed out after 1 s")
    assert (result.exit_code, result.signal) == (None, sig)
    assert result.pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(result.pid, 0)  # reaped


async def test_os_system_timeout_does_not_hold_up_other_runs(
    runner: Runner, tmp_path: Path
) -> None:
    with_settings(runner, tmp_path, callback_timeout=1.0)
    slow = asyncio.ensure_future(runner.run(make_request(make_callback("system_sleep.py"))))
    quick = await runner.run(make_request(make_callback("ok.py"), owner=77))
    assert quick.outcome == "ok" and not slow.done()
    assert (await slow).outcome == "timeout"


async def test_grandchild_is_stopped(tmp_path: Path, subreaper: None, mode: str) -> None:
    """Left running when the callback exits (SPEC §4: tests/test_background.py), it is
    stopped at the runner's close."""
    runner = Runner(make_settings(tmp_path, kill_grace=0.5, python_mode=mode))
    result = await runner.run(make_request(make_callback("grandchild.py")))
    assert result.outcome == "ok"
    await runner.aclose()  # awaits the group cleanup
    line = next(x for x in output_lines(result) if x.startswith("grandchild="))
    grandchild = int(line.partition("=")[2])
    await wait_exit(grandchild)
    with pytest.raises(ProcessLookupError):
        os.kill(grandchild, 0)


async def test_output_is_capped(runner: Runner) -> None:
    result = await runner.run(make_request(make_callback("flood.py")))
    assert result.outcome == "ok" and result.truncated
    assert result.log is not None
    data = Path(result.log).read_bytes()
    header, _, rest = data.partition(b"\n")
    marker = b"[qbcallbacks: output cut at 1048576 bytes]\n"
    assert header.startswith(b"=== ") and rest.endswith(marker)
    assert len(rest) == (1 << 20) + len(marker)


@pytest.mark.parametrize("file", ["dump.py", "dump.pl"], ids=["python", "perl"])
async def test_environment_cwd_and_stdin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, file: str, mode: str
) -> None:
    for name in ("NOTIFY_SOCKET", "LISTEN_FDS", "WATCHDOG_USEC", "SECRET"):
        monkeypatch.setenv(name, "leak")
    monkeypatch.setenv("LANG", "C.UTF-8")
    runner = Runner(make_settings(tmp_path, python_mode=mode))
    req = dataclasses.replace(
        make_request(make_callback(file), type="work", subid=2, work="frame5", host="node7"),
        redelivered=True,
    )
    result = await runner.run(req)
    await runner.aclose()
    assert result.outcome == "ok", output_lines(result)
    seen = json.loads(output_lines(result)[1])
    lib = {"dump.py": "PYTHONPATH", "dump.pl": "PERL5LIB"}[file]
    expected = {
        "PATH": os.environ["PATH"], "LANG": "C.UTF-8", "QBDIR": str(tmp_path),
        "QBJOBID": "1234", "QBSUBID": "2", "QB_WORK": "frame5", "QB_HOST": "node7",
        "QB_EVENT_NAME": "complete", "QB_EVENT_TYPE": "work", "QB_EVENT_SEQ": "17",
        "QB_EVENT_ID": "e-17", "QB_TRIGGER": "complete-job-self", "QB_CALLBACK": file,
        "QB_REDELIVERED": "1", "QB_ATTEMPT": "1",
    }  # fmt: skip
    env = seen["env"]
    assert {k: env[k] for k in expected} == expected
    assert set(env) == set(expected) | {"HOME", "USER", "LOGNAME", lib}
    assert env["USER"] == env["LOGNAME"] and os.path.isdir(env["HOME"])
    assert seen["cwd"] == str(FIXTURES)
    assert seen["stdin"] == {
        "event": dict(req.event_doc), "job": dict(req.job_doc),
        "callback": {"file": file, "trigger": "complete-job-self"}, "redelivered": True,
    }  # fmt: skip
    assert (seen["jobid"], seen["subid"], seen["workid"]) == (1234, 2, "frame5")
    assert seen["event"] == dict(req.event_doc)


async def test_python_callback_runs_as_main_in_its_own_dir(runner: Runner) -> None:
    result = await runner.run(make_request(make_callback("dump.py"), owner=None))
    seen = json.loads(output_lines(result)[1])
    assert (seen["name"], seen["path0"]) == ("__main__", str(FIXTURES))
    assert seen["argv"] == [str(FIXTURES / "dump.py")]
    assert seen["jobid"] is None and "QBJOBID" not in seen["env"]
    assert result.log == runner.log_path(None)


async def test_python_actions_and_jobinfo(runner: Runner) -> None:
    result = await runner.run(make_request(make_callback("actions.py")))
    assert result.outcome == "ok", output_lines(result)
    assert result.actions == (
        Action("unblock", "1234"), Action("unblock", "1234:frame5"),
        Action("retry", "1234.2"), Action("kill", "7"), Action("kill", "8"),
        Action("complete", "1234"),
    )  # fmt: skip
    answers = json.loads(output_lines(result)[1])
    assert [job["id"] for job in answers["id"]] == [1234] and answers["pgrp"] == []


async def test_big_document_blocks_nothing(runner: Runner) -> None:
    blob = "x" * (3 << 20)  # far beyond a socket buffer: stdin and hello still arrive
    result = await runner.run(make_request(make_callback("actions.py"), blob=blob))
    assert result.outcome == "ok" and len(result.actions) == 6


async def test_jobinfo_comes_from_the_provider(tmp_path: Path, mode: str) -> None:
    asked: list[tuple[str, Any]] = []

    async def registry(by: str, value: Any) -> list[dict[str, Any]]:
        asked.append((by, value))
        return [{"id": value, "from": "registry"}]

    runner = Runner(make_settings(tmp_path, python_mode=mode), jobinfo=registry)
    result = await runner.run(make_request(make_callback("actions.py")))
    await runner.aclose()
    answers = json.loads(output_lines(result)[1])
    assert asked == [("-id", 1234), ("-pgrp", 99)]
    assert answers["pgrp"] == [{"id": 99, "from": "registry"}]


async def test_perl_actions_and_jobinfo(runner: Runner) -> None:
    result = await runner.run(make_request(make_callback("actions.pl")))
    assert result.outcome == "ok", output_lines(result)
    assert result.actions == (
        Action("unblock", "1234"), Action("unblock", "1234:frame5"),
        Action("kill", "7"), Action("kill", "8"),
    )  # fmt: skip
    answers = json.loads(output_lines(result)[1])
    assert [job["id"] for job in answers["id"]] == [1234] and answers["event"] == "complete"


async def test_abused_channel_hurts_nothing(runner: Runner) -> None:
    result = await runner.run(make_request(make_callback("abuse.py")))
    assert result.outcome == "ok", output_lines(result)
    assert result.actions == (Action("unblock", "1"),)
    assert "survived" in output_lines(result)


@pytest.mark.parametrize(
    ("changes", "file", "reason"),
    [
        ({"callback_perl": "/nonexistent/perl"}, "actions.pl", "/nonexistent/perl"),
        ({"callback_python": "no-such-python"}, "ok.py", "interpreter 'no-such-python'"),
        ({}, "missing.py", "cannot read"),
        ({"language_flags": frozenset({"qube"})}, "ok.py", "language python is disabled"),
    ],
    ids=["missing-perl", "python-not-on-path", "missing-file", "language-disabled"],
)
async def test_cannot_start(
    runner: Runner, tmp_path: Path, changes: dict[str, Any], file: str, reason: str
) -> None:
    with_settings(runner, tmp_path, **changes)
    result = await runner.run(make_request(make_callback(file)))
    assert result.outcome == "error" and result.pid is None
    assert result.description.startswith("could not start: ") and reason in result.description


async def test_aclose_stops_runs_in_flight(tmp_path: Path) -> None:
    runner = Runner(make_settings(tmp_path))
    run = asyncio.ensure_future(runner.run(make_request(make_callback("ignore_term.pl"))))
    while not runner._active:  # a fact: the child has been spawned
        await asyncio.sleep(0)
    await runner.aclose()
    result = await run
    assert (result.outcome, result.description) == ("timeout", "stopped at shutdown")
    assert result.signal in (signal.SIGTERM, signal.SIGKILL)  # SIGTERM if not yet ignored
    after = await runner.run(make_request(make_callback("ok.py")))
    assert after.outcome == "error"


@pytest.mark.parametrize("failing", [0, 2], ids=["first-fails", "last-fails"])
async def test_poller_serves_every_ready_fd_and_contains_a_failing_callback(failing: int) -> None:
    loop = asyncio.get_running_loop()
    poller = Poller(loop)
    pipes = [os.pipe() for _ in range(3)]
    seen: list[int] = []
    done: asyncio.Future[None] = loop.create_future()

    def reader(i: int, fd: int) -> Any:
        def on_readable() -> None:
            os.read(fd, 16)
            assert poller.remove_reader(fd)
            seen.append(i)
            if len(seen) == len(pipes):
                done.set_result(None)
            if i == failing:
                raise RuntimeError("a broken callback")

        return on_readable

    for i, (read_end, _) in enumerate(pipes):
        poller.add_reader(read_end, reader(i, read_end))
    for _, write_end in pipes:
        os.write(write_end, b"x")
    await done
    assert sorted(seen) == [0, 1, 2]
    assert not poller.remove_reader(pipes[0][0])  # removed once, not twice
    poller.close()
    for fd in [fd for pair in pipes for fd in pair]:
        os.close(fd)


async def test_a_perl_script_that_never_names_qb_starts_without_the_module(
    tmp_path: Path,
) -> None:
    # Loading qb costs every Perl start; a script without the letters "qb" goes without
    # it (no -Mqb, no PERL5LIB). Editing the script is seen at the next run, no reload.
    script = tmp_path / "plain.pl"
    module = 'my $m = "q" . "b.pm";\n'  # the letters must not appear together
    report = 'print join(",", $ENV{PERL5LIB} // "none", $INC{$m} ? "loaded" : "not"), "\\n";\n'
    script.write_text(module + report)
    runner = Runner(make_settings(tmp_path))
    try:
        first = await runner.run(make_request(make_callback("plain.pl", tmp_path), owner=1))
        script.write_text("# uses qb after all\n" + module + report)
        second = await runner.run(make_request(make_callback("plain.pl", tmp_path), owner=2))
    finally:
        await runner.aclose()
    assert first.outcome == second.outcome == "ok"
    assert output_lines(first)[1:] == ["none,not"]
    assert output_lines(second)[1:] == [f"{RUNTIME_DIR},loaded"]


@pytest.mark.parametrize("limits", [{}, {"limit_nofile": 256}], ids=["spawn", "exec"])
async def test_a_perl_callback_starts_with_sigpipe_at_its_default(
    tmp_path: Path, limits: dict[str, int]
) -> None:
    # The daemon (Python) ignores SIGPIPE; a child must not inherit that, whether it is
    # spawned directly or exec'd by the fork server (which a limit requires).
    script = tmp_path / "sig.pl"
    script.write_text(
        'open(my $s, "<", "/proc/self/status") or die;\n'
        'while (<$s>) { print "$1\\n" if /^SigIgn:\\s+(\\S+)/ }\n'
    )
    runner = Runner(make_settings(tmp_path, **limits))
    try:
        result = await runner.run(make_request(make_callback("sig.pl", tmp_path)))
    finally:
        await runner.aclose()
    assert result.outcome == "ok", output_lines(result)
    ignored = int(output_lines(result)[1], 16)
    assert ignored & (1 << (signal.SIGPIPE - 1)) == 0
    assert ignored & (1 << (signal.SIGXFSZ - 1)) == 0


@pytest.mark.parametrize("mode", ["forkserver", "fresh"])
async def test_a_module_beside_the_callback_wins_over_the_standard_library(
    tmp_path: Path, mode: str
) -> None:
    # As with `python FILE`: json.py (which the fork server itself has loaded) and
    # email.py (which it would pre-import for the callback) beside the script come first.
    (tmp_path / "json.py").write_text("WHO = 'local json'\n")
    (tmp_path / "email.py").write_text("WHO = 'local email'\n")
    (tmp_path / "cb.py").write_text("import email\nimport json\nprint(json.WHO, email.WHO)\n")
    runner = Runner(make_settings(tmp_path, python_mode=mode))
    try:
        first = await runner.run(make_request(make_callback("cb.py", tmp_path), owner=1))
        second = await runner.run(make_request(make_callback("cb.py", tmp_path), owner=2))
    finally:
        await runner.aclose()
    for result in (first, second):
        assert result.outcome == "ok", output_lines(result)
        assert output_lines(result)[1:] == ["local json local email"]


async def test_without_glibc_spawn_extensions_runs_start_with_os_posix_spawn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A libc without posix_spawn_file_actions_addclosefrom_np (musl, glibc < 2.34): the
    # runner spawns on the loop with os.posix_spawn, with the same result.
    monkeypatch.setattr(cspawn, "available", lambda: False)
    (tmp_path / "cwd.pl").write_text('use Cwd; print getcwd(), " $qb::jobid\\n";\n')
    runner = Runner(make_settings(tmp_path))
    try:
        result = await runner.run(make_request(make_callback("cwd.pl", tmp_path)))
    finally:
        await runner.aclose()
    assert result.outcome == "ok", output_lines(result)
    assert output_lines(result)[1:] == [f"{tmp_path} 1234"]
