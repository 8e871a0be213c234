"""The Python fork server: a warm interpreter that forks one child per callback run.

Started by the daemon as ``python _forkserver.py`` with fd 3 one end of a SOCK_SEQPACKET
socket pair. Each request is one JSON message carrying three descriptors (stdin, output,
qb channel); each answer one short text message:

    R <pid>              ready (imports paid)
    S <id> <pid>         request <id> runs as process <pid>
    E <id> <reason>      request <id> could not start (bad cwd, user switch, exec, ...)
    X <pid> <status>     process <pid> ended with wait status <status>

A child's set-up (session, fds, user, limits, cwd) is awaited on the loop through a pipe,
so "S"/"E" come once it is done, and "S" always precedes that child's "X". The server is a
subreaper: whatever a callback leaves behind is reparented here and reaped at once.
"""

from __future__ import annotations

import array
import ctypes
import gc
import importlib
import json
import os
import resource
import selectors
import signal
import smtplib  # noqa: F401 - pre-warmed: the modules callbacks commonly use
import socket
import sqlite3  # noqa: F401
import subprocess  # noqa: F401
import sys
import types
from dataclasses import dataclass
from typing import Any, Final

import _qbrun  # type: ignore[import-not-found]  # the runtime dir is sys.path[0] here

importlib.import_module("qb")  # in sys.modules before any fork: the children find it there

_CONTROL_FD: Final = 3
# A run request is its environment and a few paths, some KiB; the daemon sends no more.
MAX_REQUEST: Final = 1 << 16
_FDS_PER_RUN: Final = 3
_FD_CEILING: Final = 1 << 20  # above any RLIMIT_NOFILE; close_range makes it free
_PR_SET_PDEATHSIG: Final = 1
_PR_SET_CHILD_SUBREAPER: Final = 36
_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl  # looked up once here, not in every child


@dataclass(frozen=True, slots=True)
class Job:
    """What a forked child runs once it has left the server's loop."""

    path: str
    code: types.CodeType | None

    def run(self) -> None:
        _qbrun.run_script(self.path, self.code)


@dataclass(slots=True)
class _Setup:
    """A child between fork and the end of its set-up (its error pipe's EOF)."""

    rid: int
    pid: int
    reason: bytes = b""
    status: int | None = None  # when it was reaped before its set-up was heard of


class Server:
    """The loop: requests in, one fork each, exits reaped and reported.

    A child's set-up is awaited on the loop (its error pipe), not by blocking: the next
    request is forked meanwhile, and "S" always precedes the child's "X".
    """

    def __init__(self, control: socket.socket) -> None:
        self._control = control
        self._known: set[int] = set()
        self._setups: dict[int, _Setup] = {}  # by pid
        self._cache: dict[str, tuple[tuple[int, int, int], types.CodeType]] = {}
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        self._selector = selectors.EpollSelector()
        self._selector.register(control, selectors.EVENT_READ, "request")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "reap")

    def serve(self) -> Job | None:
        """Returns None when the daemon hangs up; returns a Job only in a forked child."""
        self._send(f"R {os.getpid()}")
        while True:
            for key, _ in self._selector.select():
                if key.data == "reap":
                    self._reap()
                elif isinstance(key.data, _Setup):
                    self._on_setup(key.fd, key.data)
                else:
                    try:
                        data, ancdata, _flags, _ = self._control.recvmsg(
                            MAX_REQUEST, socket.CMSG_SPACE(_FDS_PER_RUN * 4)
                        )
                    except ConnectionError:
                        return None
                    if not data:
                        return None
                    job = self._request(data, _received_fds(ancdata))
                    if job is not None:
                        return job

    def _request(self, data: bytes, fds: list[int]) -> Job | None:
        rid = 0
        try:
            req = json.loads(data)
            rid = int(req["id"])
            if len(fds) != _FDS_PER_RUN:
                raise ValueError(f"expected {_FDS_PER_RUN} descriptors, got {len(fds)}")
            code = self._compiled(req["path"]) if req.get("path") else None
        except (ValueError, KeyError, TypeError) as exc:
            _close(fds)
            self._send(f"E {rid} bad request: {exc}")
            return None
        return self._fork(rid, req, fds, code)

    def _fork(
        self, rid: int, req: dict[str, Any], fds: list[int], code: types.CodeType | None
    ) -> Job | None:
        """Fork; the child sets itself up and says, through a pipe, if that failed."""
        server = os.getpid()
        try:
            _set_environ(req["env"])  # here, not in the child: see _set_environ
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
            pid = os.fork()
        except OSError as exc:
            _close(fds)
            self._send(f"E {rid} fork: {exc.strerror or exc}")
            return None
        if pid == 0:
            return self._become(req, fds, code, err_w, server)
        _close(fds)
        os.close(err_w)
        setup = self._setups[pid] = _Setup(rid, pid)
        self._selector.register(err_r, selectors.EVENT_READ, setup)
        return None

    def _on_setup(self, err_r: int, setup: _Setup) -> None:
        chunk = os.read(err_r, 4096)
        if chunk:
            setup.reason += chunk
            return
        self._selector.unregister(err_r)
        os.close(err_r)
        del self._setups[setup.pid]
        if setup.reason:
            if setup.status is None:
                os.waitpid(setup.pid, 0)  # it exits right after writing why
            self._send(f"E {setup.rid} {setup.reason.decode(errors='replace')}")
            return
        self._send(f"S {setup.rid} {setup.pid}")
        if setup.status is None:
            self._known.add(setup.pid)
        else:
            self._send(f"X {setup.pid} {setup.status}")

    def _become(
        self,
        req: dict[str, Any],
        fds: list[int],
        code: types.CodeType | None,
        err_w: int,
        server: int,
    ) -> Job | None:
        """In the child: the contract of a run (SPEC §4), then the Job or an exec."""
        step = "set up"
        try:
            self._leave(fds, err_w)
            creds = req.get("creds")
            step = f"switch to uid {creds[0]}" if creds else step
            if creds:
                os.setgroups(creds[2])
                os.setresgid(creds[1], creds[1], creds[1])
            step = "set limits"
            for which, value in req.get("limits") or ():
                resource.setrlimit(which, (value, value))  # while still privileged
            step = f"switch to uid {creds[0]}" if creds else step
            if creds:
                os.setresuid(creds[0], creds[0], creds[0])
            step = f"cwd {req['cwd']}"
            os.chdir(req["cwd"])  # as the callback's user: it must be allowed in there
            step = "parent death signal"  # after the switch, which would reset it
            if _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
            if os.getppid() != server:
                raise OSError("the fork server is gone")
            if req.get("argv"):
                step = req["argv"][0]
                os.execve(req["argv"][0], req["argv"], req["env"])
            os.close(err_w)
            return Job(req["path"], code)
        except BaseException as exc:  # a child must never return to the loop
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            os.write(err_w, f"{step}: {detail}".encode())
            os._exit(127)

    def _leave(self, fds: list[int], err_w: int) -> None:
        """In the child: drop the server's handles and signals; stdin, output, output, qb
        channel become fds 0-3 and every other descriptor but the error pipe is closed."""
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        self._selector.close()
        self._control.detach()  # fd 3: replaced by the qb channel just below
        os.close(self._wake_r)
        os.close(self._wake_w)
        os.setsid()
        for target, fd in enumerate((fds[0], fds[1], fds[1], fds[2])):
            os.dup2(fd, target)
        os.closerange(4, err_w)  # other children's set-up pipes, received fds, ...
        os.closerange(err_w + 1, _FD_CEILING)

    def _compiled(self, path: str) -> types.CodeType | None:
        """Cached code by (mtime, size, inode): an edit is seen by the next run. None when
        it does not compile: the child compiles it again and fails as ``python FILE`` does."""
        hit = self._cache.get(path)
        try:
            st = os.stat(path)
            key = (st.st_mtime_ns, st.st_size, st.st_ino)
            if hit is None or hit[0] != key:
                hit = (key, _qbrun.compile_file(path))
                self._cache[path] = hit
        except (SyntaxError, ValueError, OSError):
            self._cache.pop(path, None)
            return None
        return hit[1]

    def _reap(self) -> None:
        while True:
            try:
                os.read(self._wake_r, 4096)
            except BlockingIOError:
                break
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self._known:
                self._known.discard(pid)
                self._send(f"X {pid} {status}")
            elif pid in self._setups:  # reported once its set-up is heard of
                self._setups[pid].status = status
            # else an orphan a callback left behind: reaped, nothing more

    def _send(self, text: str) -> None:
        self._control.sendall(text.encode())


def _received_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds = array.array("i")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return list(fds)


def _set_environ(env: dict[str, str]) -> None:
    """Make os.environ (and the C environ) ``env``, in the server before it forks.

    In the child this cost ~0.2 ms a run in copy-on-write faults alone; here it is a few
    dozen µs, mostly nothing (the keys that change are few). The server's own environment
    no longer matters once it has started: it execs with an explicit one."""
    environ = os.environ
    for key in [key for key in environ if key not in env]:
        del environ[key]
    for key, value in env.items():
        if environ.get(key) != value:
            environ[key] = value


def _close(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def main() -> None:
    os.closerange(_CONTROL_FD + 1, _FD_CEILING)  # whatever the daemon let leak (LISTEN_FDS)
    if _prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print("fork server: cannot become a subreaper", file=sys.stderr)
    control = socket.socket(fileno=_CONTROL_FD)
    server = Server(control)
    gc.freeze()  # start-up objects stay out of the children's collections (fewer COW faults)
    job = server.serve()
    if job is not None:
        job.run()  # in a child: the callback's exceptions and exit are a script's


if __name__ == "__main__":
    main()
