"""Time triggers through a real daemon: what the clock has armed survives a quiet stop."""

from __future__ import annotations

import time
from collections.abc import Callable

from tests.daemon_harness import Daemon, wait_for_file

QUBE_EPOCH = 946702800  # SPEC §2: Qube time = Unix time - this

MARK = (
    "import os, pathlib\n"
    "root = pathlib.Path(os.environ['QBDIR'])\n"
    "(root / (os.environ['QB_CALLBACK'] + '.ran')).write_text(os.environ['QB_EVENT_TYPE'])\n"
)


def test_globaltime_that_passes_during_a_quiet_stop_fires_at_the_next_start(
    daemon_factory: Callable[..., Daemon],
) -> None:
    """Start, ping, stop before T with no event at all; T passes while down; start again:
    the term armed at load must be in the journal, so it fires once, late."""
    at = time.time() + 2.0
    t = int(at - QUBE_EPOCH) + 1
    d = daemon_factory({"late.py": MARK}, f"late.py = globaltime-{t}\n")
    assert d.request({"op": "ping"})["ok"] is True
    assert d.stop() == 0
    assert time.time() < t + QUBE_EPOCH, "the machine was too slow to stop the daemon before T"
    while time.time() <= t + QUBE_EPOCH + 0.2:  # the fact waited for is the wall clock itself
        time.sleep(0.05)
    d.start()
    assert wait_for_file(d.root / "late.py.ran") == "globaltime"
    assert f"time trigger fired trigger=globaltime-{t}" in d.read_log()
