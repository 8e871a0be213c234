"""The ``qb`` channel: fd 3 of a callback, carrying its actions and jobinfo requests."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Iterable, Mapping
from typing import Any, Final

from supervisord.core.runtypes import Action, JobInfo
from supervisord.run.process import Readers

log = logging.getLogger(__name__)

# A request line longer than this is garbage, not a qb call; it is dropped.
_MAX_LINE: Final = 1 << 20
# More actions than this from one run is a runaway loop; the rest are dropped.
_MAX_ACTIONS: Final = 10_000
_RECV_SIZE: Final = 65536
_JOBINFO_KEYS: Final = {"-id": "id", "-pgrp": "pgrp"}


def _fallback(obj: object) -> object:
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, tuple | set | frozenset):
        return list(obj)
    return str(obj)


# One encoder for every line: json.dumps with any option builds a new one per call.
_ENCODE: Final = json.JSONEncoder(default=_fallback, separators=(",", ":")).encode


def to_json(value: Any) -> bytes:
    """One JSON line; Mappings that are not dicts and other odd values still encode."""
    return _ENCODE(value).encode() + b"\n"


def local_jobinfo(jobs: Iterable[Mapping[str, Any]]) -> JobInfo:
    """A jobinfo provider answering from the jobs a run already knows (its stdin docs)."""
    known = [dict(job) for job in jobs if isinstance(job, Mapping) and "id" in job]

    async def answer(by: str, value: Any) -> list[dict[str, Any]]:
        key = _JOBINFO_KEYS[by]
        seen: set[object] = set()
        found = []
        for job in known:
            if job.get(key) == value and job["id"] not in seen:
                seen.add(job["id"])
                found.append(job)
        return found

    return answer


class Channel:
    """Our end of a callback's fd 3 (made non-blocking by the caller): sends what the
    start left of the hello line, collects actions in order, answers jobinfo requests.
    Nothing the callback writes here can raise into the run."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        hello: bytes,
        answer: JobInfo,
        context: str,
        readers: Readers | None = None,
    ) -> None:
        self._loop = loop
        self._readers: Readers = loop if readers is None else readers
        self._sock = sock
        self._answer = answer
        self._context = context  # "seq=17 job=1234 run=12 callback=x.py pid=4242", for logs
        self._buf = bytearray()
        self._pending = bytearray()
        self._writer: asyncio.Task[None] | None = None
        self._replying: asyncio.Task[None] | None = None
        self._reading = True
        self._complaints = 0
        self.actions: list[Action] = []
        self._readers.add_reader(sock.fileno(), self._on_readable)
        if hello:  # what the start did not send already
            self._send(hello)

    async def aclose(self) -> tuple[Action, ...]:
        """Take what the (exited) callback left in the socket, stop, return the actions."""
        if self._sock.fileno() < 0:
            return tuple(self.actions)
        while self._reading and self._read_once():
            pass
        self._stop_reading()
        for task in (self._replying, self._writer):
            if task is not None:
                task.cancel()
        for task in (self._replying, self._writer):
            if task is not None:
                await asyncio.gather(task, return_exceptions=True)
        self._sock.close()
        return tuple(self.actions)

    def abandon(self) -> None:
        """Close at once, without collecting anything (the run could not start)."""
        self._stop_reading()
        if self._writer is not None:
            self._writer.cancel()
        self._sock.close()

    def _on_readable(self) -> None:
        self._read_once()

    def _read_once(self) -> bool:
        """One recv; False when nothing more is there now (or ever)."""
        try:
            data = self._sock.recv(_RECV_SIZE)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:
            self._stop_reading()
            return False
        self._feed(data)
        return True

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._readers.remove_reader(self._sock.fileno())

    def _feed(self, data: bytes) -> None:
        self._buf += data
        while (end := self._buf.find(b"\n")) >= 0:
            line = bytes(self._buf[:end])
            del self._buf[: end + 1]
            self._handle(line)
        if len(self._buf) > _MAX_LINE:
            self._complain("line longer than %d bytes dropped", _MAX_LINE)
            self._buf.clear()

    def _handle(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            msg = json.loads(line)
        except ValueError:
            self._complain("not JSON: %.80r", line)
            return
        if not isinstance(msg, dict):
            self._complain("not an object: %.80r", line)
        elif msg.get("op") == "jobinfo":
            self._start_jobinfo(msg.get("by"), msg.get("value"))
        elif "op" in msg:
            self._send(to_json({"error": f"unknown op {msg['op']!r}"}))
        else:
            self._add_action(msg)

    def _add_action(self, msg: dict[str, Any]) -> None:
        try:
            action = Action(str(msg.get("action")), str(msg.get("target")))
        except ValueError as exc:
            self._complain("%s", exc)
            return
        if len(self.actions) >= _MAX_ACTIONS:
            self._complain("more than %d actions; the rest are dropped", _MAX_ACTIONS)
            return
        self.actions.append(action)

    def _start_jobinfo(self, by: object, value: object) -> None:
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if by not in _JOBINFO_KEYS or not isinstance(value, int):
            self._complain("bad jobinfo request by=%r value=%r", by, value)
            self._send(b"[]\n")  # the callback is blocked waiting for a line
            return
        previous = self._replying
        self._replying = self._loop.create_task(self._reply(previous, str(by), value))

    async def _reply(self, previous: asyncio.Task[None] | None, by: str, value: int) -> None:
        try:
            jobs = await self._answer(by, value)
        except Exception:  # the provider is the daemon's registry: contain, answer, go on
            log.exception("jobinfo failed %s by=%s value=%s", self._context, by, value)
            jobs = []
        if previous is not None:
            await asyncio.gather(previous, return_exceptions=True)  # replies stay in order
        self._send(to_json(jobs))

    def _send(self, data: bytes) -> None:
        if self._writer is not None:
            self._pending += data
            return
        try:
            sent = self._sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            return  # the callback closed fd 3 or exited: nobody to answer
        if sent < len(data):
            self._pending += data[sent:]
            self._writer = self._loop.create_task(self._flush())

    async def _flush(self) -> None:
        try:
            while self._pending:
                chunk = bytes(self._pending)
                self._pending.clear()
                await self._loop.sock_sendall(self._sock, chunk)
        except OSError:
            self._pending.clear()
        finally:
            self._writer = None

    def _complain(self, fmt: str, *args: object) -> None:
        self._complaints += 1
        if self._complaints == 1:  # once per run: a chatty callback must not flood the log
            log.warning("bad qb channel data %s " + fmt, self._context, *args)
