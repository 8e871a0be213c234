"""A run's output: the pipe drained on the loop into the job's .cb log, capped per run."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from datetime import datetime
from typing import Final

from supervisord.process import Readers
from supervisord.runtypes import RunRequest

log = logging.getLogger(__name__)

# One pipe buffer's worth (Linux default 64 KiB): a read never returns more.
_READ_SIZE: Final = 65536
_LOG_FLAGS: Final = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC


def header_line(req: RunRequest, started: float) -> bytes:
    """The line that opens a run's output in the .cb log."""
    when = datetime.fromtimestamp(started).astimezone().isoformat(timespec="milliseconds")
    ev = req.event_doc
    job = "-" if req.owner is None else str(req.owner)
    return (
        f"=== {when} qbcallbacks run={req.run_id} callback={req.callback.file}"
        f" trigger={req.callback.trigger_text!r} event={ev.get('name')}-{ev.get('type')}"
        f" seq={req.seq} event_id={req.event_id} job={job} ===\n"
    ).encode()


def cut_marker(limit: int) -> bytes:
    return f"[qbcallbacks: output cut at {limit} bytes]\n".encode()


class OutputSink:
    """Appends one run's output to a log file: header on the first byte, then at most
    ``limit`` bytes, then a marker; the rest is dropped. A run that prints nothing
    leaves the file untouched."""

    __slots__ = ("_broken", "_fd", "_header", "_limit", "_tail", "kept", "path", "truncated")

    def __init__(self, path: str, header: Callable[[], bytes], limit: int) -> None:
        self.path = path
        self._header = header
        self._limit = max(0, limit)
        self._fd: int | None = None
        self._broken = False
        self._tail = b"\n"
        self.kept = 0
        self.truncated = False

    def write(self, data: bytes) -> None:
        if self.truncated or not data:
            return
        room = self._limit - self.kept
        if len(data) <= room:
            self.kept += len(data)
            self._emit(data)
            return
        chunk = data[:room]
        self.kept += len(chunk)
        self.truncated = True
        last = chunk[-1:] or self._tail
        newline = b"" if last == b"\n" else b"\n"
        self._emit(chunk + newline + cut_marker(self._limit))

    def close(self) -> None:
        """End the run's output on a line of its own and close the file."""
        if self._fd is None:
            return
        if self._tail != b"\n":
            self._emit(b"\n")
        os.close(self._fd)
        self._fd = None

    def _emit(self, data: bytes) -> None:
        if self._broken:
            return
        try:
            if self._fd is None:
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
                self._fd = os.open(self.path, _LOG_FLAGS, 0o644)
                data = self._header() + data  # made only for runs that print something
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            self._broken = True
            log.warning("cannot write callback log path=%s error=%s", self.path, exc)
            return
        self._tail = data[-1:]


class PipeDrain:
    """Reads a pipe on the loop into a sink until end of file; the caller made the
    pipe's read end non-blocking."""

    __slots__ = ("_fd", "_readers", "eof", "sink")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        fd: int,
        sink: OutputSink,
        readers: Readers | None = None,
    ) -> None:
        self._readers: Readers = loop if readers is None else readers
        self._fd: int | None = fd
        self.sink = sink
        self.eof: asyncio.Future[None] = loop.create_future()
        self._readers.add_reader(fd, self._on_readable)

    def _on_readable(self) -> None:
        if self._fd is None:
            return
        try:
            data = os.read(self._fd, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            log.warning("cannot read callback output path=%s error=%s", self.sink.path, exc)
            data = b""
        if data:
            self.sink.write(data)
        else:
            self.close()

    def close(self) -> None:
        """Stop reading (at end of file, or when giving up on a holder that escaped)."""
        if self._fd is None:
            return
        self._readers.remove_reader(self._fd)
        os.close(self._fd)
        self._fd = None
        self.sink.close()
        if not self.eof.done():
            self.eof.set_result(None)
