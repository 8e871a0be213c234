"""From a checkout other users cannot enter: tests that switch user stage or skip; load refuses."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from supervisord.daemon.access import EXECUTE, Who, find_blocker
from tests.daemon_harness import DEADLINE, REPO, make_tree

NOBODY = pwd.getpwnam("nobody")
WHO = Who("nobody", NOBODY.pw_uid, frozenset(os.getgrouplist("nobody", NOBODY.pw_gid)))
AS_NOBODY = {"user": NOBODY.pw_uid, "group": NOBODY.pw_gid, "extra_groups": []}
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching user needs root")
# The tests that failed from a private checkout (issue 13.3), as pytest node ids.
SWITCHING_TESTS = (
    "tests/test_access_checkout.py::test_read_only_state_dir_at_start_exits_78_as_nobody",
    "tests/test_runas.py::test_callback_runs_as_the_user[python-fresh]",
    "tests/test_runas.py::test_fork_bomb_is_contained[fresh]",
)


def stage_package(dest: Path) -> Path:
    """A copy of the supervisord package in ``dest`` that everyone may read, for a
    daemon started as another user: the checkout itself may sit in a 0700 directory."""
    shutil.copytree(
        REPO / "supervisord", dest / "supervisord", ignore=shutil.ignore_patterns("__pycache__")
    )
    for path in [dest, *dest.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return dest


def python_for_nobody(pythonpath: Path) -> str:
    """An interpreter nobody can run the daemon with (package from ``pythonpath``, its
    pyyaml from the interpreter's own site); skips, saying why, when there is none."""
    reasons = []
    for python in dict.fromkeys((sys.executable, "/usr/bin/python3")):
        blocked = find_blocker(python, WHO, EXECUTE)
        if blocked is not None or not os.path.exists(python):
            reasons.append(f"{python}: {blocked.why() if blocked else 'missing'}")
            continue
        probe = subprocess.run(
            [python, "-c", "import yaml, supervisord.daemon.serve"], cwd="/",
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(pythonpath)},
            capture_output=True, text=True, timeout=DEADLINE, check=False, **AS_NOBODY,
        )  # fmt: skip
        if probe.returncode == 0:
            return python
        reasons.append(f"{python}: {(probe.stderr.strip().splitlines() or ['failed'])[-1]}")
    pytest.skip("no interpreter user 'nobody' can run the daemon with: " + "; ".join(reasons))


@needs_root
def test_read_only_state_dir_at_start_exits_78_as_nobody(short_tmp: Path) -> None:
    root = make_tree({}, "", root=short_tmp)
    state = root / "state"
    state.mkdir()
    os.chmod(root, 0o755)
    os.chmod(state, 0o555)
    for sub in ("run", "logs"):
        (root / sub).mkdir()
        os.chown(root / sub, NOBODY.pw_uid, NOBODY.pw_gid)
    package = stage_package(root / "pkg")
    out = subprocess.run(
        [python_for_nobody(package), "-m", "supervisord", "serve", "--config",
         str(root / "etc/qb.conf")],
        env={**os.environ, "QBDIR": str(root), "PYTHONPATH": str(package)}, cwd=root,
        capture_output=True, text=True, timeout=DEADLINE, **AS_NOBODY,
    )  # fmt: skip
    assert out.returncode == 78, out.stderr
    assert "state" in out.stderr


def private_layout(top: Path) -> tuple[Path, Path, Path]:
    """In ``top`` (0700): a copy of the package, a callback tree, a qb.conf running its
    callbacks as nobody, fresh, with an interpreter nobody may run."""
    package = stage_package(top / "qb")
    cb = top / "cb"
    cb.mkdir()
    (cb / "callbacks.conf").write_text(
        "a.py = done-job-self\nb.py = failed-job-self\nc.pl = done-job-self\n"
    )
    for name, text in {"a.py": "x = 1\n", "b.py": "y = 2\n", "c.pl": "qb::fail(1);\n"}.items():
        (cb / name).write_text(text)
    conf = top / "qb.conf"
    conf.write_text(
        f"supervisor_universal_callback_path = {cb}\nsupervisor_callback_user = nobody\n"
        "supervisor_callback_python_mode = fresh\nsupervisor_callback_python = /usr/bin/python3\n"
        f"supervisor_callback_state_dir = {top}/state\nsupervisor_logpath = {top}/logs\n"
        f"supervisor_event_socket = {top}/cb.sock\n"
    )
    return package, cb, conf


@needs_root
@pytest.mark.skipif(not os.path.exists("/usr/bin/python3"), reason="no /usr/bin/python3")
@pytest.mark.parametrize(("command", "status"), [("check", 1), ("serve", 78)])
def test_a_tree_and_runtime_in_a_private_directory_are_refused_at_load(
    short_tmp: Path, command: str, status: int
) -> None:
    os.chmod(short_tmp, 0o700)
    package, cb, conf = private_layout(short_tmp)
    out = subprocess.run(
        [sys.executable, "-m", "supervisord", command, "--config", str(conf)], cwd=short_tmp,
        env={**os.environ, "PYTHONPATH": str(package)}, capture_output=True, text=True,
        timeout=DEADLINE,
    )  # fmt: skip
    assert out.returncode == status, out.stdout + out.stderr
    why = f"(a parent directory, {short_tmp}, is 0700)"
    runtime = package / "supervisord" / "runtime"
    lines = [
        f"{cb}/callbacks.conf:1: user 'nobody' cannot enter {cb} {why}; needed by 3 "
        "callbacks: this one and 2 more",
        f"{cb}/callbacks.conf:1: user 'nobody' cannot read {runtime}/_qbrun.py {why}; needed "
        "by 2 callbacks: this one and 1 more",
        f"{cb}/callbacks.conf:3: user 'nobody' cannot read {runtime}/qb.pm {why}",
    ]
    shown = out.stdout if command == "check" else out.stderr
    prefix = "" if command == "check" else "qbsupervisor: "
    assert [line for line in shown.splitlines() if "user 'nobody'" in line] == [
        prefix + line for line in lines
    ]


@needs_root
def test_the_user_switching_tests_pass_or_skip_from_a_private_checkout(short_tmp: Path) -> None:
    os.chmod(short_tmp, 0o700)
    checkout = short_tmp / "qb"
    ignore = shutil.ignore_patterns("__pycache__")
    for part in ("supervisord", "tests"):
        shutil.copytree(REPO / part, checkout / part, ignore=ignore)
    shutil.copy(REPO / "pyproject.toml", checkout)
    report = short_tmp / "report.xml"
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
         f"--junitxml={report}", *SWITCHING_TESTS],
        cwd=checkout, env={**os.environ, "PYTHONPATH": str(checkout)}, capture_output=True,
        text=True, timeout=4 * DEADLINE,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    outcomes = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        skipped = case.find("skipped")
        outcomes[case.get("name")] = "passed" if skipped is None else skipped.get("message")
    reason = (
        f"user 'nobody' cannot read {checkout}/supervisord/runtime/_qbrun.py (a parent "
        f"directory, {short_tmp}, is 0700)"
    )
    assert outcomes == {
        "test_read_only_state_dir_at_start_exits_78_as_nobody": "passed",  # staged
        "test_callback_runs_as_the_user[python-fresh]": reason,
        "test_fork_bomb_is_contained[fresh]": reason,
    }
    assert "SKIPPED" in out.stdout and reason in out.stdout  # printed, for whoever runs it
