"""Logging for the daemon: key=value text on stderr, or one JSON object per line."""

from __future__ import annotations

import json
import logging
import os
import sys
import time


class JsonFormatter(logging.Formatter):
    """One JSON object per record, for log shippers; with the fleet member's name."""

    def __init__(self, member: str | None = None) -> None:
        super().__init__()
        self.member = member

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.member is not None:
            doc["member"] = self.member
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def setup_logging(level: str, fmt: str, member: str | None = None) -> None:
    """Configure the root logger once; journald adds its own timestamp under systemd. A
    fleet member (SPEC §8) names itself on every line: `member=NAME` after the level."""
    handler = logging.StreamHandler(sys.stderr)
    # %-style: a literal % in a member name must not be read as a field
    who = "" if member is None else f"member={member.replace('%', '%%')} "
    if fmt == "json":
        handler.setFormatter(JsonFormatter(member))
    elif os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(logging.Formatter(f"%(levelname)s {who}%(name)s: %(message)s"))
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s {who}%(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
