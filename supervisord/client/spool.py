"""The spool: events not delivered before their deadline, kept on disk until a flush delivers them.

A directory holding ``spool.ndjson`` (one event per line, each with its ``event_id``, oldest
first), ``rejected.ndjson`` (events the daemon refused, with the reason) and two lock files.
``.append.lock`` is held for the moment it takes to append lines, read the file or rewrite
it; ``.flush.lock`` for a whole flush, so that two clients never both send an event.
Every change is fsynced, file and directory, before it is relied on.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

from supervisord.client.acks import SpoolError

SPOOL_FILE: Final = "spool.ndjson"
REJECTED_FILE: Final = "rejected.ndjson"
APPEND_LOCK: Final = ".append.lock"
FLUSH_LOCK: Final = ".flush.lock"
# Others hold the append lock only to write a few lines or rewrite the file: milliseconds.
APPEND_LOCK_WAIT_S: Final = 10.0
POLL_FIRST_S: Final = 0.005
POLL_MAX_S: Final = 0.1


def encode(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, separators=(",", ":"), ensure_ascii=False) + "\n").encode()


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The spool as read under its append lock: events in order, unreadable lines, size."""

    entries: tuple[tuple[bytes, dict[str, Any]], ...]  # (line as stored, the event)
    bad: tuple[bytes, ...]  # lines that are not a JSON object: a crash cut them, or a hand
    size: int


class Spool:
    """One spool directory; several clients and processes may share it."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.path = os.path.join(directory, SPOOL_FILE)
        self.rejected_path = os.path.join(directory, REJECTED_FILE)

    def has_events(self) -> bool:
        """Whether the spool file holds anything (one stat: cheap enough for every emit).
        A spool that cannot even be looked at holds nothing this client could flush."""
        try:
            return os.stat(self.path).st_size > 0
        except OSError:
            return False

    def append(self, docs: Sequence[dict[str, Any]]) -> None:
        """Append the events and fsync them; raises SpoolError or OSError."""
        data = b"".join(encode(doc) for doc in docs)
        os.makedirs(self.directory, exist_ok=True)
        with self._locked(APPEND_LOCK, APPEND_LOCK_WAIT_S):
            _append_durably(self.path, data, self.directory)

    @contextlib.contextmanager
    def flushing(self, wait: float) -> Iterator[bool]:
        """Hold the flush lock while the block runs: True, or False when another client held
        it for ``wait`` seconds (then the block must send nothing)."""
        os.makedirs(self.directory, exist_ok=True)
        fd = os.open(os.path.join(self.directory, FLUSH_LOCK), os.O_RDWR | os.O_CREAT, 0o666)
        try:
            yield _acquire(fd, wait)
        finally:
            os.close(fd)  # releases the lock

    def snapshot(self) -> Snapshot:
        with self._locked(APPEND_LOCK, APPEND_LOCK_WAIT_S):
            try:
                with open(self.path, "rb") as handle:
                    data = handle.read()
            except FileNotFoundError:
                data = b""
        entries, bad = [], []
        for line in data.splitlines(keepends=True):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except ValueError:
                doc = None
            if isinstance(doc, dict):
                entries.append((line if line.endswith(b"\n") else line + b"\n", doc))
            else:
                bad.append(line)
        return Snapshot(tuple(entries), tuple(bad), len(data))

    def commit(self, snap: Snapshot, keep: Sequence[bytes]) -> None:
        """Replace the snapshot's part of the file by ``keep``; lines appended since stay.

        Only the holder of the flush lock may call it: nobody else rewrites the file.
        """
        with self._locked(APPEND_LOCK, APPEND_LOCK_WAIT_S):
            try:
                with open(self.path, "rb") as handle:
                    handle.seek(snap.size)
                    data = b"".join(keep) + handle.read()
            except FileNotFoundError:
                data = b"".join(keep)
            if not data.strip():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
            else:
                tmp = self.path + ".tmp"
                with open(tmp, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, self.path)
            _fsync_dir(self.directory)

    def reject(self, items: Sequence[tuple[bytes, str]]) -> None:
        """Keep refused or unreadable lines, with the reason, in rejected.ndjson."""
        if not items:
            return
        docs = []
        for line, reason in items:
            text = line.decode("utf-8", "replace").rstrip("\n")
            docs.append({"rejected_at": time.time(), "error": reason, "line": text})
        with self._locked(APPEND_LOCK, APPEND_LOCK_WAIT_S):
            _append_durably(self.rejected_path, b"".join(encode(d) for d in docs), self.directory)

    @contextlib.contextmanager
    def _locked(self, name: str, wait: float) -> Iterator[None]:
        fd = os.open(os.path.join(self.directory, name), os.O_RDWR | os.O_CREAT, 0o666)
        try:
            if not _acquire(fd, wait):
                raise SpoolError(f"{self.directory}: {name} stayed locked for {wait:g} s")
            yield
        finally:
            os.close(fd)  # releases the lock


def _acquire(fd: int, wait: float) -> bool:
    """flock with a bound: flock itself has none, so poll the non-blocking form, as lock-file
    libraries do. A lock is released by the kernel when its holder dies, even by kill -9."""
    give_up_at = time.monotonic() + wait
    pause = POLL_FIRST_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                raise
        remaining = give_up_at - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(pause, remaining))
        pause = min(pause * 2, POLL_MAX_S)


def _append_durably(path: str, data: bytes, directory: str) -> None:
    """Append whole lines and fsync; a line a crash cut short is ended first, so that it
    cannot swallow the next one. A new file's directory entry is fsynced too."""
    created = not os.path.exists(path)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        _fsync_dir(directory)


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
