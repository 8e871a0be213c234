"""Load refuses what supervisor_callback_user cannot reach, naming callbacks.conf:line."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from supervisord.daemon import runas
from supervisord.daemon.access import READ, Who, find_blocker
from supervisord.daemon.load import load_callbacks
from supervisord.run.env import PYTHON_BOOTSTRAP
from tests.daemon_harness import DEADLINE, Daemon, event, make_tree
from tests.test_load import errors_of, make_settings, write_tree

NOBODY = pwd.getpwnam("nobody")
WHO = Who("nobody", NOBODY.pw_uid, frozenset(os.getgrouplist("nobody", NOBODY.pw_gid)))
AS_NOBODY = "supervisor_callback_user = nobody\n"
PUBLIC_PYTHON = "supervisor_callback_python = /usr/bin/python3\n"
FRESH = "supervisor_callback_python_mode = fresh\n" + PUBLIC_PYTHON
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/usr/bin/python3"),
    reason="callbacks switch user only when the daemon is root (and /usr/bin/python3 is here)",
)


@pytest.fixture
def base() -> Iterator[Path]:
    """A directory everyone may enter, holding ``priv``, which only root may."""
    path = Path(tempfile.mkdtemp(prefix="qbacl", dir="/tmp"))
    path.chmod(0o755)
    (path / "priv").mkdir(mode=0o700)
    yield path
    shutil.rmtree(path)


def tree(directory: Path) -> Path:
    files = {"a.py": "x = 1\n", "b.py": "y = 2\n", "m.qcb": "unblock-self\n"}
    conf = "a.py = done-job-self\nb.py = done-job-self\nm.qcb = done-job-self\n"
    return write_tree(directory, conf, files)


def not_about_the_runtime(errors: list[str]) -> list[str]:
    """The errors that do not depend on where this checkout lives (its qb runtime)."""
    runtime = os.path.dirname(PYTHON_BOOTSTRAP)
    return [error for error in errors if f" {runtime}" not in error]


def test_a_private_callback_directory_is_refused_with_file_and_line(base: Path) -> None:
    cb = tree(base / "priv" / "cb")
    assert errors_of(make_settings(cb, extra=AS_NOBODY)) == [
        f"{cb}/callbacks.conf:1: user 'nobody' cannot enter {cb} (a parent directory, "
        f"{base}/priv, is 0700); needed by 2 callbacks: this one and 1 more"
    ]  # the .qcb is interpreted by the daemon itself: no process, no cwd


@pytest.mark.parametrize("user", [None, "root", "0"])
def test_no_check_when_callbacks_run_as_the_daemons_user(base: Path, user: str | None) -> None:
    cb = tree(base / "priv" / "cb")
    extra = f"supervisor_callback_user = {user}\n" if user else ""
    assert len(load_callbacks(make_settings(cb, extra=extra)).callbacks) == 3


def test_a_fork_server_run_needs_the_directory_only(base: Path) -> None:
    cb = tree(base / "cb")
    (cb / "b.py").chmod(0o600)  # compiled by the fork server, as root: nobody never reads it
    settings = make_settings(cb, extra=AS_NOBODY + PUBLIC_PYTHON)
    assert len(load_callbacks(settings).callbacks) == 3


def test_a_fresh_run_needs_the_interpreter_and_the_file(base: Path) -> None:
    cb = tree(base / "cb")
    (cb / "b.py").chmod(0o600)
    python = base / "priv" / "python3"
    python.symlink_to("/usr/bin/python3")
    extra = f"{AS_NOBODY}{FRESH}supervisor_callback_python = {python}\n"  # the last one wins
    errors = errors_of(make_settings(cb, extra=extra))
    assert not_about_the_runtime(errors) == [
        f"{cb}/callbacks.conf:1: user 'nobody' cannot execute supervisor_callback_python "
        f"{python} (a parent directory, {base}/priv, is 0700); needed by 2 callbacks: this "
        "one and 1 more",
        f"{cb}/callbacks.conf:2: user 'nobody' cannot read {cb}/b.py (it is 0600, owned by "
        "root:root)",
    ]
    runtime_blocked = find_blocker(PYTHON_BOOTSTRAP, WHO, READ) is not None
    assert len(errors) == 2 + runtime_blocked  # a private checkout's runtime: told as well


def test_every_directory_and_language_told_once_with_a_count(base: Path) -> None:
    runtime = base / "priv" / "runtime"
    runtime.mkdir()
    first = write_tree(
        base / "one", "a.py = done-job-self\nq.pl = done-job-self\nplain.pl = done-job-self\n",
        {"a.py": "", "q.pl": "qb::unblock(1);\n", "plain.pl": "print 1;\n"},
    )  # fmt: skip
    second = write_tree(base / "priv" / "two", "b.py = done-job-self\n", {"b.py": ""})
    settings = make_settings(first, second, extra=AS_NOBODY + FRESH)
    callbacks = load_callbacks(make_settings(first, second, extra=FRESH)).callbacks
    refused = runas.refusals(settings, callbacks, WHO, "/usr/bin:/bin", str(runtime))
    why = f"(a parent directory, {base}/priv, is 0700)"
    assert [(cb.file, reason) for cb, reason in refused] == [
        ("a.py", f"user 'nobody' cannot read {runtime}/_qbrun.py {why}; needed by 2 "
                 "callbacks: this one and 1 more"),
        ("q.pl", f"user 'nobody' cannot read {runtime}/qb.pm {why}"),  # plain.pl needs no qb
        ("b.py", f"user 'nobody' cannot enter {second} {why}"),
    ]  # fmt: skip


def test_a_runtime_directory_nobody_cannot_list_is_refused(base: Path) -> None:
    runtime = base / "runtime"
    runtime.mkdir(mode=0o711)  # its files are readable, but `import qb` lists the directory
    for name in ("_qbrun.py", "qb.py"):
        (runtime / name).write_text("")
    cb = write_tree(base / "cb", "a.py = done-job-self\n", {"a.py": ""})
    settings = make_settings(cb, extra=AS_NOBODY + FRESH)
    callbacks = load_callbacks(make_settings(cb, extra=FRESH)).callbacks
    refused = runas.refusals(settings, callbacks, WHO, "/usr/bin:/bin", str(runtime))
    assert [reason for _, reason in refused] == [
        f"user 'nobody' cannot read {runtime} (it is 0711, owned by root:root)"
    ]


def test_serve_exits_78_naming_the_line(short_tmp: Path) -> None:
    root = make_tree({"a.py": "pass\n"}, "a.py = complete-job-self\n", AS_NOBODY, short_tmp)
    os.chmod(root, 0o700)
    out = subprocess.run(
        [sys.executable, "-m", "supervisord", "serve", "--config", str(root / "etc/qb.conf")],
        env={**os.environ, "QBDIR": str(root)}, capture_output=True, text=True, timeout=DEADLINE,
    )  # fmt: skip
    assert out.returncode == 78, out.stderr
    assert (
        f"{root}/callback/callbacks.conf:1: user 'nobody' cannot enter {root}/callback "
        f"(a parent directory, {root}, is 0700)"
    ) in out.stderr


def test_reload_refuses_and_keeps_the_running_table(
    daemon_factory: Callable[..., Daemon],
) -> None:
    d = daemon_factory({"a.py": "pass\n"}, "a.py = complete-job-self\n", AS_NOBODY, start=False)
    d.root.chmod(0o755)
    d.start()
    (d.root / "callback" / "callbacks.conf").write_text("a.py = failed-job-self\n")
    d.root.chmod(0o700)
    reply = d.request({"op": "reload"})
    assert reply["ok"] is False and reply["error"]["code"] == "invalid_config"
    assert reply["errors"] == [
        f"{d.root}/callback/callbacks.conf:1: user 'nobody' cannot enter {d.root}/callback "
        f"(a parent directory, {d.root}, is 0700)"
    ]
    assert d.request({**event("complete"), "op": "match"})["matched"] == ["a.py"]
    d.root.chmod(0o755)
    assert d.request({"op": "reload"}) == {"ok": True, "callbacks": 1}
    assert d.request({**event("failed"), "op": "match"})["matched"] == ["a.py"]
