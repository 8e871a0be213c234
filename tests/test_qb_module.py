"""The qb modules outside the daemon: importable anywhere, strict about ids, silent on fd 3."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from supervisord.core.runtypes import ACTION_VERBS
from supervisord.run.env import RUNTIME_DIR
from supervisord.runtime import qb

ACTION_NAMES = sorted(
    f"{prefix}{verb}" for verb in ACTION_VERBS for prefix in ("", "work", "subjob")
)


def run_child(argv: list[str], env_extra: dict[str, str], fd3: Path | None) -> str:
    """Run argv with the runtime dir on the path and, if given, ``fd3`` open as fd 3."""
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": RUNTIME_DIR, "PERL5LIB": RUNTIME_DIR}
    env.update(env_extra)
    if fd3 is not None:  # the shell opens it as fd 3 in the child, not in this process
        argv = ["sh", "-c", 'exec 3<>"$0" && exec "$@"', str(fd3), *argv]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=True, timeout=30)
    return done.stdout + done.stderr


PY_PROBE = (
    "import qb; print(qb.jobid(), qb.subid(), qb.workid(), qb.event(), qb.job(),"
    " qb.jobinfo('-id', 1), qb.jobstatus()); qb.unblock(1); qb.workkill('1:f')"
)
PL_PROBE = (
    "print join(' ', map { defined $_ ? $_ : 'undef' } $qb::jobid, $qb::workid,"
    " scalar(keys %{qb::event()}), scalar(@{[qb::jobinfo('-id', 1)]})), qq{\\n};"
    " qb::unblock(1); qb::workkill('1:f');"
)


@pytest.mark.parametrize("fd3", [False, True], ids=["no-fd3", "fd3-is-a-file"])
@pytest.mark.parametrize("from_daemon", [False, True], ids=["plain", "QB_CALLBACK-set"])
@pytest.mark.parametrize("language", ["python", "perl"])
def test_without_a_channel_nothing_fails_and_fd3_is_untouched(
    tmp_path: Path, fd3: bool, from_daemon: bool, language: str
) -> None:
    stray = tmp_path / "fd3" if fd3 else None
    env = {"QBJOBID": "42", "QB_WORK": "f1"} | ({"QB_CALLBACK": "x"} if from_daemon else {})
    if language == "python":
        out = run_child([sys.executable, "-c", PY_PROBE], env, stray)
        assert out.startswith("42 None f1 {} {} [] None\n")
    else:
        out = run_child(["perl", "-Mqb", "-e", PL_PROBE], env, stray)
        assert out.startswith("42 f1 0 0\n")
    assert "no daemon channel; unblock 1 not sent" in out
    assert "no daemon channel; kill 1:f not sent" in out
    assert stray is None or stray.read_bytes() == b""


@pytest.mark.parametrize(
    ("ids", "scope", "targets"),
    [
        (1234, "job", ["1234"]),
        ("1234.2", "job", ["1234.2"]),
        ([1, "2", " 3 "], "job", ["1", "2", "3"]),
        ("12:frame-5:x", "work", ["12:frame-5:x"]),
        ("12.3", "subjob", ["12.3"]),
    ],
    ids=["int", "instance-as-job", "list", "work-with-dashes", "subjob"],
)
def test_targets(ids: int | str | list[int | str], scope: str, targets: list[str]) -> None:
    assert qb._targets(ids, scope) == targets


@pytest.mark.parametrize(
    ("ids", "scope"),
    [("12:f", "job"), (True, "job"), ("abc", "job"), ("12", "work"), ("12", "subjob"),
     ([1, "x"], "job"), (-1, "job")],
    ids=["work-as-job", "bool", "word", "job-as-work", "job-as-subjob", "bad-in-list", "negative"],
)  # fmt: skip
def test_bad_targets_raise(ids: object, scope: str) -> None:
    with pytest.raises(ValueError, match=f"not a {scope} id"):
        qb._targets(ids, scope)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ACTION_NAMES)
def test_python_has_every_action(name: str) -> None:
    assert callable(getattr(qb, name)) and getattr(qb, name).__name__ == name


def test_perl_has_every_action() -> None:
    probe = (
        "for my $f (@ARGV) { eval { &{\"qb::$f\"}('bad id') };"
        " print qq{$f\\n} unless $@ =~ /^qb: not a (job|work|subjob) id: bad id/ }"
    )
    out = run_child(["perl", "-Mqb", "-e", probe, *ACTION_NAMES], {}, None)
    assert out == ""


def test_perl_unknown_function_still_dies() -> None:
    probe = "eval { qb::nonsense(1) }; print $@;"
    out = run_child(["perl", "-Mqb", "-e", probe], {}, None)
    assert out == "Undefined subroutine &qb::nonsense called\n"
