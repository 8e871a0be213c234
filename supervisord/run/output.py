"""A run's output: the pipe drained on the loop into the job's .cb log, capped per run."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Final

from supervisord.core.runtypes import RunRequest
from supervisord.run.process import Readers

log = logging.getLogger(__name__)

# One pipe buffer's worth (Linux default 64 KiB): a read never returns more.
_READ_SIZE: Final = 65536
# A pipe holds at most 1 MiB (pipe-max-size): what was written before a look is taken in
# this many reads, even while a writer adds more.
_READ_ROUNDS: Final = 16
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


class LogWriter:
    """Appends to .cb logs from a thread of its own, so that the loop never waits on the
    log file system (a mkdir and an open per new job; an NFS log path may take seconds).
    Appends are written in the order they were made; flush() resolves once everything
    appended before it is written. No file is held open while there is nothing to write."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[str, bytes] | asyncio.Future[None] | None] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def append(self, path: str, data: bytes) -> None:
        self._start()
        self._queue.put((path, data))

    async def flush(self) -> None:
        if self._thread is None:
            return  # nothing was ever appended
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put(future)
        await future

    def close(self) -> None:
        """Write what is queued, then end the thread (a later append starts a new one)."""
        thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join()
            self._thread = None

    def _start(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    thread = threading.Thread(target=self._work, name="qb-logs", daemon=True)
                    thread.start()
                    self._thread = thread

    def _work(self) -> None:
        out = _Appender()
        flushed: list[asyncio.Future[None]] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                out.close()  # idle: hold no file open
                _resolve(flushed)
                flushed = []
                item = self._queue.get()
            if item is None:
                out.close()
                _resolve(flushed)
                return
            if isinstance(item, asyncio.Future):
                flushed.append(item)
            else:
                try:
                    out.write(*item)
                except Exception:  # never let the thread die: every run waits on it
                    log.exception("callback log writer failed path=%s", item[0])
                    out.close()


def _resolve(futures: list[asyncio.Future[None]]) -> None:
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for future in futures:
        by_loop.setdefault(future.get_loop(), []).append(future)
    for loop, waiting in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits
            loop.call_soon_threadsafe(_set_done, waiting)


def _set_done(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)


class _Appender:
    """The writer thread's one open log file."""

    def __init__(self) -> None:
        self._path: str | None = None
        self._fd: int | None = None

    def write(self, path: str, data: bytes) -> None:
        try:
            if path != self._path or self._fd is None:
                self.close()
                self._path = path
                self._fd = _open_log(path)
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            log.warning("cannot write callback log path=%s error=%s", path, exc)
            self.close()

    def close(self) -> None:
        fd, self._fd, self._path = self._fd, None, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError as exc:  # NFS reports a failed write-back at close
                log.warning("cannot close callback log error=%s", exc)


def _open_log(path: str) -> int:
    try:
        return os.open(path, _LOG_FLAGS, 0o644)
    except FileNotFoundError:  # a new job: its log directory comes first
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return os.open(path, _LOG_FLAGS, 0o644)


class OutputSink:
    """One run's output for its job's log file: header on the first byte, then at most
    ``limit`` bytes, then a marker; the rest is dropped. A run that prints nothing
    leaves the file untouched. The bytes go to ``writer`` (the loop never writes a file);
    flushed() waits until they are in the file."""

    __slots__ = ("_header", "_limit", "_tail", "_writer", "kept", "path", "truncated", "wrote")

    def __init__(
        self, path: str, header: Callable[[], bytes], limit: int, writer: LogWriter
    ) -> None:
        self.path = path
        self._header = header
        self._limit = max(0, limit)
        self._writer = writer
        self._tail = b"\n"
        self.kept = 0
        self.truncated = False
        self.wrote = False

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
        """End the run's output on a line of its own."""
        if self.wrote and self._tail != b"\n":
            self._emit(b"\n")

    async def flushed(self) -> None:
        if self.wrote:
            await self._writer.flush()

    def _emit(self, data: bytes) -> None:
        if not self.wrote:
            self.wrote = True
            data = self._header() + data  # made only for runs that print something
        self._writer.append(self.path, data)
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
        self._readers.add_reader(fd, self._read_once)

    def _read_once(self) -> bool:
        """One read; False when there was nothing to read now (or ever again)."""
        if self._fd is None:
            return False
        try:
            data = os.read(self._fd, _READ_SIZE)
        except BlockingIOError:
            return False
        except OSError as exc:
            log.warning("cannot read callback output path=%s error=%s", self.sink.path, exc)
            data = b""
        if data:
            self.sink.write(data)
            return True
        self.close()
        return False

    def read_available(self) -> None:
        """Take what is in the pipe now (a writer that lives on may hold it open): what
        the callback printed before it exited is in the sink when this returns."""
        for _ in range(_READ_ROUNDS):
            if self._fd is None or not self._read_once():
                return

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
