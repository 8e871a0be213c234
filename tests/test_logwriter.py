"""The .cb log writer thread: order, flush, and surviving what it cannot write."""

from __future__ import annotations

import asyncio
import fcntl
import os
from pathlib import Path
from typing import Any, cast

import pytest

from supervisord.run.output import LogWriter, OutputSink, PipeDrain


async def test_appends_in_order_creating_the_directory_and_flush_waits_for_them(
    tmp_path: Path,
) -> None:
    writer = LogWriter()
    path = tmp_path / "job" / "1000" / "1234" / "1234.cb"
    other = tmp_path / "global.cb"
    for n in range(50):
        writer.append(str(path), b"line %d\n" % n)
        writer.append(str(other), b"other %d\n" % n)
    await writer.flush()
    assert path.read_bytes() == b"".join(b"line %d\n" % n for n in range(50))
    assert other.read_bytes().count(b"\n") == 50


async def test_a_failing_write_is_logged_and_the_writer_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    writer = LogWriter()
    blocked = tmp_path / "file"
    blocked.write_text("a file where a directory should be")
    writer.append(str(blocked / "x.cb"), b"lost\n")  # OSError: not a directory
    writer.append(str(tmp_path / "y.cb"), cast(Any, "not bytes"))  # a bug: TypeError
    writer.append(str(tmp_path / "z.cb"), b"kept\n")
    await writer.flush()  # resolves: the thread is alive
    assert (tmp_path / "z.cb").read_bytes() == b"kept\n"
    messages = [r.getMessage() for r in caplog.records]
    assert any("cannot write callback log" in m and "x.cb" in m for m in messages)
    assert any("callback log writer failed" in m and "y.cb" in m for m in messages)


async def test_flush_without_appends_returns_at_once() -> None:
    await LogWriter().flush()


async def test_close_writes_what_is_queued_and_a_later_append_starts_again(
    tmp_path: Path,
) -> None:
    writer = LogWriter()
    path = tmp_path / "a.cb"
    for n in range(100):
        writer.append(str(path), b"%d\n" % n)
    writer.close()  # returns once the queue is written
    assert path.read_bytes().count(b"\n") == 100
    writer.append(str(path), b"again\n")
    await writer.flush()
    assert path.read_bytes().endswith(b"99\nagain\n")
    writer.close()


async def test_read_available_takes_what_is_in_a_pipe_still_held_open(tmp_path: Path) -> None:
    """When a callback exits but what it left running holds its output pipe, the run's
    result must not miss what the callback printed: it is taken without waiting for EOF,
    and the pipe is still read afterwards."""
    writer = LogWriter()
    path = tmp_path / "1234.cb"
    sink = OutputSink(str(path), lambda: b"=== header\n", 1 << 20, writer)
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 1 << 20)
    os.set_blocking(read_end, False)
    drain = PipeDrain(asyncio.get_running_loop(), read_end, sink)
    try:
        os.write(write_end, b"x" * 200_000)  # more than one read's worth
        drain.read_available()  # no turn of the loop in between
        assert sink.kept == 200_000 and not drain.eof.done()
        os.write(write_end, b"later\n")
        os.close(write_end)
        write_end = -1
        await asyncio.wait_for(drain.eof, 10)
    finally:
        if write_end >= 0:
            os.close(write_end)
        drain.close()
    await writer.flush()
    assert path.read_bytes() == b"=== header\n" + b"x" * 200_000 + b"later\n"
