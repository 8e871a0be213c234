"""Child processes: spawn in a new session, watch exit with a pidfd, reap, stop, decode."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import pwd
import select
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from supervisord.run.env import RunAs

# Source fds that are themselves child fd numbers are first moved up to here, so that
# dup2(a, 1) never clobbers a source still to be dup2'd, and dup2(3, 3) (a no-op that
# would keep close-on-exec) never happens.
_LOW_FD_FLOOR: Final = 10

log = logging.getLogger(__name__)


class Readers(Protocol):
    """Where a read callback is registered: the loop itself, or a Poller on it."""

    def add_reader(self, fd: int, callback: Callable[[], object]) -> None: ...

    def remove_reader(self, fd: int) -> bool: ...


class Poller:
    """One epoll set of the daemon's own, seen by the loop as one reader: a run's pidfd,
    output pipe and channel cost one epoll_ctl each instead of a loop watcher each."""

    __slots__ = ("_callbacks", "_epoll", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._epoll = select.epoll()
        self._callbacks: dict[int, Callable[[], object]] = {}
        loop.add_reader(self._epoll.fileno(), self._dispatch)

    def add_reader(self, fd: int, callback: Callable[[], object]) -> None:
        self._epoll.register(fd, select.EPOLLIN)
        self._callbacks[fd] = callback

    def remove_reader(self, fd: int) -> bool:
        if self._callbacks.pop(fd, None) is None:
            return False
        try:
            self._epoll.unregister(fd)
        except OSError:  # closed already: the kernel dropped it from the set
            return True
        return True

    def close(self) -> None:
        if not self._epoll.closed:
            self.loop.remove_reader(self._epoll.fileno())
            self._epoll.close()
            self._callbacks.clear()

    def _dispatch(self) -> None:
        for fd, _ in self._epoll.poll(0):
            callback = self._callbacks.get(fd)  # None: removed by an earlier callback
            if callback is None:
                continue
            try:
                callback()
            except Exception:  # as the loop would: log it, serve the other fds
                log.exception("reader callback failed fd=%d", fd)


@dataclass(frozen=True, slots=True)
class Status:
    """How a reaped child ended: exactly one of exit_code / signal is set."""

    exit_code: int | None
    signal: int | None

    def __str__(self) -> str:
        return decode_status(self.exit_code, self.signal)


def decode_status(exit_code: int | None, signal_number: int | None) -> str:
    """Words for an exit status, used by logs, history and repr."""
    if signal_number is not None:
        try:
            name = signal.Signals(signal_number).name
        except ValueError:
            name = f"signal {signal_number}"
        return f"killed by {name}"
    if exit_code is None:
        return "still running"
    return f"exit status {exit_code}"


def move_low_sources(fds: Sequence[int]) -> dict[int, int]:
    """For a child given fd ``i`` = ``fds[i]``: each source numbered below ``len(fds)``
    (an earlier dup2 in the child could overwrite it) duplicated out of the way, as
    {source: duplicate}. The caller closes the duplicates after the spawn."""
    return {
        fd: fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _LOW_FD_FLOOR)
        for fd in set(fds)
        if fd < len(fds)
    }


def spawn(argv: Sequence[str], env: Mapping[str, str], *, cwd: str, fds: Sequence[int]) -> int:
    """Start ``argv`` in a new session with child fd ``i`` = ``fds[i]``; return its pid.

    Every other descriptor of the daemon is close-on-exec (Python's default), so
    the child gets exactly ``len(fds)`` descriptors.
    """
    low = move_low_sources(fds)
    actions = [(os.POSIX_SPAWN_DUP2, low.get(src, src), dst) for dst, src in enumerate(fds)]
    # Python 3.11's posix_spawn has no chdir file action. Changing the daemon's
    # cwd around the call is safe because the loop thread is the only thread that
    # spawns and every path the daemon's other threads use is absolute; it costs two
    # syscalls where an exec wrapper (sh -c 'cd && exec') cost ~30 % of the spawn rate.
    here = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.chdir(cwd)
        try:
            return os.posix_spawn(argv[0], list(argv), dict(env), file_actions=actions, setsid=True)
        finally:
            os.fchdir(here)
    finally:
        os.close(here)
        for fd in low.values():
            os.close(fd)


def resolve_user(spec: str | None, euid: int) -> tuple[pwd.struct_passwd, RunAs | None] | str:
    """Whose password entry a callback's environment uses, and the switch to make (None
    when it already runs as that user); or why it cannot run as ``spec`` at all."""
    try:
        if spec is None:
            return pwd.getpwuid(euid), None
        entry = pwd.getpwuid(int(spec)) if spec.isdigit() else pwd.getpwnam(spec)
        if entry.pw_uid == euid:
            return entry, None
        if euid != 0:
            return f"cannot run as user {spec!r}: the daemon is not root"
        groups = os.getgrouplist(entry.pw_name, entry.pw_gid)
    except KeyError:
        return f"no such user {spec!r} (supervisor_callback_user)"
    return entry, RunAs(entry.pw_uid, entry.pw_gid, tuple(groups))


def watch(
    loop: asyncio.AbstractEventLoop, pid: int, readers: Readers | None = None
) -> asyncio.Future[Status]:
    """A future resolved with the child's Status once it exits; the child is reaped then."""
    pidfd = os.pidfd_open(pid)
    exited: asyncio.Future[Status] = loop.create_future()
    on = loop if readers is None else readers

    def on_exit() -> None:
        on.remove_reader(pidfd)
        try:
            status = reap(pidfd)
        finally:
            os.close(pidfd)
        if not exited.done():
            exited.set_result(status)

    on.add_reader(pidfd, on_exit)
    return exited


def reap(pidfd: int) -> Status:
    """Collect the exit status of the (exited) child behind ``pidfd``."""
    info = os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
    if info is None:  # only with WNOHANG, which is not used; keep mypy honest
        return Status(None, None)
    if info.si_code == os.CLD_EXITED:
        return Status(info.si_status, None)
    return Status(None, info.si_status)


def kill_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to a process group; False when the group no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def is_group_alive(pgid: int) -> bool:
    """True while any process (zombies included) is still in group ``pgid``."""
    return kill_group(pgid, 0)


async def stop_group(pgid: int, grace: float, gone: asyncio.Future[Any]) -> None:
    """The one stop policy: SIGTERM to the group, ``grace`` seconds, SIGKILL to the group.

    ``gone`` resolves when the caller knows its process has exited (for a leader, its
    reap; for left-behind members, the end of the output pipe); SIGKILL is skipped if it
    resolves in time and the group is empty.
    """
    if not kill_group(pgid, signal.SIGTERM):
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    # asyncio.wait, not wait_for: ``gone`` may end in an exception (a run whose fork
    # server died), which must not escape the stop policy.
    await asyncio.wait({gone}, timeout=grace)
    if not is_group_alive(pgid):
        return
    # Members that closed their stdout, or zombies nobody reaped yet: give them what
    # is left of the grace period, then SIGKILL.
    remaining = deadline - loop.time()
    if remaining > 0:
        await asyncio.sleep(remaining)
    kill_group(pgid, signal.SIGKILL)
