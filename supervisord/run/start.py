"""Starting a run's process: stdin document, output pipe, qb channel; spawned or forked."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import pwd
import shutil
import signal
import socket
import sys
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Final

from supervisord.core.model import Settings
from supervisord.core.runtypes import RunRequest
from supervisord.run import cspawn, fds, process
from supervisord.run.channel import to_json
from supervisord.run.env import (
    RUNTIME_DIR,
    RunAs,
    base_env,
    command,
    names_qb,
    rlimits,
    run_env,
    stdin_doc,
)
from supervisord.run.forkserver import SpawnRefused
from supervisord.run.servers import ForkServers
from supervisord.run.spawner import Spawner

log = logging.getLogger(__name__)

# How a child is started:
SPAWN: Final = "spawn"  # posix_spawn of the interpreter: the path when nothing needs more
CODE: Final = "code"  # a Python callback forked from the warm fork server (no exec)
EXEC: Final = "exec"  # forked by the fork server, which switches user / sets limits, then execs


def choose(language: str, python_mode: str, confined: bool, last_try: bool) -> str:
    """SPAWN, CODE or EXEC. ``confined``: a user switch or a limit applies (posix_spawn
    can do neither). A run's last try, after fork servers died under it, spawns when it
    can: a server that keeps dying costs speed, never a run."""
    if language == "python" and python_mode == "forkserver" and not (last_try and not confined):
        return CODE
    return EXEC if confined else SPAWN


@dataclass(frozen=True, slots=True)
class Started:
    """A run's process and the daemon's ends of its pipes."""

    pid: int
    exited: asyncio.Future[process.Status] | None  # the fork server's report; None: ours
    output: int  # read end of the stdout/stderr pipe
    channel: socket.socket | None  # the daemon's end of fd 3; None: the run has no qb
    hello: bytes  # what of the hello line (fd 3's first) is still to be sent


@dataclass(frozen=True, slots=True)
class Launch:
    """Everything a start needs besides the run itself."""

    how: str
    forks: ForkServers
    spawner: Spawner | None  # None: libc lacks what cspawn needs
    server_interpreter: str  # the fork server's (callback_python, else the daemon's)
    server_env: Mapping[str, str]
    grace: float
    runas: RunAs | None
    limits: tuple[tuple[int, int], ...]


class Starter:
    """How runs start under one Settings: the user they run as, their base environment,
    limits, interpreters. Runner.update() builds a new one; runs in flight keep theirs."""

    def __init__(
        self,
        settings: Settings,
        environ: Mapping[str, str],
        forks: ForkServers,
        spawner: Spawner | None,
    ):
        self.settings = settings
        who = process.resolve_user(settings.callback_user, os.geteuid())
        self.problem = who if isinstance(who, str) else None  # why no run can start
        user, self._runas = (pwd.getpwuid(os.geteuid()), None) if isinstance(who, str) else who
        self._base = base_env(settings, environ, user)
        self._limits = rlimits(settings)
        self._forks = forks
        self._spawner = spawner
        self._interpreters: dict[str, str] = {}
        self._perl_qb: dict[str, tuple[tuple[int, int, int], bool]] = {}
        self._launches: dict[tuple[str, str], Launch] = {}

    def argv(self, req: RunRequest) -> list[str] | str:
        """The command line, or why there is none."""
        cb = req.callback
        name = {"python": self.settings.callback_python, "perl": self.settings.callback_perl}
        if cb.language not in name:
            return f"no interpreter for language {cb.language}"
        interpreter = self._interpreter(name[cb.language])
        if interpreter is None:
            return f"interpreter {name[cb.language]!r} not found"
        if cb.language != "perl":
            return command(cb.language, interpreter, cb.path)
        try:
            qb = self._perl_needs_qb(cb.path)
        except OSError as exc:
            return f"cannot read {cb.path}: {exc.strerror}"
        return command(cb.language, interpreter, cb.path, qb)

    def _perl_needs_qb(self, path: str) -> bool:
        """names_qb() of the script as it is now (read again only when it changed)."""
        st = os.stat(path)
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        known = self._perl_qb.get(path)
        if known is not None and known[0] == key:
            return known[1]
        with open(path, "rb") as f:
            needed = names_qb(f.read())
        self._perl_qb[path] = (key, needed)
        return needed

    def start(
        self, req: RunRequest, argv: list[str], last_try: bool
    ) -> Coroutine[Any, Any, Started]:
        """See start(); a run's last try avoids the fork server if it can. (Not a coroutine
        itself: the run awaits start()'s, one frame fewer to resume.)"""
        settings = self.settings
        confined = self._runas is not None or bool(self._limits)
        how = choose(req.callback.language, settings.python_mode, confined, last_try)
        interpreter = self._interpreter(settings.callback_python) or sys.executable
        launch = self._launches.get((how, interpreter))
        if launch is None:  # the same for every such run of this Starter: made once
            launch = self._launches[how, interpreter] = Launch(
                how,
                self._forks,
                self._spawner,
                interpreter,
                {**self._base, "PYTHONPATH": RUNTIME_DIR},
                settings.kill_grace,
                self._runas,
                self._limits,
            )
        qb = req.callback.language != "perl" or "-Mqb" in argv
        return start(req, argv, run_env(self._base, req, qb), launch, qb)

    async def warm(self) -> None:
        """Start the fork server now rather than on the first Python run."""
        interpreter = self._interpreter(self.settings.callback_python) or sys.executable
        env = {**self._base, "PYTHONPATH": RUNTIME_DIR}
        await self._forks.get(interpreter, env, self.settings.kill_grace)

    def _interpreter(self, name: str) -> str | None:
        found = self._interpreters.get(name) or shutil.which(name, path=self._base["PATH"])
        if found is not None:
            self._interpreters[name] = found
        return found


async def start(
    req: RunRequest, argv: list[str], env: dict[str, str], launch: Launch, qb: bool = True
) -> Started:
    """Start the process with its stdin document, output pipe and qb channel (``qb``: the
    run may use the qb module; a spawned run that cannot gets no fd 3 at all). Raises
    OSError/ValueError (spawn), SpawnRefused or ForkServerLost; leaves nothing open then."""
    path = req.callback.path
    if not os.access(path, os.R_OK):
        raise SpawnRefused(f"cannot read {path}")
    doc = to_json(stdin_doc(req))
    # The fork server takes three descriptors for every run; a spawn takes what it needs.
    channel = qb or launch.how != SPAWN
    hello = b'{"op":"hello","doc":' + doc[:-1] + b"}\n" if channel else b""
    stdin, read_end, ours, child_ends = fds.pipes(doc, channel)
    child_fds = (stdin, child_ends[1], child_ends[1], *child_ends[2:])
    if launch.how == SPAWN and launch.spawner is not None:
        return await _launch(
            launch.spawner,
            argv,
            env,
            req.callback.dir,
            hello,
            child_fds,
            child_ends,
            read_end,
            ours,
        )
    try:
        try:
            if launch.how == SPAWN:  # no glibc extensions: os.posix_spawn, on the loop
                sent = fds.send_nowait(ours, hello)
                pid = process.spawn(argv, env, cwd=req.callback.dir, fds=child_fds)
                return Started(pid, None, read_end, ours, hello[sent:])
            forks = launch.forks
            server = await forks.get(launch.server_interpreter, launch.server_env, launch.grace)
            pid, exited = await server.spawn(_fork_request(req, argv, env, launch), child_ends)
            return Started(pid, exited, read_end, ours, hello)
        finally:
            fds.close(child_ends)
    except BaseException:
        fds.abandon(read_end, ours)
        raise


async def _launch(
    spawner: Spawner,
    argv: list[str],
    env: dict[str, str],
    cwd: str,
    hello: bytes,
    child_fds: tuple[int, ...],
    child_ends: tuple[int, ...],
    read_end: int,
    ours: socket.socket | None,
) -> Started:
    """The SPAWN start through a spawn thread. The child's ends (``child_fds``) are
    closed by the spawn thread as soon as the launch is over; ``read_end`` and ``ours`` are
    closed on failure, and on cancellation too, then with the child killed and reaped,
    once the launch is over."""
    try:
        sent = fds.send_nowait(ours, hello)  # a socket buffer takes it whole, but for huge docs
        prepared = cspawn.prepare(argv, env, cwd=cwd, fds=child_fds)
    except BaseException:
        fds.close(child_ends)
        fds.abandon(read_end, ours)
        raise

    def discard(pid: int | None) -> None:
        if pid is not None:
            process.kill_group(pid, signal.SIGKILL)
            os.waitpid(pid, 0)  # SIGKILLed: returns as soon as it is gone
        fds.abandon(read_end, ours)

    job = functools.partial(fds.spawn_and_close, prepared, child_ends)
    try:
        pid = await spawner.call(job, None, discard)
    except asyncio.CancelledError:
        raise  # discard() closes read_end and ours
    except BaseException:
        fds.abandon(read_end, ours)
        raise
    return Started(pid, None, read_end, ours, hello[sent:])


def _fork_request(
    req: RunRequest, argv: list[str], env: dict[str, str], launch: Launch
) -> dict[str, Any]:
    runas = launch.runas
    request: dict[str, Any] = {
        "cwd": req.callback.dir,
        "env": env,
        "creds": None if runas is None else [runas.uid, runas.gid, list(runas.groups)],
        "limits": [list(limit) for limit in launch.limits],
    }
    if launch.how == CODE:
        request["path"] = req.callback.path
    else:
        request["argv"] = argv
    return request
