"""Finding the intake socket and talking to it: one JSON line out, one JSON line back."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import socket
import sys
import threading
from collections.abc import Generator, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, Final

from supervisord.core.errors import ConfigError, ConfigErrors, QbError
from supervisord.core.model import Settings
from supervisord.core.qbconf import parse_qbconf

DEFAULT_QBDIR: Final = "/usr/local/pfx/qube"  # Qube's own install prefix (SPEC §1.1)
ETC_QBCONF: Final = "/etc/qb.conf"  # where every Qube component looks first

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


class Client:
    """One connection to the daemon; requests may be sent one by one or pipelined."""

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

    def __enter__(self) -> Client:
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


def find_qbconf(
    args_config: str | None, env: Mapping[str, str], etc_path: str = ETC_QBCONF
) -> str | None:
    """``--config``, else ``$QB_CONF``, else ``/etc/qb.conf`` if it exists, else
    ``$QBDIR/etc/qb.conf`` if it exists, else None (SPEC §5)."""
    if args_config:
        return args_config
    if env.get("QB_CONF"):
        return env["QB_CONF"]
    qbdir_conf = os.path.join(env.get("QBDIR") or DEFAULT_QBDIR, "etc", "qb.conf")
    for candidate in (etc_path, qbdir_conf):
        if os.path.isfile(candidate):
            return candidate
    return None


def read_settings(qbconf: str, env: Mapping[str, str]) -> Settings:
    """qb.conf read as the daemon reads it; raises ConfigErrors."""
    try:
        with open(qbconf, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError as exc:
        reason = f"cannot read qb.conf: {exc.strerror}"
        raise ConfigErrors([ConfigError(qbconf, None, reason)]) from exc
    return parse_qbconf(text, qbconf, env, default_python=sys.executable)


def find_socket(
    args_socket: str | None, qbconf: str | None, env: Mapping[str, str]
) -> tuple[str, str]:
    """The socket path and how it was found, in words that follow "socket path".

    Raises ConfigErrors when the qb.conf it has to read is unreadable or invalid.
    """
    if args_socket:
        return args_socket, "given by --socket"
    if qbconf is not None:
        return read_settings(qbconf, env).event_socket, f"from supervisor_event_socket in {qbconf}"
    path = os.path.join(env.get("QBDIR") or DEFAULT_QBDIR, "run", "callbacks.sock")
    if not env.get("QBDIR") and not os.path.exists(path):
        found = _checkout_socket(env)
        if found is not None:
            return found
    return path, "is the default $QBDIR/run/callbacks.sock (no qb.conf found)"


def _checkout_socket(env: Mapping[str, str]) -> tuple[str, str] | None:
    """The socket of `make run` in the source checkout this package runs from, if it is live.

    Only consulted after every place SPEC §5 names came up empty, so that a new user's
    `.venv/bin/qbsupervisor emit ...` in a second terminal reaches the daemon `make run` started.
    """
    checkout = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    conf = os.path.join(checkout, "etc", "qb.conf")
    if not os.path.isfile(os.path.join(checkout, "pyproject.toml")) or not os.path.isfile(conf):
        return None
    try:
        path = read_settings(conf, {**env, "QBDIR": checkout}).event_socket
    except QbError:
        return None
    if not os.path.exists(path):
        return None
    return path, f"from {conf} with QBDIR={checkout} (the source checkout `make run` serves)"


def split_event_spec(spec: str) -> tuple[str, str]:
    """``failed-job`` -> (``failed``, ``job``): split at the first ``-``."""
    name, dash, type_ = spec.partition("-")
    if not (name and dash and type_):
        raise ValueError(f"expected NAME-TYPE such as complete-job, got {spec!r}")
    return name, type_


def parse_set(item: str) -> tuple[str, Any]:
    """``key=value``: the value as JSON when it parses, else as the string itself."""
    key, eq, text = item.partition("=")
    if not (key and eq):
        raise ValueError(f"--set expects key=value, got {item!r}")
    try:
        return key, json.loads(text)
    except ValueError:
        return key, text


def event_request(
    op: str, spec: str, job: int | None, sets: Iterable[str], fields: Mapping[str, Any]
) -> dict[str, Any]:
    """An ``event``/``match`` request from command-line pieces; ValueError names the
    bad one. ``sets`` go into ``job`` (``job`` wins over ``id=``); None fields are left out.
    """
    name, type_ = split_event_spec(spec)
    if job is None:
        raise ValueError("--job is required")
    job_doc = dict(parse_set(item) for item in sets) | {"id": job}
    doc: dict[str, Any] = {"op": op, "name": name, "type": type_, "job": job_doc}
    return doc | {key: value for key, value in fields.items() if value is not None}


Entry = tuple[int, dict[str, Any] | str]  # (line number, request, or why it cannot be sent)


def read_ndjson(lines: Iterable[str]) -> Iterator[Entry]:
    """Number the non-blank lines of an NDJSON stream and parse each."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except ValueError as exc:
            yield number, f"not JSON: {exc}"
            continue
        yield number, doc if isinstance(doc, dict) else "not a JSON object"


def send_entries(client: Client, entries: Iterable[Entry]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Pipeline the sendable entries; yield ``(number, reply)`` for every entry, in order.

    An entry that cannot be sent gets a local ``bad_json`` reply in its place.
    """
    order: queue.SimpleQueue[Entry] = queue.SimpleQueue()

    def docs() -> Iterator[dict[str, Any]]:
        for entry in entries:
            order.put(entry)  # before it is sent, so it is queued when its reply arrives
            if isinstance(entry[1], dict):
                yield entry[1]

    for reply in client.pipeline(docs()):
        number = yield from _until_sendable(order)
        yield number, reply
    yield from _until_sendable(order)


def _until_sendable(
    order: queue.SimpleQueue[Entry],
) -> Generator[tuple[int, dict[str, Any]], None, int]:
    """Yield local replies for the unsendable entries queued before the next sendable
    one; return that one's number (0 when none is left)."""
    while not order.empty():
        number, doc = order.get()
        if isinstance(doc, dict):
            return number
        yield number, {"ok": False, "line": number, "error": {"code": "bad_json", "message": doc}}
    return 0
