"""Processes seen through /proc: a group's members, the daemon's children, and reaping them."""

from __future__ import annotations

import contextlib
import ctypes
import os
from dataclasses import dataclass
from typing import Final

_PR_SET_CHILD_SUBREAPER: Final = 36
_PR_GET_CHILD_SUBREAPER: Final = 37
_STAT_SIZE: Final = 1024  # /proc/N/stat is one line of some 300 bytes


@dataclass(frozen=True, slots=True)
class Proc:
    """One process as /proc/N/stat shows it."""

    pid: int
    ppid: int
    pgid: int
    sid: int
    zombie: bool  # exited, not yet reaped: it holds no fd and runs no code
    start: int  # start time in clock ticks: with the pid, names a process for good


def read_stat(pid: int | str) -> Proc | None:
    """The process ``pid`` now, or None when it is gone."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, _STAT_SIZE)
    except OSError:  # it went while being read
        return None
    finally:
        os.close(fd)
    # "pid (comm) state ppid pgrp session ...": comm may hold anything, ")" included.
    fields = data[data.rfind(b")") + 2 :].split()
    if len(fields) < 20:
        return None
    state = fields[0]
    return Proc(
        int(pid), int(fields[1]), int(fields[2]), int(fields[3]), state in (b"Z", b"X"),
        int(fields[19]),
    )  # fmt: skip


def members(pgid: int) -> list[Proc]:
    """Every process of group ``pgid`` now, zombies included: one read per process of
    the host, so only for groups known not to be empty (os.killpg(pgid, 0) said so)."""
    return [proc for proc in members_all() if proc.pgid == pgid]


def children() -> list[Proc]:
    """The processes whose parent is this one (orphans it took in as a subreaper too)."""
    pids: set[str] = set()
    try:
        tasks = os.listdir("/proc/self/task")
        for tid in tasks:
            with open(f"/proc/self/task/{tid}/children", "rb") as f:
                pids.update(pid.decode() for pid in f.read().split())
    except FileNotFoundError:  # a thread that just ended, or no CONFIG_PROC_CHILDREN
        me = os.getpid()
        return [proc for proc in members_all() if proc.ppid == me]
    found = [read_stat(pid) for pid in pids]
    return [proc for proc in found if proc is not None]


def members_all() -> list[Proc]:
    """Every process of the host."""
    with os.scandir("/proc") as entries:
        found = [read_stat(entry.name) for entry in entries if entry.name.isdigit()]
    return [proc for proc in found if proc is not None]


def reap(pid: int) -> bool:
    """Collect ``pid`` if it is an exited child of ours; False otherwise (not ours: its
    parent reaps it; still running)."""
    with contextlib.suppress(ChildProcessError):
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG) is not None
    return False


def reap_pidfd(pidfd: int) -> bool:
    """reap() through a pidfd (which names the process for good, whatever its pid)."""
    with contextlib.suppress(ChildProcessError):
        return os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG) is not None
    return False


def set_subreaper(on: bool) -> bool:
    """Make this process a child subreaper (orphaned descendants become its children), or
    stop being one; returns whether it was one before."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    was = ctypes.c_int(0)
    if prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(was), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_GET_CHILD_SUBREAPER) failed")
    if bool(was.value) != on and prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")
    return bool(was.value)
