"""The intake socket protocol: NDJSON requests, one reply line each, in order (SPEC §3)."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol, cast

from supervisord.core.errors import EventError
from supervisord.core.events import validate_event, validate_request
from supervisord.core.model import Event
from supervisord.daemon.lines import MAX_LINE, Batch, LineReader
from supervisord.daemon.replies import Reply, encode, encode_acks, error

__all__ = ["MAX_LINE", "WINDOW", "Backend", "Connection", "Reply", "Slot", "error"]

log = logging.getLogger(__name__)

# Events one connection may have read and not yet had answered before it stops reading.
# A pipelining client otherwise runs far ahead of the journal, and every event in flight is
# an object the garbage collector walks again and again (it cost more than parsing did);
# a few reads' worth keeps the journal thread's batches large.
WINDOW: Final = 2048


class Backend(Protocol):
    """What the protocol needs from the daemon."""

    closing: bool

    def is_allowed(self, uid: int) -> bool: ...
    def is_congested(self) -> bool: ...
    def watch_congestion(self, conn: Connection) -> None: ...
    def submit_events(self, events: list[Event], done: Callable[[list[Reply]], None]) -> None: ...
    def call(self, op: str, doc: dict[str, Any], conn: Connection) -> Awaitable[Reply]: ...
    def disconnected(self, conn: Connection) -> None: ...


class Slot:
    """A reply position on one connection; filled in whatever order work completes."""

    __slots__ = ("data",)

    def __init__(self, data: bytes | None = None) -> None:
        self.data = data


class Connection(LineReader, asyncio.Protocol):
    """One client connection: dispatches its lines, writes replies strictly in order."""

    def __init__(self, backend: Backend) -> None:
        super().__init__()
        self.backend = backend
        self.transport: asyncio.Transport | None = None
        self._slots: deque[Slot] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._paused_by: set[str] = set()
        self._unacked = 0  # events submitted, replies not yet back
        self.peer_uid: int | None = None
        self._eof = False

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they implement it.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            _pid, self.peer_uid, _gid = struct.unpack("3i", creds)
        if self.peer_uid is not None and not self.backend.is_allowed(self.peer_uid):
            log.warning("connection refused uid=%d reason=not allowed", self.peer_uid)
            message = f"uid {self.peer_uid} is not allowed (supervisor_event_allow_users)"
            self.transport.write(encode(error("not_allowed", message)))
            self.transport.close()
            self.transport = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        for task in self._tasks:
            task.cancel()
        self.backend.disconnected(self)

    def pause_writing(self) -> None:
        self.pause("writing")

    def resume_writing(self) -> None:
        self.resume("writing")

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            return
        self._buf += data
        self._process()
        if self._unacked >= WINDOW:
            self.pause("window")

    def _process(self) -> None:
        """Handle the complete lines buffered. While the daemon is congested, an event line
        and everything after it wait here (reading pauses) until `resume` comes back to
        them; requests before it are still answered."""
        if "congestion" in self._paused_by:
            return
        self._read_lines()

    def _is_congested(self) -> bool:
        if not self.backend.is_congested():
            return False
        self.pause("congestion")
        self.backend.watch_congestion(self)
        return True

    def eof_received(self) -> bool:
        # Half-close: keep the transport open until every pending reply is written.
        self._eof = True
        return bool(self._slots)

    # -- flow control ----------------------------------------------------------------------

    def pause(self, why: str) -> None:
        if self.transport is not None and not self._paused_by:
            self.transport.pause_reading()
        self._paused_by.add(why)

    def resume(self, why: str) -> None:
        self._paused_by.discard(why)
        if self.transport is not None and not self._paused_by:
            self.transport.resume_reading()
        if why == "congestion" and self.transport is not None:
            self._process()

    # -- requests --------------------------------------------------------------------------

    def _handle_request(self, doc: dict[str, Any], head: str | None, batch: Batch) -> bool:
        """``head`` is the request line without its closing brace, when it is known."""
        op = doc.get("op", "event")
        if self.backend.closing:
            return self._refuse(batch, error("unavailable", "the daemon is shutting down"))
        if op == "event":
            if not batch.events and self._is_congested():
                return False  # this line and the rest wait for `resume`
            try:
                if head is None:
                    event = validate_event(doc, batch.now)
                else:
                    event = validate_request(doc, head, batch.now, batch.now_text)
            except EventError as exc:
                return self._refuse(batch, error("invalid_event", str(exc), field=exc.field))
            batch.events.append(event)
            return True
        batch.flush()
        slot = Slot()
        self._slots.append(slot)
        self._spawn(self._call(op, doc, slot))
        return True

    def _submit(self, events: list[Event]) -> None:
        """Hand events to the daemon; one slot holds all their replies, once committed."""
        slot = Slot()
        self._slots.append(slot)
        self._unacked += len(events)

        def done(replies: list[Reply]) -> None:
            slot.data = encode_acks(replies)
            self._unacked -= len(replies)
            if self._unacked <= WINDOW // 2 and "window" in self._paused_by:
                self.resume("window")
            self._write_ready()

        self.backend.submit_events(events, done)

    async def _call(self, op: str, doc: dict[str, Any], slot: Slot) -> None:
        try:
            reply = await self.backend.call(op, doc, self)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # contained: an internal error answers, the daemon lives on
            log.exception("request failed op=%s", op)
            reply = error("internal", f"{type(exc).__name__}: {exc}")
        slot.data = encode(reply)
        self._write_ready()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _push(self, reply: Reply) -> None:
        self._slots.append(Slot(encode(reply)))
        self._write_ready()

    def _write_ready(self) -> None:
        out = []
        while self._slots and self._slots[0].data is not None:
            out.append(self._slots.popleft().data)
        if out and self.transport is not None:
            self.transport.write(b"".join(d for d in out if d is not None))
        if self._eof and not self._slots and self.transport is not None:
            self.transport.close()

    def send_line(self, doc: Reply) -> bool:
        """Write a streamed line (subscribe/tail); False once the peer is gone or too slow."""
        if self.transport is None or self.transport.is_closing():
            return False
        self.transport.write(encode(doc))
        return True

    def buffered(self) -> int:
        return 0 if self.transport is None else self.transport.get_write_buffer_size()
