"""At load: what callbacks run as supervisor_callback_user must reach, and what it cannot."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final

from supervisord.core.model import Callback, Settings
from supervisord.daemon.access import EXECUTE, READ, Blocked, Who, find_blocker
from supervisord.run import process
from supervisord.run.env import RUNTIME_DIR, base_env, names_qb

# What each language's interpreter opens of the runtime when it is started as the user
# (env.command, env.run_env): the bootstrap and `qb` for Python (whose import lists the
# directory), `-Mqb` and the module it requires for Perl.
_PYTHON_RUNTIME: Final = (("_qbrun.py", READ), (".", READ | EXECUTE), ("qb.py", READ))
_PERL_RUNTIME: Final = (("qb.pm", READ), ("qb_impl.pm", READ))
_INTERPRETER_KEY: Final = {
    "python": "supervisor_callback_python",
    "perl": "supervisor_callback_perl",
}
_VERB: Final = {READ: "read", EXECUTE: "execute", READ | EXECUTE: "read"}
Refused = tuple[Callback, str]  # a callback (the first needing the path) and why


@dataclass(frozen=True, slots=True)
class Need:
    """One path a callback's run needs the user to reach, and how."""

    verb: str  # enter, read, execute: for the message
    path: str
    want: int  # READ and/or EXECUTE
    label: str = ""  # what the path is, when the path alone does not say (the qb.conf key)


@dataclass(slots=True)
class _Shared:
    """A problem several callbacks share (their directory, interpreter, runtime)."""

    first: Callback
    reason: str
    count: int = 1


@dataclass(slots=True)
class _Checker:
    """One load's checks: each path looked at once, each shared problem told once."""

    who: Who
    runtime: str
    interpreters: dict[str, str | None]
    blockers: dict[tuple[str, int], Blocked | None] = field(default_factory=dict)
    shared: dict[tuple[str, ...], _Shared] = field(default_factory=dict)
    own: list[Refused] = field(default_factory=list)

    def blocker(self, need: Need) -> Blocked | None:
        key = (need.path, need.want)
        if key not in self.blockers:
            self.blockers[key] = find_blocker(need.path, self.who, need.want)
        return self.blockers[key]

    def message(self, need: Need, blocked: Blocked) -> str:
        what = f"{need.label} {need.path}" if need.label else need.path
        return f"user {self.who.name!r} cannot {need.verb} {what} ({blocked.why()})"

    def first_problem(self, needs: Iterable[Need]) -> tuple[Need, Blocked] | None:
        for need in needs:
            blocked = self.blocker(need)
            if blocked is not None:
                return need, blocked
        return None

    def share(self, key: tuple[str, ...], callback: Callback, needs: Iterable[Need]) -> None:
        known = self.shared.get(key)
        if known is not None:
            known.count += 1
            return
        problem = self.first_problem(needs)
        reason = self.message(*problem) if problem else ""
        self.shared[key] = _Shared(callback, reason)


def check(settings: Settings, callbacks: Iterable[Callback], euid: int) -> list[Refused]:
    """refusals() for the user the daemon, running as ``euid``, will switch callbacks
    to; none when they run as its own user (or an unknown one: each run says so)."""
    resolved = process.resolve_user(settings.callback_user, euid)
    if isinstance(resolved, str):
        return []
    entry, switch = resolved
    if switch is None:
        return []
    who = Who(entry.pw_name, switch.uid, frozenset((switch.gid, *switch.groups)))
    return refusals(settings, callbacks, who, base_env(settings, os.environ, entry)["PATH"])


def refusals(
    settings: Settings,
    callbacks: Iterable[Callback],
    who: Who,
    search_path: str,
    runtime: str = RUNTIME_DIR,
) -> list[Refused]:
    """Every path a run of these callbacks hands ``who`` that it cannot reach, as
    (callback, reason), each told at the first callback needing it: the callback's
    directory (its cwd), its file, the interpreter and `qb` runtime of its language."""
    names = {"python": settings.callback_python, "perl": settings.callback_perl}
    found = {lang: shutil.which(name, path=search_path) for lang, name in names.items()}
    check = _Checker(who, runtime, found)
    for callback in callbacks:
        _check_callback(check, settings, callback)
    told = [(shared.first, _counted(shared)) for shared in check.shared.values() if shared.reason]
    return [*told, *check.own]


def _check_callback(check: _Checker, settings: Settings, callback: Callback) -> None:
    if callback.language not in _INTERPRETER_KEY:
        return  # .qcb code: the daemon interprets it itself, as its own user
    cwd = Need("enter", callback.dir, EXECUTE)
    check.share(("cwd", callback.dir), callback, [cwd])
    execs = _is_exec(settings, callback)
    if execs:  # the interpreter opens the file as the user; a fork server child does not
        own = check.first_problem([Need("read", callback.path, READ)])
        dir_blocked = check.blocker(cwd)
        if own and (dir_blocked is None or dir_blocked.path != own[1].path):
            check.own.append((callback, check.message(*own)))
        interpreter = check.interpreters.get(callback.language)
        if interpreter is not None:
            label = _INTERPRETER_KEY[callback.language]
            need = Need("execute", interpreter, EXECUTE, label)
            check.share(("interpreter", callback.language), callback, [need])
    runtime = list(_runtime_needs(check.runtime, callback, execs))
    if runtime:
        check.share(("runtime", callback.language), callback, runtime)


def _is_exec(settings: Settings, callback: Callback) -> bool:
    """Whether a run execs the interpreter as the user: Perl always, Python when fresh
    (the fork server, started as the daemon's user, runs Python callbacks' code itself)."""
    if callback.language == "perl":
        return True
    return callback.language == "python" and settings.python_mode != "forkserver"


def _runtime_needs(runtime: str, callback: Callback, execs: bool) -> Iterator[Need]:
    if not execs:
        return
    if callback.language == "python":
        files: tuple[tuple[str, int], ...] = _PYTHON_RUNTIME
    elif _perl_names_qb(callback.path):
        files = _PERL_RUNTIME
    else:
        return
    for name, want in files:
        path = os.path.normpath(os.path.join(runtime, name))
        yield Need(_VERB[want], path, want)


def _perl_names_qb(path: str) -> bool:
    """Whether the run gets ``-Mqb`` (env.names_qb); unreadable: assume so."""
    try:
        with open(path, "rb") as handle:
            return names_qb(handle.read())
    except OSError:
        return True


def _counted(shared: _Shared) -> str:
    if shared.count == 1:
        return shared.reason
    more = shared.count - 1
    return f"{shared.reason}; needed by {shared.count} callbacks: this one and {more} more"
