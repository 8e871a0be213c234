"""The intake baseline: a parse-only NDJSON protocol server, no journal, one ack line per event.

The `protocol` server of our limits measurements (an asyncio.Protocol whose data_received
splits lines and json.loads each one), answering ``ok`` per line as the daemon answers
every event: what a Python server on this machine can take in at all, so the durable
daemon is judged as a ratio to it, measured in the same run. Run as a script:
``python rawintake.py SOCKET asyncio|uvloop`` prints READY and serves until SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


class LineProtocol(asyncio.Protocol):
    """Every complete line parsed; one ``ok`` line written per line, per chunk read."""

    def __init__(self) -> None:
        self.buf = b""
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.buf:
            data = self.buf + data
        lines = data.split(b"\n")
        self.buf = lines.pop()
        loads = json.loads
        for line in lines:
            loads(line)
        if lines and self.transport is not None:
            self.transport.write(b"ok\n" * len(lines))


async def serve(path: str) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_unix_server(LineProtocol, path)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print("READY", type(loop).__module__, flush=True)
    await stop.wait()
    server.close()


class RawIntake:
    """Context manager: the baseline server as a subprocess on a short socket path."""

    def __init__(self, loop: str) -> None:
        self.dir = tempfile.mkdtemp(prefix="qbr", dir="/tmp")
        self.sock = f"{self.dir}/r.sock"
        self.loop = loop
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> RawIntake:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, self.sock, self.loop], stdout=subprocess.PIPE
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith(b"READY"):
            self.proc.kill()
            raise RuntimeError(f"baseline intake server did not start: {line!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
            assert self.proc.stdout is not None
            self.proc.stdout.close()
        Path(self.sock).unlink(missing_ok=True)
        os.rmdir(self.dir)


def main() -> None:
    path, loop = sys.argv[1], sys.argv[2]
    if loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(serve(path))


if __name__ == "__main__":
    main()
