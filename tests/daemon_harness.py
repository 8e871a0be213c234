"""Test harness: a real daemon process on a short-path tree, driven over its real socket."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEADLINE = 30.0  # seconds any single fact may take to appear on a loaded 2-core CI machine


def make_tree(
    callbacks: Mapping[str, str],
    conf: str,
    qbconf_extra: str = "",
    root: Path | None = None,
) -> Path:
    """A QBDIR under /tmp (short, for the socket path) with callback/ and etc/qb.conf."""
    root = root or Path(tempfile.mkdtemp(prefix="qbt", dir="/tmp"))
    cbdir = root / "callback"
    cbdir.mkdir(parents=True, exist_ok=True)
    for name, text in callbacks.items():
        (cbdir / name).write_text(text)
    (cbdir / "callbacks.conf").write_text(conf)
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc" / "qb.conf").write_text(
        "supervisor_universal_callback_path = $QBDIR/callback\n"
        "supervisor_callback_timeout = 20\n"
        "supervisor_callback_kill_grace = 1\n" + qbconf_extra
    )
    return root


class Daemon:
    """A `qbsupervisor serve` subprocess with a datagram socket standing in for systemd."""

    def __init__(self, root: Path, env: Mapping[str, str] | None = None, loop: str = "asyncio"):
        self.root = root
        self.conf = root / "etc" / "qb.conf"
        self.sock = str(root / "run" / "callbacks.sock")
        self.notify_path = str(root / "notify.sock")
        self.extra_env = dict(env or {})
        self.loop = loop
        self.proc: subprocess.Popen[bytes] | None = None
        self.notify: socket.socket | None = None
        self.messages: list[str] = []
        self.extra_args: list[str] = []

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "LISTEN_"))}
        env.update(QBDIR=str(self.root), NOTIFY_SOCKET=self.notify_path, **self.extra_env)
        return env

    def start(self, wait_ready: bool = True, **popen: Any) -> Daemon:
        if self.notify is None:
            if os.path.exists(self.notify_path):
                os.unlink(self.notify_path)
            self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.notify.bind(self.notify_path)
        self.messages = []
        cmd = [sys.executable, "-m", "supervisord", "serve", "--config", str(self.conf),
               "--loop", self.loop, *self.extra_args]  # fmt: skip
        self.log = open(self.root / "daemon.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd, env=self.env(), stdout=self.log, stderr=subprocess.STDOUT, **popen
        )
        if wait_ready:
            self.wait_message("READY=1")
        return self

    def wait_message(self, wanted: str, timeout: float = DEADLINE) -> list[str]:
        """Block until a notify datagram containing `wanted` arrives (a fact, not a sleep)."""
        assert self.notify is not None
        end = time.monotonic() + timeout
        while True:
            for i, msg in enumerate(self.messages):
                if wanted in msg.split("\n"):
                    del self.messages[: i + 1]
                    return msg.split("\n")
            left = end - time.monotonic()
            exited = self.proc is not None and self.proc.poll() is not None
            if exited and self._drain_notify():
                continue
            if left <= 0 or exited:
                raise AssertionError(f"no {wanted!r} from the daemon; log:\n{self.read_log()}")
            self.notify.settimeout(min(left, 0.5))
            try:
                self.messages.append(self.notify.recv(65536).decode())
            except TimeoutError:
                continue

    def _drain_notify(self) -> bool:
        """Collect datagrams already queued (the daemon may have exited after sending)."""
        assert self.notify is not None
        self.notify.setblocking(False)
        got = False
        try:
            while True:
                self.messages.append(self.notify.recv(65536).decode())
                got = True
        except BlockingIOError:
            return got
        finally:
            self.notify.setblocking(True)

    def read_log(self) -> str:
        path = self.root / "daemon.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def connect(self) -> Client:
        return Client(self.sock)

    def request(self, doc: dict[str, Any]) -> dict[str, Any]:
        with self.connect() as c:
            return c.request(doc)

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = DEADLINE) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.log.close()
        return code

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.log.close()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()
        if self.notify is not None:
            self.notify.close()
            self.notify = None


class Client:
    """A blocking NDJSON client over the real Unix socket."""

    def __init__(self, path: str, timeout: float = DEADLINE) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.file = self.sock.makefile("rb")

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self) -> dict[str, Any]:
        line = self.file.readline()
        if not line:
            raise EOFError("daemon closed the connection")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def request(self, doc: dict[str, Any]) -> dict[str, Any]:
        self.send_raw(json.dumps(doc).encode() + b"\n")
        return self.read()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def event(name: str, type_: str = "job", job: int = 1, **fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"op": "event", "name": name, "type": type_, "job": {"id": job}}
    doc.update(fields)
    return doc


def wait_for_file(path: Path, timeout: float = DEADLINE) -> str:
    """Return the file's text once it exists and is non-empty (written by a callback)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists() and path.stat().st_size:
            return path.read_text()
        time.sleep(0.02)  # polling a file a child writes; the fact is the file itself
    raise AssertionError(f"{path} did not appear")


def cleanup(root: Path) -> Iterator[None]:
    yield
    shutil.rmtree(root, ignore_errors=True)
