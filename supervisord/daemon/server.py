"""The intake socket protocol: NDJSON requests, one reply line each, in order (SPEC §3)."""

from __future__ import annotations

import asyncio
import json
import json.scanner
import logging
import socket
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol, cast

from supervisord.core.errors import EventError
from supervisord.core.events import validate_event, validate_request
from supervisord.core.model import Event
from supervisord.daemon.replies import Reply, encode, encode_acks, error

__all__ = ["MAX_LINE", "WINDOW", "Backend", "Connection", "Reply", "Slot", "error"]

log = logging.getLogger(__name__)

# SPEC §3: a request line is at most 1 MiB.
MAX_LINE: Final = 1 << 20
# Events one connection may have read and not yet had answered before it stops reading.
# A pipelining client otherwise runs far ahead of the journal, and every event in flight is
# an object the garbage collector walks again and again (it cost more than parsing did);
# a few reads' worth keeps the journal thread's batches large.
WINDOW: Final = 2048
# The C scanner json.loads runs after its decoding and blank skipping: one value from an index.
_scan_once: Final = json.scanner.make_scanner(cast(Any, json.JSONDecoder()))
_BLANKS: Final = " \t\r"  # JSON's blanks besides the newline that ends a line
_EMPTY: Final = "empty request line: expected one JSON object"


class _Batch:
    """The events of consecutive request lines of one read, submitted together."""

    __slots__ = ("conn", "events", "now", "now_text")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.events: list[Event] = []
        self.now = time.time()  # SPEC §3.1: `time` defaults to the time of intake
        self.now_text = repr(self.now)  # as json writes a finite float

    def flush(self) -> None:
        if self.events:
            self.conn._submit(self.events)
            self.events = []


class Backend(Protocol):
    """What the protocol needs from the daemon."""

    closing: bool

    def is_allowed(self, uid: int) -> bool: ...
    def is_congested(self) -> bool: ...
    def watch_congestion(self, conn: Connection) -> None: ...
    def submit_events(self, events: list[Event], done: Callable[[list[Reply]], None]) -> None: ...
    def call(self, op: str, doc: dict[str, Any], conn: Connection) -> Awaitable[Reply]: ...
    def forget(self, conn: Connection) -> None: ...


class Slot:
    """A reply position on one connection; filled in whatever order work completes."""

    __slots__ = ("data",)

    def __init__(self, data: bytes | None = None) -> None:
        self.data = data


class Connection(asyncio.Protocol):
    """One client connection: splits lines, dispatches, writes replies strictly in order."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._discarding = False
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
        self.backend.forget(self)

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
        buf = self._buf
        if self._discarding:  # the rest of a line already answered with too_large
            end = buf.find(b"\n")
            if end < 0:
                buf.clear()
                return
            del buf[: end + 1]
            self._discarding = False
        complete = buf.rfind(b"\n") + 1
        used = self._handle_lines(bytes(buf[:complete])) if complete else 0
        del buf[:used]
        if used == complete and len(buf) > MAX_LINE:
            self._discarding = True
            buf.clear()
            self._push(error("too_large", f"request line longer than {MAX_LINE} bytes"))

    def _handle_lines(self, data: bytes) -> int:
        """Answer or queue the lines of ``data`` (each ends with a newline); the bytes used,
        fewer than all when congestion stops intake at an event line.

        Decoded once and parsed in place (one scanner call per line, no copies): a line
        that is not simply an object alone on its line is left to `_handle_line`, which
        answers as json.loads would."""
        try:
            text = data.decode("utf-8", "surrogatepass")  # what json.loads picks for "{"
        except UnicodeDecodeError:
            return self._handle_raw(data)
        batch = _Batch(self)
        scan, find, size = _scan_once, text.find, len(text)
        now, now_text = batch.now, batch.now_text
        pos = 0
        while pos < size:
            nl = find("\n", pos)
            doc: Any = None
            if text[pos] == "{":
                try:
                    doc, end = scan(text, pos)
                except (StopIteration, ValueError, RecursionError):
                    doc = None
                else:
                    if end > nl or (end != nl and text[end:nl].strip(_BLANKS)):
                        doc = None  # an object across lines, or extra data
            if doc is None:
                ok = self._handle_line(text[pos:nl].encode("utf-8", "surrogatepass"), batch)
            elif batch.events and type(doc) is dict and doc.get("op", "event") == "event":
                # The usual line, inline: an event joining a batch already let through
                # (not closing, not congested: neither changes within one read).
                try:
                    batch.events.append(validate_request(doc, text[pos : end - 1], now, now_text))
                except EventError as exc:
                    self._refuse(batch, error("invalid_event", str(exc), field=exc.field))
                ok = True
            else:
                ok = self._handle_doc(doc, text, pos, end, batch)
            if not ok:
                batch.flush()
                return len(text[:pos].encode("utf-8", "surrogatepass"))
            pos = nl + 1
        batch.flush()
        return len(data)

    def _handle_raw(self, data: bytes) -> int:
        """`_handle_lines` for data that is not UTF-8 throughout: line by line."""
        batch = _Batch(self)
        start = 0
        while start < len(data):
            end = data.index(b"\n", start)
            if not self._handle_line(data[start:end], batch):
                break
            start = end + 1
        batch.flush()
        return start

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

    def _handle_line(self, line: bytes, batch: _Batch) -> bool:
        """Answer or queue one request line; False when it must wait (congestion)."""
        if line[:1] != b"{" and not line.strip():
            return self._refuse(batch, error("bad_json", _EMPTY))
        try:
            doc = json.loads(line)
        except (UnicodeDecodeError, ValueError) as exc:
            return self._refuse(batch, error("bad_json", f"request is not valid JSON: {exc}"))
        except RecursionError:
            return self._refuse(batch, error("bad_json", "request is nested too deeply"))
        if not isinstance(doc, dict):
            message = f"request must be a JSON object, got {type(doc).__name__}"
            return self._refuse(batch, error("bad_json", message))
        if line[:1] != b"{" or line[1:2] == b"\0":
            return self._handle_request(doc, None, batch)
        text = line.decode("utf-8", "surrogatepass")  # parsed: an object in UTF-8
        return self._handle_request(doc, text.rstrip()[:-1], batch)

    def _handle_doc(self, doc: Any, text: str, start: int, end: int, batch: _Batch) -> bool:
        """A request parsed from ``text[start:end]``."""
        if type(doc) is not dict:
            message = f"request must be a JSON object, got {type(doc).__name__}"
            return self._refuse(batch, error("bad_json", message))
        return self._handle_request(doc, text[start : end - 1], batch)

    def _handle_request(self, doc: dict[str, Any], head: str | None, batch: _Batch) -> bool:
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

    def _refuse(self, batch: _Batch, reply: Reply) -> bool:
        batch.flush()  # its replies come first
        self._push(reply)
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
