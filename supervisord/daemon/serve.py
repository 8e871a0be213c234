"""`qbsupervisor serve`: load the configuration, set up logging, run the daemon on a loop."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
from collections.abc import Coroutine
from typing import Any, Final

from supervisord.core.errors import ConfigError, ConfigErrors, StoreError
from supervisord.daemon.limits import raise_nofile
from supervisord.daemon.logsetup import setup_logging
from supervisord.daemon.service import Daemon, load_all
from supervisord.journal.backend import is_shared, member_name

log = logging.getLogger(__name__)

# Seconds a thread holds the GIL before another may take it (CPython's default is 0.005).
SWITCH_INTERVAL: Final = 0.001
# Allocations between young-generation collections (CPython's default is 700). Pipelined
# intake keeps thousands of events in flight between the loop and the journal thread; at
# 700 the collector walks them again and again: 1.5-3 µs per event measured with
# gc.callbacks under bench/b_intake.py, more than validating an event costs. Objects
# without cycles are still freed at once; only cyclic garbage lives a little longer.
GC_THRESHOLD: Final = (50_000, 20, 20)


def serve(qbconf_path: str, *, loop: str = "auto", log_level: str | None = None,
          log_format: str = "text") -> int:  # fmt: skip
    """`qbsupervisor serve`: 0 after a clean stop, 78 on bad configuration at start."""
    try:
        settings, loaded, policies = load_all(qbconf_path)
    except ConfigErrors as exc:
        for err in exc.errors:
            print(f"qbsupervisor: {err}", file=sys.stderr)
        return 78
    member = member_name(settings) if is_shared(settings) else None
    setup_logging(log_level or settings.log_level, log_format, member)
    # posix_spawn releases the GIL while the child execs; getting it back from the busy
    # sequencer thread otherwise waits out the 5 ms default switch interval, which cut the
    # spawn rate by half in bench/b_e2e.py. 1 ms keeps the loop thread responsive.
    sys.setswitchinterval(SWITCH_INTERVAL)
    gc.set_threshold(*GC_THRESHOLD)
    raise_nofile()  # before the fork server and the journal start
    for warning in loaded.warnings:
        log.warning("%s", warning)
    daemon = Daemon(os.path.abspath(qbconf_path), settings, loaded, policies)
    try:
        return run_loop(daemon.main(), loop)
    except (ConfigError, StoreError) as exc:
        log.error("cannot start: %s", exc)
        print(f"qbsupervisor: {exc}", file=sys.stderr)
        return 78


def run_loop(main: Coroutine[Any, Any, int], kind: str) -> int:
    if kind in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise ConfigError("--loop", None, "uvloop is not installed") from None
        else:
            return int(uvloop.run(main))
    return int(asyncio.run(main))
