"""What a callback process is given: command line, environment, stdin document (pure)."""

from __future__ import annotations

import os
import pwd
import resource
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from supervisord.core.model import Settings
from supervisord.core.runtypes import RunRequest, event_subid, event_work

RUNTIME_DIR: Final = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "runtime"
)
PYTHON_BOOTSTRAP: Final = os.path.join(RUNTIME_DIR, "_qbrun.py")
_DEFAULT_PATH: Final = "/usr/local/bin:/usr/bin:/bin"
_DEFAULT_LANG: Final = "C.UTF-8"


@dataclass(frozen=True, slots=True)
class RunAs:
    """The user a callback is switched to after fork (the daemon being root)."""

    uid: int
    gid: int
    groups: tuple[int, ...]


def rlimits(settings: Settings) -> tuple[tuple[int, int], ...]:
    """(RLIMIT_*, value) pairs a run's child sets on itself, soft = hard = value."""
    wanted = (
        (resource.RLIMIT_CPU, settings.limit_cpu),
        (resource.RLIMIT_NOFILE, settings.limit_nofile),
        (resource.RLIMIT_AS, settings.limit_as),
        (resource.RLIMIT_NPROC, settings.limit_nproc),
    )
    return tuple((which, value) for which, value in wanted if value is not None)


def base_env(
    settings: Settings, environ: Mapping[str, str], user: pwd.struct_passwd
) -> dict[str, str]:
    """The part of a callback's environment that is the same for every run."""
    return {
        "PATH": environ.get("PATH") or _DEFAULT_PATH,
        "LANG": environ.get("LANG") or _DEFAULT_LANG,
        "QBDIR": settings.qbdir,
        "HOME": user.pw_dir,
        "USER": user.pw_name,
        "LOGNAME": user.pw_name,
    }


def run_env(base: Mapping[str, str], req: RunRequest, qb: bool = True) -> dict[str, str]:
    """A run's whole environment (SPEC §4): nothing else of the daemon's. ``qb``: the
    path to the qb module is needed (a Perl callback that never names qb goes without)."""
    env = dict(base)
    language = req.callback.language
    if language == "python":
        env["PYTHONPATH"] = RUNTIME_DIR
    elif language == "perl" and qb:
        env["PERL5LIB"] = RUNTIME_DIR
    ev = req.event_doc
    if req.owner is not None:
        env["QBJOBID"] = str(req.owner)
    if (subid := event_subid(ev)) is not None:
        env["QBSUBID"] = str(subid)
    if (work := event_work(ev)) is not None:
        env["QB_WORK"] = work
    if ev.get("host") is not None:
        env["QB_HOST"] = str(ev["host"])
    env["QB_EVENT_NAME"] = str(ev.get("name", ""))
    env["QB_EVENT_TYPE"] = str(ev.get("type", ""))
    env["QB_EVENT_SEQ"] = str(req.seq)
    env["QB_EVENT_ID"] = req.event_id
    env["QB_TRIGGER"] = req.callback.trigger_text
    env["QB_CALLBACK"] = req.callback.file
    env["QB_REDELIVERED"] = "1" if req.redelivered else "0"
    env["QB_ATTEMPT"] = str(req.attempt)
    if req.replayed:
        env["QB_REPLAYED"] = "1"
    return env


def stdin_doc(req: RunRequest) -> dict[str, Any]:
    cb = req.callback
    return {
        "event": req.event_doc,
        "job": req.job_doc,
        "callback": {"file": cb.file, "trigger": cb.trigger_text},
        "redelivered": req.redelivered,
    }


def command(language: str, interpreter: str, path: str, qb: bool = True) -> list[str]:
    """``python _qbrun.py FILE`` (qb given, FILE as __main__) or ``perl -Mqb FILE``
    (``perl FILE`` when ``qb`` is False: the script never names the module)."""
    if language == "python":
        return [interpreter, PYTHON_BOOTSTRAP, path]
    return [interpreter, "-Mqb", path] if qb else [interpreter, path]


def names_qb(source: bytes) -> bool:
    """Whether a Perl script could use the qb module: it has the letters ``qb`` anywhere
    (``qb::unblock``, ``$qb::jobid``, ``use qb``, even a comment). Loading the module
    costs a Perl start about a tenth more; a script that never names it goes without."""
    return b"qb" in source
