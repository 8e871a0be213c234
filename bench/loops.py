"""Which loop `--loop auto` picks, read from the daemon's own startup log line."""

from __future__ import annotations

import functools
import re

from common import Tree


@functools.cache
def auto_loop() -> str:
    """Start `serve --loop auto` once and read `loop=<module>` from its log."""
    tree = Tree(
        "auto",
        {"cb.pl": "exit 0;\n"},
        "cb.pl = submit-job-self\n",
        supervisor_callback_log_level="info",
    )
    with tree as daemon:
        log = (daemon.root / "daemon.log").read_text(errors="replace")
    found = re.search(r"loop=(\S+)", log)
    return "uvloop" if found and "uvloop" in found.group(1) else "asyncio"
