"""Tests of loading qb.conf and callback directories from real files in tmp_path."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from supervisord.core.errors import ConfigErrors
from supervisord.core.model import Settings, Term
from supervisord.core.qbconf import parse_qbconf
from supervisord.daemon.load import load_callbacks, read_qbconf

PY2 = "except Exception, e:"
SPEC_CONF = """\
# filename = triggers
logFailuresToDB.py = failed-job-self
mail-status.qcb    = done-job-self
checkWork.pl       = done-work-self-*
submitted.py       = submit-job-self
"""
OTHER_UID = 4242


def make_settings(*directories: Path | str, extra: str = "") -> Settings:
    path = ",".join(str(d) for d in directories)
    text = f"supervisor_universal_callback_path = {path}\n{extra}"
    return parse_qbconf(text, "qb.conf", {"QBDIR": "/nonexistent"}, sys.executable)


def write_tree(directory: Path, conf: str, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "callbacks.conf").write_text(conf)
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def spec_tree(directory: Path) -> Path:
    files = {
        "logFailuresToDB.py": "import sys\nprint(qb.jobid())\n",
        "mail-status.qcb": "# notify\nmail-status\n",
        "checkWork.pl": "print 'not checked';;; }}}\n",
        "submitted.py": "x = 1\n",
    }
    return write_tree(directory, SPEC_CONF, files)


def errors_of(settings: Settings, daemon_uid: int | None = None) -> list[str]:
    with pytest.raises(ConfigErrors) as caught:
        load_callbacks(settings, daemon_uid=daemon_uid)
    return [str(error) for error in caught.value.errors]


def test_spec_tree_loads(tmp_path: Path) -> None:
    directory = spec_tree(tmp_path / "cb")
    loaded = load_callbacks(make_settings(directory))
    assert loaded.warnings == ()
    assert [(c.file, c.line, c.language) for c in loaded.callbacks] == [
        ("logFailuresToDB.py", 2, "python"),
        ("mail-status.qcb", 3, "qube"),
        ("checkWork.pl", 4, "perl"),
        ("submitted.py", 5, "python"),
    ]
    mail = loaded.callbacks[1]
    assert mail.dir == str(directory.resolve())
    assert mail.terms == (Term("done", "job", "self", None),)
    assert [(code.line, code.mail) for code in mail.qcb] == [(2, "mail-status")]
    assert loaded.callbacks[0].qcb == ()


def test_directories_in_path_order_with_warnings(tmp_path: Path) -> None:
    first = write_tree(tmp_path / "b", "one.py = done-job-self\n", {"one.py": ""})
    second = write_tree(tmp_path / "a", "two.pl = done-job-self\n", {"two.pl": ""})
    empty = tmp_path / "empty"
    empty.mkdir()
    settings = make_settings(tmp_path / "missing", first, empty, second, first)
    loaded = load_callbacks(settings)
    assert [c.file for c in loaded.callbacks] == ["one.py", "two.pl"]
    assert loaded.warnings == (
        f"{tmp_path}/missing: callback directory does not exist (skipped)",
        f"{empty}: no callbacks.conf (skipped)",
        f"{first}: listed twice in the callback path (skipped)",
    )


def test_symlinked_directory_resolves(tmp_path: Path) -> None:
    real = write_tree(tmp_path / "real", "a.py = done-job-self\n", {"a.py": ""})
    (tmp_path / "link").symlink_to(real)
    (callback,) = load_callbacks(make_settings(tmp_path / "link")).callbacks
    assert callback.dir == str(real)
    assert callback.key == f"{real}/callbacks.conf:1"


def _chmod(name: str, mode: int) -> Callable[[Path], None]:
    def change(directory: Path) -> None:
        target = directory / name
        target.chmod(target.stat().st_mode | mode)

    return change


def _symlink(name: str, target: Path | str) -> Callable[[Path], None]:
    def link(directory: Path) -> None:
        (directory / name).unlink()
        (directory / name).symlink_to(target)

    return link


def _world_writable_target(directory: Path) -> None:
    outside = directory.parent / "outside.py"
    outside.write_text("x = 1\n")
    outside.chmod(0o666)
    _symlink("a.py", outside)(directory)


def _directory_named(name: str) -> Callable[[Path], None]:
    def make(directory: Path) -> None:
        (directory / name).unlink()
        (directory / name).mkdir()

    return make


# (id, callbacks.conf, files, change to the tree, extra qb.conf, expected reason after "conf:1: ")
ERRORS: list[tuple[str, str, dict[str, str], Callable[[Path], None] | None, str, str]] = [
    ("missing file", "a.py = done-job-self", {}, None, "", "callback file 'a.py' does not exist"),
    (
        "no equals",
        "a.py done-job-self",
        {"a.py": ""},
        None,
        "",
        "expected 'name = value', got 'a.py done-job-self'",
    ),
    ("unknown extension", "a.sh = done-job-self", {"a.sh": ""}, None, "", "unknown callback ext"),
    ("bad trigger", "a.py = done-jb-self", {"a.py": ""}, None, "", "unknown event type 'jb'"),
    (
        "not a file",
        "a.py = done-job-self",
        {"a.py": ""},
        _directory_named("a.py"),
        "",
        "callback file 'a.py' is not a regular file",
    ),
    (
        "dangling symlink",
        "a.py = done-job-self",
        {"a.py": ""},
        _symlink("a.py", "/nonexistent/x.py"),
        "",
        "callback file 'a.py' is a symlink to a missing file",
    ),
    (
        "python disabled",
        "a.py = done-job-self",
        {"a.py": ""},
        None,
        "supervisor_language_flags = qube,perl,mail",
        "callback language 'python' is disabled by supervisor_language_flags",
    ),
    (
        "perl disabled",
        "a.pl = done-job-self",
        {"a.pl": ""},
        None,
        "supervisor_language_flags = 5",
        "callback language 'perl' is disabled",
    ),
    (
        "qube disabled",
        "a.qcb = done-job-self",
        {"a.qcb": "kill-self\n"},
        None,
        "supervisor_language_flags = python",
        "callback language 'qube' is disabled",
    ),
    (
        "mail disabled",
        "a.qcb = done-job-self",
        {"a.qcb": "kill-self\nmail-status\n"},
        None,
        "supervisor_language_flags = qube",
        "callback language 'mail' is disabled by supervisor_language_flags (a.qcb:2: mail-status)",
    ),
    (
        "bad qcb code",
        "a.qcb = done-job-self",
        {"a.qcb": "kill-self\n\nfrobnicate-self\n"},
        None,
        "",
        "a.qcb:3: unknown .qcb code 'frobnicate-self'",
    ),
    (
        "python 2 syntax",
        "a.py = done-job-self",
        {"a.py": f"try:\n    pass\n{PY2}\n    pass\n"},
        None,
        "",
        "a.py:3: multiple exception types must be parenthesized (except Exception, e:)",
    ),
    (
        "world-writable file",
        "a.py = done-job-self",
        {"a.py": ""},
        _chmod("a.py", 0o002),
        "",
        "unsafe callback file 'a.py': world-writable",
    ),
    (
        "symlink to world-writable file",
        "a.py = done-job-self",
        {"a.py": ""},
        _world_writable_target,
        "",
        "unsafe callback file 'a.py' (-> ",
    ),
]


@pytest.mark.parametrize(
    ("conf", "files", "change", "extra", "reason"),
    [e[1:] for e in ERRORS],
    ids=[e[0] for e in ERRORS],
)
def test_error(
    tmp_path: Path,
    conf: str,
    files: dict[str, str],
    change: Callable[[Path], None] | None,
    extra: str,
    reason: str,
) -> None:
    directory = write_tree(tmp_path / "cb", conf + "\n", files)
    if change is not None:
        change(directory)
    (error,) = errors_of(make_settings(directory, extra=extra))
    assert error.startswith(f"{directory}/callbacks.conf:1: {reason}")


def test_world_writable_directory(tmp_path: Path) -> None:
    directory = write_tree(tmp_path / "cb", "a.py = done-job-self\n", {"a.py": ""})
    directory.chmod(0o777)
    (error,) = errors_of(make_settings(directory))
    assert error == f"{directory}/callbacks.conf: unsafe directory {directory}: world-writable"


def test_world_writable_callbacks_conf(tmp_path: Path) -> None:
    directory = write_tree(tmp_path / "cb", "a.py = done-job-self\n", {"a.py": ""})
    _chmod("callbacks.conf", 0o002)(directory)
    (error,) = errors_of(make_settings(directory))
    assert "unsafe callbacks.conf" in error and error.endswith("world-writable")


def test_file_owned_by_another_user(tmp_path: Path) -> None:
    directory = write_tree(tmp_path / "cb", "a.py = done-job-self\n", {"a.py": ""})
    if os.geteuid() == 0:
        os.chown(directory / "a.py", OTHER_UID, -1)
        daemon_uid = None
    else:  # cannot give files away: make the daemon someone else instead
        daemon_uid = os.getuid() + 1
    errors = errors_of(make_settings(directory), daemon_uid=daemon_uid)
    assert "unsafe callback file 'a.py': owned by uid " in errors[-1]
    assert "not root or the daemon's uid" in errors[-1]


def test_file_owned_by_the_daemon_user_is_fine(tmp_path: Path) -> None:
    directory = write_tree(tmp_path / "cb", "a.py = done-job-self\n", {"a.py": ""})
    if os.geteuid() == 0:
        os.chown(directory / "a.py", OTHER_UID, -1)
    loaded = load_callbacks(make_settings(directory), daemon_uid=(directory / "a.py").stat().st_uid)
    assert len(loaded.callbacks) == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path: Path) -> None:
    directory = write_tree(tmp_path / "cb", "a.pl = done-job-self\n", {"a.pl": ""})
    (directory / "a.pl").chmod(0)
    (error,) = errors_of(make_settings(directory))
    assert error.endswith("cannot read callback file 'a.pl': Permission denied")


def test_every_error_reported_in_path_and_line_order(tmp_path: Path) -> None:
    first = write_tree(
        tmp_path / "one",
        "ok.py = done-job-self\nbad.py = done-job-self\nx.sh = done-job-self\n"
        "gone.pl = done-job-self\n",
        {"ok.py": "", "bad.py": f"try:\n    pass\n{PY2}\n    pass\n"},
    )
    second = write_tree(
        tmp_path / "two", "m.qcb = nope\nn.qcb = done-job-self\n", {"n.qcb": "kill-self\nzap\n"}
    )
    errors = errors_of(make_settings(first, second))
    assert [e.split(": ")[0] for e in errors] == [
        f"{first}/callbacks.conf:2",
        f"{first}/callbacks.conf:3",
        f"{first}/callbacks.conf:4",
        f"{second}/callbacks.conf:1",
        f"{second}/callbacks.conf:2",
    ]
    assert "bad.py:3: " in errors[0]
    assert "n.qcb:2: unknown .qcb code 'zap'" in errors[4]


def _wrapper(tmp_path: Path, interpreter: str) -> str:
    """An interpreter whose real path is not ours, so load runs it as a child."""
    script = tmp_path / "python-wrapper"
    script.write_text(f'#!/bin/sh\nexec "{interpreter}" "$@"\n')
    script.chmod(0o755)
    return str(script)


def _py2_tree(tmp_path: Path) -> Path:
    files = {
        "good.py": "x = 1\n",
        "logFailuresToDB.py": f"import sys\ntry:\n    pass\n{PY2}\n    pass\n",
    }
    conf = "good.py = done-job-self\nlogFailuresToDB.py = failed-job-self\n"
    return write_tree(tmp_path / "cb", conf, files)


def test_python_checked_by_another_interpreter(tmp_path: Path) -> None:
    directory = _py2_tree(tmp_path)
    python = _wrapper(tmp_path, sys.executable)
    (error,) = errors_of(make_settings(directory, extra=f"supervisor_callback_python = {python}"))
    assert error.startswith(f"{directory}/callbacks.conf:2: logFailuresToDB.py:4: ")
    assert error.endswith("(except Exception, e:)")


PYTHON2 = "/root/.pyenv/versions/2.7.18/bin/python2.7"


@pytest.mark.skipif(not os.access(PYTHON2, os.X_OK), reason="no Python 2 here")
def test_python_2_interpreter_accepts_python_2_code(tmp_path: Path) -> None:
    directory = _py2_tree(tmp_path)
    (directory / "py3.py").write_text("print('x', end='')\n")
    with (directory / "callbacks.conf").open("a") as conf:
        conf.write("py3.py = done-job-self\n")
    settings = make_settings(directory, extra=f"supervisor_callback_python = {PYTHON2}")
    (error,) = errors_of(settings)
    assert error.startswith(f"{directory}/callbacks.conf:3: py3.py:1: invalid syntax")


def test_missing_interpreter_reported_per_python_callback(tmp_path: Path) -> None:
    directory = _py2_tree(tmp_path)
    settings = make_settings(directory, extra="supervisor_callback_python = /nonexistent/python")
    errors = errors_of(settings)
    assert [e.split(": ")[0] for e in errors] == [
        f"{directory}/callbacks.conf:1",
        f"{directory}/callbacks.conf:2",
    ]
    assert "cannot check with supervisor_callback_python '/nonexistent/python'" in errors[0]


def test_read_qbconf(tmp_path: Path) -> None:
    path = tmp_path / "qb.conf"
    path.write_text("supervisor_callback_timeout = 7\nworker_cpus = 0\n")
    settings = read_qbconf(str(path), {}, "python3")
    assert (settings.path, settings.callback_timeout) == (str(path), 7)


def test_read_qbconf_missing(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.conf")
    with pytest.raises(ConfigErrors) as caught:
        read_qbconf(path, {}, "python3")
    assert str(caught.value) == f"{path}: cannot read qb.conf: No such file or directory"
