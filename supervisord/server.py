"""The intake socket protocol: NDJSON requests, one reply line each, in order (SPEC §3)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol, cast

from supervisord.errors import EventError
from supervisord.events import validate_event
from supervisord.model import Event

log = logging.getLogger(__name__)

# SPEC §3: a request line is at most 1 MiB.
MAX_LINE: Final = 1 << 20
Reply = dict[str, Any]


def error(code: str, message: str, **extra: Any) -> Reply:
    return {"ok": False, "error": {"code": code, "message": message}, **extra}


_dumps: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_string: Final = json.encoder.encode_basestring  # what _dumps does to a str
_decode: Final = json.JSONDecoder().decode
_ACK_KEYS: Final = ("ok", "seq", "event_id", "duplicate", "matched")
_ACK: Final = '{"ok":true,"seq":%d,"event_id":%s,"duplicate":%s,"matched":%s}\n'


def encode(reply: Reply) -> bytes:
    return (_dumps(reply) + "\n").encode()


def encode_ack(reply: Reply) -> bytes:
    """`encode` for any reply, with a shortcut for the event acknowledgement (SPEC §3.1):
    the same bytes, without walking the dict."""
    if tuple(reply) != _ACK_KEYS or reply["ok"] is not True or type(reply["seq"]) is not int:
        return encode(reply)
    matched, eid = reply["matched"], reply["event_id"]
    names = "[]" if not matched else _dumps(matched)
    yes = "true" if reply["duplicate"] is True else "false" if reply["duplicate"] is False else ""
    if not yes or type(eid) is not str:
        return encode(reply)
    return (_ACK % (reply["seq"], _string(eid), yes, names)).encode()


def parse_line(line: bytes) -> tuple[Any, str | None]:
    """json.loads(line), minus its encoding sniffing for the usual line (an object in
    UTF-8), and the text parsed when it is that line."""
    if line[:1] == b"{" and line[1:2] != b"\0":
        text = line.decode("utf-8", "surrogatepass")  # what json.loads picks
        return _decode(text), text
    return json.loads(line), None


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

    def _process(self) -> None:
        """Handle the complete lines buffered. While the daemon is congested, an event line
        and everything after it wait here (reading pauses) until `resume` comes back to
        them; requests before it are still answered."""
        if "congestion" in self._paused_by:
            return
        events: list[tuple[Event, Slot]] = []
        start = 0
        stopped = False
        while not stopped:
            end = self._buf.find(b"\n", start)
            if end < 0:
                break
            if self._discarding:
                self._discarding = False
            else:
                stopped = not self._handle_line(bytes(self._buf[start:end]), events)
            if not stopped:
                start = end + 1
        del self._buf[:start]
        if not stopped and len(self._buf) > MAX_LINE and not self._discarding:
            self._discarding = True
            self._push(error("too_large", f"request line longer than {MAX_LINE} bytes"))
        if self._discarding:
            self._buf.clear()
        self._flush_events(events)

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

    def _handle_line(self, line: bytes, events: list[tuple[Event, Slot]]) -> bool:
        """Answer or queue one request line; False when it must wait (congestion)."""
        if line[:1] != b"{" and not line.strip():
            self._push(error("bad_json", "empty request line: expected one JSON object"))
            return True
        try:
            doc, text = parse_line(line)
        except (UnicodeDecodeError, ValueError) as exc:
            self._push(error("bad_json", f"request is not valid JSON: {exc}"))
            return True
        if not isinstance(doc, dict):
            self._push(
                error("bad_json", f"request must be a JSON object, got {type(doc).__name__}")
            )
            return True
        op = doc.get("op", "event")
        if self.backend.closing:
            self._push(error("unavailable", "the daemon is shutting down"))
        elif op == "event":
            if self._is_congested():
                return False  # this line and the rest wait for `resume`
            self._take_event(doc, text, events)
        else:
            self._flush_events(events)
            slot = Slot()
            self._slots.append(slot)
            self._spawn(self._call(op, doc, slot))
        return True

    def _take_event(
        self, doc: dict[str, Any], text: str | None, events: list[tuple[Event, Slot]]
    ) -> None:
        try:
            event = validate_event(doc, time.time(), text)
        except EventError as exc:
            self._push(error("invalid_event", str(exc), field=exc.field))
            return
        slot = Slot()
        self._slots.append(slot)
        events.append((event, slot))

    def _flush_events(self, events: list[tuple[Event, Slot]]) -> None:
        if not events:
            return
        slots = [s for _, s in events]
        batch = [e for e, _ in events]
        events.clear()

        def done(replies: list[Reply]) -> None:
            for slot, reply in zip(slots, replies, strict=True):
                slot.data = encode_ack(reply)
            self._write_ready()

        self.backend.submit_events(batch, done)

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
