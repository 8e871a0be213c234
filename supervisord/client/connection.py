"""One connection to the intake socket: one JSON line out, one JSON line back."""

from __future__ import annotations

import contextlib
import json
import queue
import socket
import threading
from collections.abc import Generator, Iterable, Iterator
from types import TracebackType
from typing import Any, Final

from supervisord.core.errors import QbError

# How the connect errno reads to an administrator; anything else falls back to strerror.
_REASONS: Final[dict[type[OSError], str]] = {
    FileNotFoundError: "no socket file there",
    ConnectionRefusedError: "connection refused: the socket file exists but nobody listens",
    PermissionError: "permission denied",
}


class Unreachable(QbError):
    """The daemon's socket could not be connected to; ``reason`` says why in words."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class ProtocolError(QbError):
    """The connection broke, timed out or carried something that is not a reply."""


class _Closed(ProtocolError):
    """The daemon closed the connection where a reply was due."""


def _encode(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, separators=(",", ":"), ensure_ascii=False) + "\n").encode()


class Connection:
    """One connection to the daemon; requests may be sent one by one or pipelined.

    The low-level building block of :class:`supervisord.client.Client` and the command line:
    no retries, no event ids. Most programs want ``Client``.
    """

    def __init__(self, path: str, timeout: float | None) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(path)
        except OSError as exc:
            self._sock.close()
            reason = _REASONS.get(type(exc)) or exc.strerror or str(exc)
            raise Unreachable(path, reason) from exc
        self._rfile = self._sock.makefile("rb")

    def __enter__(self) -> Connection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection; a pipeline still sending gets an error and stops."""
        with contextlib.suppress(OSError):  # the peer may have disconnected already
            self._sock.shutdown(socket.SHUT_RDWR)
        self._rfile.close()
        self._sock.close()

    def settimeout(self, timeout: float | None) -> None:
        """Change how long sends and reads may block from now on."""
        self._sock.settimeout(timeout)

    def request(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Send one request and return its reply."""
        try:
            self._sock.sendall(_encode(doc))
        except OSError as exc:
            raise ProtocolError(f"sending to {self.path} failed: {exc}") from exc
        return self._read_reply()

    def pipeline(self, docs: Iterable[dict[str, Any]]) -> Generator[dict[str, Any], None, None]:
        """Send every doc from a thread while yielding the replies, in order.

        Sending and reading at once means a batch larger than the socket buffers
        never deadlocks against a daemon that is blocked writing replies. Leaving
        the iteration early closes the client: replies still owed would desynchronise it.
        """
        sent: queue.SimpleQueue[bool | BaseException] = queue.SimpleQueue()
        sender = threading.Thread(
            target=self._send_all, args=(docs, sent), name="qb-client-send", daemon=True
        )
        sender.start()
        finished = False
        try:
            # One False per doc sent, then True at the end: a reply is read only
            # once its request is on the wire, so the reader never waits for nothing.
            while (item := sent.get()) is not True:
                if isinstance(item, OSError):
                    raise ProtocolError(f"sending to {self.path} failed: {item}") from item
                if isinstance(item, BaseException):
                    raise item  # from the caller's own iterable
                yield self._read_reply()
            finished = True
        finally:
            if not finished:
                self.close()  # unblocks a sendall the abandoned batch may have left pending
            sender.join()

    def _send_all(
        self,
        docs: Iterable[dict[str, Any]],
        sent: queue.SimpleQueue[bool | BaseException],
    ) -> None:
        try:
            for doc in docs:
                self._sock.sendall(_encode(doc))
                sent.put(False)
        except BaseException as exc:  # handed to the reading thread, which raises it
            sent.put(exc)
            return
        sent.put(True)

    def stream(self) -> Iterator[dict[str, Any]]:
        """Every further line the daemon sends (``tail``, ``subscribe``), until it closes."""
        while True:
            try:
                yield self._read_reply()
            except _Closed:
                return

    def _read_reply(self) -> dict[str, Any]:
        try:
            line = self._rfile.readline()
        except TimeoutError as exc:
            raise ProtocolError(f"no reply from {self.path} in time") from exc
        except OSError as exc:
            raise ProtocolError(f"reading from {self.path} failed: {exc}") from exc
        if not line:
            raise _Closed(f"{self.path}: the daemon closed the connection")
        try:
            reply = json.loads(line)
        except ValueError as exc:
            raise ProtocolError(f"{self.path}: reply is not JSON: {line[:200]!r}") from exc
        if not isinstance(reply, dict):
            raise ProtocolError(f"{self.path}: reply is not a JSON object: {line[:200]!r}")
        return reply
