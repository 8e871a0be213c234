"""Fleet harness: member daemons as real subprocesses on one machine, sharing one PostgreSQL
journal and one callback directory, and direct reads of the fleet's tables for assertions.

Every member is a `tests.daemon_harness.Daemon` on a tree of its own (`<base>/<name>`: its
own qb.conf, state dir, logs and, for `all`/`intake`, socket); the callbacks are written once,
into the first member's tree, and every other member points its callback path there. A
callback finds the fleet's base directory as the parent of its `QBDIR`, so files it writes
there are shared by all members, and the last part of `QBDIR` names the member that ran it.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.daemon_harness import DEADLINE, Client, Daemon, make_tree
from tests.pgserver import wait_for

LEASE = 2.0  # seconds; short so that a kill -9 is redelivered well inside a test's deadline
ROLES = ("all", "executor", "intake")
RUN_STATES = ("pending", "claimed", "running", "finished", "retrying", "held")


@dataclass(slots=True)
class Member:
    """One member daemon of a fleet."""

    name: str
    role: str
    daemon: Daemon

    @property
    def root(self) -> Path:
        return self.daemon.root

    @property
    def sock(self) -> str:
        """The intake socket (only `all` and `intake` members bind one)."""
        return self.daemon.sock

    @property
    def pid(self) -> int:
        assert self.daemon.proc is not None
        return self.daemon.proc.pid

    def is_alive(self) -> bool:
        return self.daemon.proc is not None and self.daemon.proc.poll() is None

    def start(self) -> Member:
        """Start (again) and return once the daemon sent READY=1 (executors have no socket:
        the READY datagram is the fact for every role)."""
        self.daemon.start()
        return self

    def kill9(self) -> None:
        self.daemon.kill9()

    def request(self, doc: dict[str, Any]) -> dict[str, Any]:
        return self.daemon.request(doc)


class Fleet:
    """Members on one journal (a PostgreSQL URL, or `sqlite` for a lone baseline daemon)."""

    def __init__(
        self,
        journal: str,
        callbacks: Mapping[str, str],
        conf: str,
        *,
        lease: float = LEASE,
        extra: str = "",
        loop: str = "asyncio",
    ) -> None:
        self.journal = journal
        self.callbacks = dict(callbacks)
        self.conf = conf
        self.lease = lease
        self.extra = extra
        self.loop = loop
        self.base = Path(tempfile.mkdtemp(prefix="qbf", dir="/tmp"))
        self.cbdir: Path | None = None
        self.members: dict[str, Member] = {}

    def qbconf(self, name: str, role: str, extra: str) -> str:
        keys = (
            f"supervisor_callback_journal = {self.journal}\n"
            f"supervisor_callback_member = {name}\n"
            f"supervisor_callback_role = {role}\n"
            f"supervisor_callback_lease = {self.lease:g}\n"
        )
        if self.cbdir is not None:  # the first member's tree holds the one callback directory
            keys += f"supervisor_universal_callback_path = {self.cbdir}\n"
        return keys + self.extra + extra

    def add(
        self, role: str = "all", *, name: str = "", extra: str = "", start: bool = True
    ) -> Member:
        """A new member `m<N>` (or `name`) with its own tree; started unless start=False."""
        assert role in ROLES, role
        name = name or f"m{len(self.members) + 1}"
        assert name not in self.members, name
        root = self.base / name
        root.mkdir()
        first = self.cbdir is None
        text = self.qbconf(name, role, extra)
        make_tree(self.callbacks if first else {}, self.conf if first else "", text, root=root)
        if first:
            self.cbdir = root / "callback"
        member = Member(name, role, Daemon(root, loop=self.loop))
        self.members[name] = member
        return member.start() if start else member

    def path(self, name: str) -> Path:
        """A file in the base directory that every member's callbacks share."""
        return self.base / name

    def close(self) -> None:
        """Stop every member still running, then remove the trees."""
        for member in self.members.values():
            member.daemon.close()
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def db_name(text: str) -> str:
    """A database name from a test's name: lower case, [a-z0-9_], at most 63 bytes."""
    name = re.sub(r"[^a-z0-9_]+", "_", text.lower()).strip("_")
    return ("t_" + name)[:63]


class FleetDB:
    """Direct reads of a fleet's `qbcb_` tables with psycopg (autocommit): the assertions'
    view of the fleet, independent of what any member reports. Reconnects after an outage."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: Any = None

    def _fetch(self, sql: str, params: Iterable[Any]) -> tuple[list[str], list[tuple[Any, ...]]]:
        import psycopg

        for attempt in (1, 2):
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._conn = psycopg.connect(self.url, autocommit=True, connect_timeout=5)
            try:
                cur = self._conn.execute(sql, tuple(params))
                return [c.name for c in cur.description or ()], cur.fetchall()
            except psycopg.OperationalError:
                self._conn.close()  # the server went away: one fresh connection, one retry
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        return self._fetch(sql, params)[1]

    def dicts(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        names, rows = self._fetch(sql, params)
        return [dict(zip(names, row, strict=True)) for row in rows]

    def runs_by_state(self, where: str = "TRUE", params: Iterable[Any] = ()) -> dict[str, int]:
        """Run counts by state (`qbcb_runs.state`), only the states present."""
        rows = self.query(
            f"SELECT state, count(*) FROM qbcb_runs WHERE {where} GROUP BY state", params
        )
        return {str(state): int(n) for state, n in rows}

    def unfinished(self) -> int:
        return int(self.query("SELECT count(*) FROM qbcb_runs WHERE state != 'finished'")[0][0])

    def runs(self, where: str = "TRUE", params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        return self.dicts(
            "SELECT run_id, seq, event_id, callback, state, member, attempts, outcome"
            f" FROM qbcb_runs WHERE {where} ORDER BY run_id",
            params,
        )

    def members(self) -> list[dict[str, Any]]:
        return self.dicts(
            "SELECT member, role, host, pid, heartbeat, running, state FROM qbcb_members"
            " ORDER BY member"
        )

    def clock(self) -> float:
        """The database's wall clock (Unix seconds), the clock the members' heartbeats share."""
        return float(self.query("SELECT extract(epoch FROM clock_timestamp())")[0][0])

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# ------------------------------------------------------------------ events and records


def job_event(event_id: str, job: int, name: str = "complete") -> dict[str, Any]:
    return {"op": "event", "event_id": event_id, "name": name, "type": "job", "job": {"id": job}}


def stream(
    sock: str,
    docs: list[dict[str, Any]],
    on_reply: Callable[[int, dict[str, Any]], None] = lambda n, reply: None,
    *,
    chunk: int = 0,
    pace: float = 0.0,
) -> list[dict[str, Any]]:
    """Send `docs` on one connection from a thread (in chunks `pace` seconds apart, when
    given: a load shape, not a synchronisation) while reading every reply here, calling
    `on_reply(count, reply)` after each. Returns the replies read, in order."""
    data = [json.dumps(doc).encode() + b"\n" for doc in docs]
    step = chunk or len(data) or 1
    client = Client(sock, timeout=DEADLINE * 2)

    def send() -> None:
        with contextlib.suppress(OSError):
            for i in range(0, len(data), step):
                client.send_raw(b"".join(data[i : i + step]))
                if pace:
                    time.sleep(pace)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    replies: list[dict[str, Any]] = []
    try:
        for _ in docs:
            replies.append(client.read())
            on_reply(len(replies), replies[-1])
    finally:
        sender.join(DEADLINE)
        client.close()
    return replies


def records(path: Path) -> list[list[str]]:
    """The whitespace-split lines a callback appended to `path` (O_APPEND, one write each)."""
    if not path.exists():
        return []
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


def wait_records(
    path: Path, fact: Callable[[list[list[str]]], bool], what: str, deadline: float = DEADLINE
) -> list[list[str]]:
    """Poll a file callbacks append to until `fact(records)` holds, under a deadline."""
    found: list[list[list[str]]] = []

    def check() -> bool:
        found[:] = [records(path)]
        return fact(found[0])

    wait_for(check, what, deadline)
    return found[0]


def pid_gone(pid: int) -> bool:
    """No such process, or only its zombie left (an orphan's reaper is not ours)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def record_script(out: str, *fields: str, sleep: float = 0.0, at_end: bool = False) -> str:
    """A Python callback appending one line `<field> ...` to `<fleet base>/<out>` with one
    O_APPEND write. Fields are Python expressions over `os`, `time` and `tag` (the member's
    tree name, from QBDIR); it sleeps `sleep` seconds, after the write or, with at_end,
    before it."""
    line = " ".join("{" + f + "}" for f in fields)
    write = (
        f"line = f{line!r} + '\\n'\n"
        "fd = os.open(os.path.join(base, " + repr(out) + "),"
        " os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)\n"
        "os.write(fd, line.encode())\n"
        "os.close(fd)\n"
    )
    nap = f"time.sleep({sleep!r})\n" if sleep else ""
    return (
        "import os, time\n"
        "_t0 = time.time()\n"
        "base = os.path.dirname(os.environ['QBDIR'])\n"
        "tag = os.path.basename(os.environ['QBDIR'])\n" + (nap + write if at_end else write + nap)
    )


def hold_script(out: str, *fields: str, limit: float = 30.0) -> str:
    """`record_script`, then work for up to `limit` seconds, cut short once the file
    `release` exists beside the members' trees (so that a test ends long runs at will,
    the orphans of a killed member included)."""
    return record_script(out, *fields) + (
        f"end = time.monotonic() + {limit!r}\n"
        "while time.monotonic() < end and not os.path.exists(os.path.join(base, 'release')):\n"
        "    time.sleep(0.05)\n"
    )
