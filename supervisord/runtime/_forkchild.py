"""A fork server child: its set-up between fork and callback (SPEC §4), and what it runs.

Imported by _forkserver.py from the same directory (sys.path[0] when the server runs as a
script); like it, it imports nothing of the daemon.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib
import os
import resource
import signal
import socket
import types
from dataclasses import dataclass
from typing import Any, Final

import _qbrun  # type: ignore[import-not-found]  # the runtime dir is sys.path[0] here

FD_CEILING: Final = 1 << 20  # above any RLIMIT_NOFILE; close_range makes it free
_PR_SET_PDEATHSIG: Final = 1
# Looked up once here, not in every child; without use_errno, whose bookkeeping costs a
# child ~25 page faults: PR_SET_PDEATHSIG fails only for a bad signal number anyway.
prctl = ctypes.CDLL(None).prctl
# signal.signal() turns the old handler into an enum, which for a Python handler means a
# failed enum lookup and a formatted ValueError: ~75 page faults in every child.
_signal: Any = importlib.import_module("_signal")


@dataclass(frozen=True, slots=True)
class Script:
    """A callback file compiled once, with what its runs need to become ``__main__``.

    ``main`` is used only by children, each on its own copy: made here once, it costs a
    child a few copied pages instead of a module's allocations."""

    path: str
    dir: str
    code: types.CodeType
    main: types.ModuleType
    shadowed: tuple[str, ...]  # modules the server has loaded that ``dir`` holds itself


@dataclass(frozen=True, slots=True)
class Job:
    """What a forked child runs once it has left the server's loop."""

    path: str
    script: Script | None

    def run(self) -> None:
        script = self.script
        if script is None:  # it did not compile: the child fails as ``python FILE`` does
            _qbrun.run_script(self.path)
        else:
            _qbrun.run_script(script.path, script.code, script.main, script.dir, script.shadowed)


def become(
    control: socket.socket,
    server_pid: int,
    rid: int,
    req: dict[str, Any],
    fds: list[int],
    job: Job | None,
    err_w: int,
) -> Job:
    """In the child: the contract of a run (SPEC §4), then the Job or an exec.

    Every page written here is a copy, so the child does the least it can: the
    server's objects (its epoll, pipes, control socket) are not closed one by one but
    with their fds by close_range, and never finalized (the server is referenced from
    main() until os._exit)."""
    step = "set up"
    try:
        gc.freeze()  # the server's objects are not the callback's: its collection skips them
        signal.set_wakeup_fd(-1)
        _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
        os.setsid()
        if job is None:  # the error pipe is all it keeps of the server's
            take_fds(fds)
            os.closerange(4, err_w)
            os.closerange(err_w + 1, FD_CEILING)
        creds = req.get("creds")
        if creds:
            step = f"switch to uid {creds[0]}"
            os.setgroups(creds[2])
            os.setresgid(creds[1], creds[1], creds[1])
        limits = req.get("limits")
        if limits:
            step = "set limits"
            for which, value in limits:
                resource.setrlimit(which, (value, value))  # while still privileged
        if creds:
            step = f"switch to uid {creds[0]}"
            os.setresuid(creds[0], creds[0], creds[0])
        step = f"cwd {req['cwd']}"
        os.chdir(req["cwd"])  # as the callback's user: it must be allowed in there
        step = "parent death signal"  # after the switch, which would reset it
        if prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError("prctl failed")
        if os.getppid() != server_pid:
            raise OSError("the fork server is gone")
        if job is None:
            step = req["argv"][0]
            # Python ignores SIGPIPE and SIGXFSZ; an exec'd program (Perl, say) gets
            # them at their defaults, as from the daemon's own spawns.
            _signal.signal(_signal.SIGPIPE, _signal.SIG_DFL)
            _signal.signal(_signal.SIGXFSZ, _signal.SIG_DFL)
            os.execve(req["argv"][0], req["argv"], req["env"])
        control.sendall(b"S %d %d" % (rid, os.getpid()))  # fd 3 is still the control socket
    except BaseException as exc:  # a child must never return to the loop
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        reason = f"{step}: {detail}".encode()
        with contextlib.suppress(OSError):  # the daemon may be gone as well
            if job is None:
                os.write(err_w, reason)
            else:
                control.sendall(b"E %d %s" % (rid, reason))
        os._exit(127)
    try:
        take_fds(fds)  # fd 3 becomes the qb channel
        os.closerange(4, FD_CEILING)  # other children's fds, received fds, epoll...
    except BaseException:  # not seen to happen; after its "S" it has no "E" to give
        os._exit(127)
    return job


def take_fds(fds: list[int]) -> None:
    """In a child: stdin, output (as stdout and stderr) and the qb channel as fds 0-3."""
    for target, fd in enumerate((fds[0], fds[1], fds[1], fds[2])):
        os.dup2(fd, target)
