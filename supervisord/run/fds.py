"""A run's descriptors: its stdin document, its output pipe and its qb socket pair."""

from __future__ import annotations

import fcntl
import os
import socket

from supervisord.run import cspawn


def spawn_and_close(prepared: cspawn.Prepared, child_ends: tuple[int, ...]) -> int:
    """On a spawn thread: the spawn, then the child's ends closed at once. Left for the loop
    to close, they would be copied into the next child this thread or the other clones
    meanwhile, and held there until it execs: a run that ends that soon would wait for its
    output pipe's end of file (half of them did, with 8 quick runs at once)."""
    try:
        return cspawn.launch(prepared)
    finally:
        cspawn.release(prepared)
        cspawn.close(child_ends)


def close(fds: tuple[int, ...]) -> None:
    for fd in fds:
        os.close(fd)


def abandon(read_end: int, ours: socket.socket | None) -> None:
    os.close(read_end)
    if ours is not None:
        ours.close()


def send_nowait(sock: socket.socket | None, data: bytes) -> int:
    if sock is None or not data:
        return 0
    try:
        return sock.send(data)
    except BlockingIOError:
        return 0


def pipes(doc: bytes, channel: bool) -> tuple[int, int, socket.socket | None, tuple[int, ...]]:
    """stdin (a memfd holding ``doc``), the output pipe's read end and our end of fd 3
    (both non-blocking; no fd 3 unless ``channel``), and the child's ends: (stdin, output
    write end[, fd 3])."""
    stdin = os.memfd_create("qbcallback-stdin")
    ours = theirs = None
    try:
        view, at = memoryview(doc), 0
        while at < len(view):  # memory, never blocks: a big document cannot stall the loop
            at += os.pwrite(stdin, view[at:], at)  # the offset stays 0, for the child
        if channel:
            ours, theirs = socket.socketpair()
            ours.setblocking(False)
        read_end, write_end = os.pipe()
        fcntl.fcntl(read_end, fcntl.F_SETFL, os.O_NONBLOCK)  # the child's end stays blocking
    except BaseException:
        os.close(stdin)
        for sock in (ours, theirs):
            if sock is not None:
                sock.close()
        raise
    if theirs is None:
        return stdin, read_end, None, (stdin, write_end)
    return stdin, read_end, ours, (stdin, write_end, theirs.detach())
