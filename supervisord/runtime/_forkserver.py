"""The Python fork server: a warm interpreter that forks one child per callback run.

Started by the daemon as ``python _forkserver.py`` with fd 3 one end of a SOCK_SEQPACKET
socket pair. Each request is one JSON message carrying three descriptors (stdin, output,
qb channel); each answer one short text message:

    R <pid>              ready (imports paid)
    S <id> <pid>         request <id> runs as process <pid>
    E <id> <reason>      request <id> could not start (bad cwd, user switch, exec, ...)
    X <pid> <status> <id>  process <pid> (of request <id>) ended with wait status <status>

"S"/"E" come once the child's set-up (session, user, limits, cwd) is done: a Python
child, which runs its callback without an exec, says so itself on the control socket, on
which it still is; a child that execs has no such last moment, so its set-up is awaited
on the loop through a close-on-exec pipe and the server says it. Either way "S" comes
before that child's "X": a child that ends before its "S" gets an "X" alone. The server is
a subreaper: whatever a callback leaves behind is reparented here and reaped at once.

What a run costs is mostly page faults: a fork write-protects the whole heap, and every
page the child (or the server, until the child is gone) then writes is copied. So the
server stays small — it pre-imports only what its callbacks import (_forkprep) — and
both sides touch as little as they can per run.
"""

from __future__ import annotations

import array
import gc
import importlib
import json
import json.scanner
import os
import select
import signal
import socket
import sys
from dataclasses import dataclass
from typing import Any, Final

import _forkchild  # type: ignore[import-not-found]  # the runtime dir is sys.path[0] here
import _forkprep  # type: ignore[import-not-found]
import _qbrun  # type: ignore[import-not-found]
from _forkchild import FD_CEILING, Job, Script

importlib.import_module("qb")  # in sys.modules before any fork: the children find it there

_CONTROL_FD: Final = 3
# A run request is its environment and a few paths, some KiB; the daemon sends no more.
MAX_REQUEST: Final = 1 << 16
_FDS_PER_RUN: Final = 3
_CMSG: Final = socket.CMSG_SPACE(_FDS_PER_RUN * 4)
_PR_SET_CHILD_SUBREAPER: Final = 36
# What json.loads ends in (typeshed's make_scanner wants itself, not a decoder).
_scan_once = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]


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
        self._pid = os.getpid()
        self._children: dict[int, int] = {}  # pid -> request id, until reaped
        self._setups: dict[int, _Setup] = {}  # by pid: exec'ing children, until set up
        self._jobs: dict[str, tuple[tuple[int, int, int], Job]] = {}  # by path
        self._unimportable: set[str] = set()
        self._environ = _forkprep.Environment()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        self._epoll = select.epoll()
        # What each watched fd is: the control socket, the wake-up pipe, a set-up pipe.
        self._watched: dict[int, _Setup | None] = {control.fileno(): None, self._wake_r: None}
        self._epoll.register(control.fileno(), select.EPOLLIN)
        self._epoll.register(self._wake_r, select.EPOLLIN)

    def serve(self) -> Job | None:
        """Returns None when the daemon hangs up; returns a Job only in a forked child."""
        self._send(b"R %d" % os.getpid())
        control = self._control.fileno()
        while True:
            for fd, _ in self._epoll.poll():
                if fd == self._wake_r:
                    self._reap()
                elif fd != control:
                    setup = self._watched.get(fd)
                    if setup is not None:
                        self._on_setup(fd, setup)
                else:
                    try:
                        data, ancdata, _flags, _ = self._control.recvmsg(MAX_REQUEST, _CMSG)
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
            req = _decode(data)
            rid = int(req["id"])
            if len(fds) != _FDS_PER_RUN:
                raise ValueError(f"expected {_FDS_PER_RUN} descriptors, got {len(fds)}")
            path = req.get("path")
            if not path and not req.get("argv"):
                raise ValueError("neither a path nor an argv")
            job = self._job(path) if path else None
            self._environ.set(req["env"])  # here, not in the child: see Environment
        except (ValueError, KeyError, TypeError) as exc:
            _close(fds)
            self._send(f"E {rid} bad request: {exc}".encode())
            return None
        return self._fork(rid, req, fds, job)

    def _fork(self, rid: int, req: dict[str, Any], fds: list[int], job: Job | None) -> Job | None:
        """Fork; the child sets itself up and says if that failed (see the docstring)."""
        err_r = err_w = -1
        try:
            if job is None:
                err_r, err_w = os.pipe2(os.O_CLOEXEC)
            pid = os.fork()
        except OSError as exc:
            _close([*fds, err_r, err_w] if err_r >= 0 else fds)
            self._send(f"E {rid} fork: {exc.strerror or exc}".encode())
            return None
        if pid == 0:
            return _forkchild.become(self._control, self._pid, rid, req, fds, job, err_w)
        _close(fds)
        self._children[pid] = rid
        if err_r >= 0:
            os.close(err_w)
            setup = self._setups[pid] = _Setup(rid, pid)
            self._watched[err_r] = setup
            self._epoll.register(err_r, select.EPOLLIN)
        return None

    def _on_setup(self, err_r: int, setup: _Setup) -> None:
        chunk = os.read(err_r, 4096)
        if chunk:
            setup.reason += chunk
            return
        self._epoll.unregister(err_r)
        del self._watched[err_r]
        os.close(err_r)
        del self._setups[setup.pid]
        if setup.reason:
            if setup.status is None:
                os.waitpid(setup.pid, 0)  # it exits right after writing why
                del self._children[setup.pid]
            self._send(b"E %d %s" % (setup.rid, setup.reason))
            return
        self._send(b"S %d %d" % (setup.rid, setup.pid))
        if setup.status is not None:
            self._send(b"X %d %d %d" % (setup.pid, setup.status, setup.rid))

    def _job(self, path: str) -> Job:
        """Cached code by (mtime, size, inode): an edit is seen by the next run. A file
        that does not compile has none: the child fails as ``python FILE`` does."""
        hit = self._jobs.get(path)
        try:
            st = os.stat(path)
            key = (st.st_mtime_ns, st.st_size, st.st_ino)
            if hit is None or hit[0] != key:
                code = _qbrun.compile_file(path)
                directory = os.path.dirname(os.path.abspath(path))
                _forkprep.prewarm(code, self._unimportable, directory)
                shadowed = _forkprep.shadowed_modules(directory)
                script = Script(path, directory, code, _qbrun.new_main(path), shadowed)
                hit = (key, Job(path, script))
                self._jobs[path] = hit
        except (SyntaxError, ValueError, OSError):
            self._jobs.pop(path, None)
            return Job(path, None)
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
            rid = self._children.pop(pid, None)
            if pid in self._setups:  # reported once its set-up is heard of
                self._setups[pid].status = status
            elif rid is not None:
                self._send(b"X %d %d %d" % (pid, status, rid))
            # else an orphan a callback left behind: reaped, nothing more

    def _send(self, message: bytes) -> None:
        self._control.sendall(message)


def _decode(data: bytes) -> Any:
    """json.loads(data) without its three Python-level wrappers: each page a run's
    request touches costs a page fault (see the module's docstring)."""
    text = data.decode()
    try:
        value, end = _scan_once(text, 0)
    except StopIteration:
        raise ValueError("not JSON") from None
    if end != len(text):
        raise ValueError("not one JSON value")
    return value


def _received_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds = array.array("i")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return list(fds)


def _close(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def main() -> None:
    os.closerange(_CONTROL_FD + 1, FD_CEILING)  # whatever the daemon let leak (LISTEN_FDS)
    if _forkchild.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print("fork server: cannot become a subreaper", file=sys.stderr)
    control = socket.socket(fileno=_CONTROL_FD)
    server = Server(control)
    gc.freeze()  # start-up objects stay out of the children's collections (fewer COW faults)
    job = server.serve()
    if job is not None:
        job.run()  # in a child: the callback's exceptions and exit are a script's


if __name__ == "__main__":
    main()
