"""Accepting intake connections: the connection cap, and accepts that fail for want of
descriptors answered with `unavailable`, logged, and never the end of accepting."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from collections.abc import Callable
from typing import Final, cast

from supervisord.daemon.limits import Throttled, soft_nofile
from supervisord.daemon.replies import encode, error

log = logging.getLogger(__name__)

# Connections accepted per wake-up of the listening socket before other work gets a turn.
ACCEPT_BATCH: Final = 64
# Seconds before accepting again after an accept failed and no descriptor could be freed to
# answer the client: the loop stays free meanwhile (asyncio's own server waits one second).
RETRY_DELAY: Final = 1.0
# Seconds a refused connection stays open after its reply line (our side shut for writing),
# reading and dropping what the client sends: closing at once would make a client that
# writes its request after we close see a broken pipe instead of reading the reply.
LINGER: Final = 5.0
# Refused connections lingering at once; past that one is answered and closed at once.
LINGER_MAX: Final = 16
# Bytes a refused client may have sent that are read before closing without lingering:
# closing on unread data resets the connection, which can cost the client the reply line.
DRAIN: Final = 1 << 16
# accept(2) errors that mean the process or the system is out of something, not the client.
OUT_OF: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class Acceptor:
    """Accepts on the listening socket from the loop; each accepted socket becomes a
    connection made by ``make``, unless ``limit`` connections are open already."""

    def __init__(self, sock: socket.socket, make: Callable[[], asyncio.Protocol], limit: int):
        self.limit = limit
        self.live: set[asyncio.BaseProtocol] = set()
        self._sock = sock
        self._make = make
        self._loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task[None]] = set()
        self._refusals: set[Refusal] = set()
        self._retry: asyncio.TimerHandle | None = None
        self._reserve = _open_reserve()  # given back to answer a client when out of fds
        self._full = Throttled(
            log, 'connection refused reason="too many connections" open=%d '
            "supervisor_event_max_connections=%d refused=%d",
        )  # fmt: skip
        self._failed = Throttled(log, "accept failed errno=%s error=%r nofile=%d refused=%d")
        sock.setblocking(False)
        self._loop.add_reader(sock.fileno(), self._accept)

    def discard(self, conn: asyncio.BaseProtocol) -> None:
        """A connection is gone: its place is free."""
        self.live.discard(conn)

    def close(self) -> None:
        """Stop accepting: from here on a connect is refused."""
        if self._retry is not None:
            self._retry.cancel()
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        if self._reserve is not None:
            os.close(self._reserve)
            self._reserve = None
        for refusal in list(self._refusals):
            refusal.close()
        self._full.flush()
        self._failed.flush()

    async def wait_closed(self) -> None:
        """Wait for the connections being set up when accepting stopped."""
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for refusal in list(self._refusals):
            refusal.close()

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _addr = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if not self._accept_failed(exc):
                    return
                continue
            if len(self.live) < self.limit:
                self._attach(conn, self._make(), True)
                continue
            open_ = len(self.live)
            self._full.note(open_, self.limit)
            self._refuse(
                conn, f"too many connections ({open_} open; "
                f"supervisor_event_max_connections = {self.limit})",
            )  # fmt: skip

    def _accept_failed(self, exc: OSError) -> bool:
        """Log it; answer the client waiting if a descriptor can be freed for it, else stop
        accepting for a moment. True to go on accepting now."""
        code = exc.errno or 0
        self._failed.note(errno.errorcode.get(code, str(code)), exc.strerror, soft_nofile())
        if code in OUT_OF and self._shed(exc):
            return True
        self._loop.remove_reader(self._sock.fileno())
        self._retry = self._loop.call_later(RETRY_DELAY, self._resume)
        return False

    def _shed(self, exc: OSError) -> bool:
        """Give the reserve descriptor back, accept the client waiting, tell it why it is
        not served, close it and take the reserve again; False if that could not be done."""
        if self._reserve is None:
            return False
        os.close(self._reserve)
        try:
            conn, _addr = self._sock.accept()
        except BlockingIOError:
            conn = None  # nobody waits any more
        except OSError:
            self._reserve = _open_reserve()
            return False
        if conn is not None:
            limit = soft_nofile()
            message = f"cannot accept the connection: {exc.strerror} (RLIMIT_NOFILE {limit})"
            _answer_now(conn, _line(message))
        self._reserve = _open_reserve()
        return True

    def _resume(self) -> None:
        self._retry = None
        if self._reserve is None:
            self._reserve = _open_reserve()
        self._loop.add_reader(self._sock.fileno(), self._accept)

    def _refuse(self, conn: socket.socket, message: str) -> None:
        if len(self._refusals) >= LINGER_MAX:
            _answer_now(conn, _line(message))
            return
        refusal = Refusal(_line(message), self._refusals.discard)
        self._refusals.add(refusal)
        self._attach(conn, refusal, False)

    def _attach(self, conn: socket.socket, protocol: asyncio.Protocol, counted: bool) -> None:
        """Give an accepted socket a transport and ``protocol``; ``counted`` ones hold a
        place among the open connections from now until `discard`."""
        if counted:
            self.live.add(protocol)
        task = self._loop.create_task(self._connect(conn, protocol))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, conn: socket.socket, protocol: asyncio.Protocol) -> None:
        try:
            await self._loop.connect_accepted_socket(lambda: protocol, conn)
        except Exception as exc:  # contained: this client only (most likely gone already)
            log.warning("connection not set up error=%s", exc)
            self.live.discard(protocol)
            if isinstance(protocol, Refusal):
                self._refusals.discard(protocol)
            conn.close()


class Refusal(asyncio.Protocol):
    """A connection that is not served: one reply line and the end of what we send, then
    what the client sends is dropped until it closes, or LINGER seconds have passed."""

    def __init__(self, line: bytes, done: Callable[[Refusal], None]) -> None:
        self._line = line
        self._done = done
        self._transport: asyncio.WriteTransport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        writer = cast(asyncio.WriteTransport, transport)  # uvloop's implement, not subclass
        self._transport = writer
        if not writer.can_write_eof():
            writer.close()
            return
        writer.write(self._line)
        writer.write_eof()
        self._timer = asyncio.get_running_loop().call_later(LINGER, self.close)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        """Dropped: the reply line already said this connection is not served."""

    def eof_received(self) -> bool:
        return False  # the client is done: close

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._done(self)


def _line(message: str) -> bytes:
    return encode(error("unavailable", message))


def _answer_now(conn: socket.socket, line: bytes) -> None:
    """Send the reply line, read what the client sent already (closing on unread data would
    reset the connection), and close."""
    with conn, contextlib.suppress(OSError):  # a client gone already needs no answer
        conn.setblocking(False)
        conn.send(line)  # a fresh socket has room for one line
        left = DRAIN
        while left > 0:
            data = conn.recv(left)  # BlockingIOError once nothing more is there
            if not data:
                return
            left -= len(data)


def _open_reserve() -> int | None:
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
