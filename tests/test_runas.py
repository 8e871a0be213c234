"""Callbacks as another user (the daemon being root) and per-run resource limits."""

from __future__ import annotations

import json
import os
import pwd
import resource
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisord.daemon import runas
from supervisord.daemon.access import EXECUTE, Who, find_blocker
from supervisord.run import process
from supervisord.run.env import RUNTIME_DIR, RunAs
from supervisord.run.runner import Runner
from tests.test_forkserver import run_file, until, write_callback
from tests.test_runner import make_callback, make_settings, output_lines

NOBODY = pwd.getpwnam("nobody")
WHO = Who("nobody", NOBODY.pw_uid, frozenset(os.getgrouplist("nobody", NOBODY.pw_gid)))
# The checkout the daemon runs from: where the qb runtime a run as nobody needs lives.
CHECKOUT = os.path.dirname(os.path.dirname(RUNTIME_DIR))


def public_python() -> str | None:
    """An interpreter ``nobody`` may run (this venv's may live under a 0700 /root)."""
    for candidate in (sys.executable, "/usr/bin/python3"):
        if os.path.exists(candidate) and find_blocker(candidate, WHO, EXECUTE) is None:
            return candidate
    return None


def skip_if_the_checkout_is_private(settings: Any, directory: Path, file: str) -> None:
    """Skip, giving the daemon's own load-time refusal as the reason, when a run of
    ``file`` as nobody needs what this checkout keeps out of nobody's reach (the qb
    runtime, when the checkout sits in a 0700 directory). Any other refusal fails."""
    callback = make_callback(file, directory)
    refused = [why for _, why in runas.check(settings, [callback], os.geteuid())]
    private = [why for why in refused if f" {CHECKOUT}/" in why]
    if private:
        pytest.skip("; ".join(private))
    assert not refused


PYTHON = public_python()
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or PYTHON is None, reason="switching user needs root (and a public python)"
)

WHO_PY = """\
import json, os
json.dump({"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(),
           "groups": os.getgroups(),
           "env": {k: os.environ[k] for k in ("HOME", "USER", "LOGNAME")}}, open("who", "w"))
print("python ran")
"""
WHO_PL = """\
open(my $f, '>', 'who') or die "who: $!";
my @groups = split ' ', $);
shift @groups;
printf $f '{"uid": %d, "euid": %d, "gid": %d, "groups": [%s], "env": '
    . '{"HOME": "%s", "USER": "%s", "LOGNAME": "%s"}}', $<, $>, $( + 0, join(',', @groups),
    $ENV{HOME}, $ENV{USER}, $ENV{LOGNAME};
close $f;
print "perl ran\\n";
"""
LIMITS_PY = """\
import resource, subprocess
print(resource.getrlimit(resource.RLIMIT_NOFILE)[0], resource.getrlimit(resource.RLIMIT_AS)[0])
print(subprocess.run(["sh", "-c", "ulimit -n"], capture_output=True, text=True).stdout.strip())
"""
LIMITS_PL = 'print `sh -c "ulimit -n; ulimit -v"`;\n'
BOMB_PY = """\
import os, time
forked = 0
while forked < 1000:
    try:
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
    except OSError:
        break
    forked += 1
print(f"forked={forked}", flush=True)
time.sleep(30)
"""


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A world-writable directory (the callback's cwd) that ``nobody`` can enter."""
    path = Path(tempfile.mkdtemp(prefix="qbrunas-", dir="/tmp"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path)


def settings_for(tmp: Path, **changes: Any) -> Any:
    if "callback_user" in changes and PYTHON is not None:
        changes.setdefault("callback_python", PYTHON)
    return make_settings(tmp, kill_grace=0.3, **changes)


@pytest.mark.parametrize(
    ("spec", "euid", "expected"),
    [
        (None, 0, ("root", None)),
        ("0", 0, ("root", None)),
        ("nobody", 0, ("nobody", "switch")),
        (str(NOBODY.pw_uid), 0, ("nobody", "switch")),
        ("nobody", NOBODY.pw_uid, ("nobody", None)),
        ("nobody", 1000, "cannot run as user 'nobody': the daemon is not root"),
        ("no-such-user-qb", 0, "no such user 'no-such-user-qb' (supervisor_callback_user)"),
    ],
    ids=["unset", "root-by-uid", "by-name", "by-uid", "already-that-user", "not-root",
         "unknown"],
)  # fmt: skip
def test_resolve_user(spec: str | None, euid: int, expected: Any) -> None:
    got = process.resolve_user(spec, euid)
    if isinstance(expected, str):
        assert got == expected
        return
    assert not isinstance(got, str)
    entry, runas = got
    assert entry.pw_name == expected[0]
    if expected[1] is None:
        assert runas is None
    else:
        groups = tuple(os.getgrouplist(NOBODY.pw_name, NOBODY.pw_gid))
        assert runas == RunAs(NOBODY.pw_uid, NOBODY.pw_gid, groups)


async def test_unknown_user_is_an_error_per_run(tmp_path: Path) -> None:
    runner = Runner(settings_for(tmp_path, callback_user="no-such-user-qb"))
    write_callback(tmp_path, "cb.py", "print('never')\n")
    result = await run_file(runner, tmp_path, "cb.py")
    await runner.aclose()
    assert (result.outcome, result.pid) == ("error", None)
    assert result.description == "could not start: no such user 'no-such-user-qb' " \
        "(supervisor_callback_user)"  # fmt: skip


@needs_root
@pytest.mark.parametrize(
    ("file", "source", "mode"),
    [("who.py", WHO_PY, "forkserver"), ("who.py", WHO_PY, "fresh"), ("who.pl", WHO_PL, "fresh")],
    ids=["python-forkserver", "python-fresh", "perl"],
)
async def test_callback_runs_as_the_user(
    tmp_path: Path, shared_dir: Path, file: str, source: str, mode: str
) -> None:
    settings = settings_for(tmp_path, callback_user="nobody", python_mode=mode)
    write_callback(shared_dir, file, source)
    skip_if_the_checkout_is_private(settings, shared_dir, file)
    runner = Runner(settings)
    result = await run_file(runner, shared_dir, file)
    await runner.aclose()
    assert result.outcome == "ok", output_lines(result)
    who = json.loads((shared_dir / "who").read_text())
    groups = os.getgrouplist(NOBODY.pw_name, NOBODY.pw_gid)
    assert (who["uid"], who["euid"], who["gid"]) == (NOBODY.pw_uid,) * 2 + (NOBODY.pw_gid,)
    assert sorted(set(who["groups"])) == sorted(set(groups))
    assert who["env"] == {"HOME": NOBODY.pw_dir, "USER": "nobody", "LOGNAME": "nobody"}
    assert (shared_dir / "who").stat().st_uid == NOBODY.pw_uid
    assert result.log is not None and os.stat(result.log).st_uid == os.geteuid()


@needs_root
@pytest.mark.parametrize("mode", ["forkserver", "fresh"])
async def test_a_directory_the_user_cannot_enter_is_an_error(tmp_path: Path, mode: str) -> None:
    tmp_path.chmod(0o700)
    runner = Runner(settings_for(tmp_path, callback_user="nobody", python_mode=mode))
    write_callback(tmp_path, "cb.py", "print('never')\n")
    result = await run_file(runner, tmp_path, "cb.py")
    await runner.aclose()
    assert (result.outcome, result.pid) == ("error", None)
    assert result.description == f"could not start: cwd {tmp_path}: Permission denied"


@pytest.mark.parametrize(
    ("file", "source", "mode"),
    [("lim.py", LIMITS_PY, "forkserver"), ("lim.py", LIMITS_PY, "fresh"),
     ("lim.pl", LIMITS_PL, "fresh")],
    ids=["python-forkserver", "python-fresh", "perl"],
)  # fmt: skip
async def test_limits_apply_in_the_child_only(
    tmp_path: Path, file: str, source: str, mode: str
) -> None:
    ours = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit_as = 4 << 30
    runner = Runner(settings_for(tmp_path, limit_nofile=64, limit_as=limit_as, python_mode=mode))
    write_callback(tmp_path, file, source)
    result = await run_file(runner, tmp_path, file)
    await runner.aclose()
    assert result.outcome == "ok", output_lines(result)
    lines = output_lines(result)[1:]
    if file.endswith(".py"):
        assert lines == [f"64 {limit_as}", "64"]
    else:
        assert lines == ["64", str(limit_as // 1024)]
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == ours


@needs_root
@pytest.mark.parametrize("mode", ["forkserver", "fresh"])
async def test_fork_bomb_is_contained(tmp_path: Path, shared_dir: Path, mode: str) -> None:
    settings = settings_for(tmp_path, callback_user="nobody", limit_nproc=4,
                            callback_timeout=1.0, python_mode=mode)  # fmt: skip
    write_callback(shared_dir, "bomb.py", BOMB_PY)
    skip_if_the_checkout_is_private(settings, shared_dir, "bomb.py")
    runner = Runner(settings)
    result = await run_file(runner, shared_dir, "bomb.py")
    assert result.outcome == "timeout" and result.pid is not None
    forked = int(output_lines(result)[1].partition("=")[2])
    assert forked < 4  # RLIMIT_NPROC: nobody's processes, the callback included
    await runner.aclose()
    await until(lambda: not process.is_group_alive(result.pid))
