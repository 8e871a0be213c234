"""The ``qb`` module a Python callback sees: its job and event, jobinfo, and Qube actions."""

from __future__ import annotations

import json
import os
import re
import stat
import sys
from collections.abc import Callable, Iterable
from typing import Any, Final, TypeAlias

# The daemon hands every callback one end of a socket pair as fd 3.
_FD: Final = 3
_SCOPES: Final = {
    "job": re.compile(r"\d+(?:\.\d+)?"),  # Qube's job calls take a job or "job.subid"
    "subjob": re.compile(r"\d+\.\d+"),
    "work": re.compile(r"\d+:.+", re.DOTALL),
}
Target: TypeAlias = "int | str"


class _Channel:
    """Fd 3, opened lazily: importing qb never touches it, so ``import qb`` never fails."""

    def __init__(self) -> None:
        self._fd: int | None = None  # None: not looked at yet; -1: there is none
        self._buf = b""
        self._doc: dict[str, Any] | None = None

    def fd(self) -> int:
        if self._fd is None:
            self._fd = _FD if _is_channel(_FD) else -1
        return self._fd

    def doc(self) -> dict[str, Any]:
        """The document the daemon also gave on stdin; the first line on fd 3."""
        if self._doc is None:
            self._doc = {}
            line = self.readline() if self.fd() >= 0 else None
            hello = _loads(line)
            if isinstance(hello, dict) and isinstance(hello.get("doc"), dict):
                self._doc = hello["doc"]
        return self._doc

    def readline(self) -> bytes | None:
        while b"\n" not in self._buf:
            try:
                chunk = os.read(self.fd(), 65536)
            except OSError:
                chunk = b""
            if not chunk:
                return None
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def send(self, message: dict[str, Any]) -> bool:
        if self.fd() < 0:
            return False
        data = json.dumps(message).encode() + b"\n"
        try:
            while data:
                data = data[os.write(self.fd(), data) :]
        except OSError:
            return False
        return True


def _is_channel(fd: int) -> bool:
    if "QB_CALLBACK" not in os.environ:  # not started by the daemon: fd 3 is not ours
        return False
    try:
        return stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:
        return False


def _loads(line: bytes | None) -> Any:
    try:
        return None if line is None else json.loads(line)
    except ValueError:
        return None


_channel = _Channel()


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() else None


def jobid() -> int | None:
    """The owning job's id (QBJOBID); None for a global time trigger."""
    return _env_int("QBJOBID")


def subid() -> int | None:
    """The subjob id of the triggering event, if it has one."""
    return _env_int("QBSUBID")


def workid() -> str | None:
    """The work name of the triggering event, if it has one."""
    return os.environ.get("QB_WORK")


def event() -> dict[str, Any]:
    """The triggering event, with its own ``job``, ``seq``, ``event_id`` and ``time``."""
    value = _channel.doc().get("event")
    return value if isinstance(value, dict) else {}


def job() -> dict[str, Any]:
    """The owning job."""
    value = _channel.doc().get("job")
    return value if isinstance(value, dict) else {}


def jobinfo(by: str, value: int | str) -> list[dict[str, Any]]:
    """Jobs from the daemon's registry: ``jobinfo("-id", 12)``, ``jobinfo("-pgrp", 12)``."""
    if by not in ("-id", "-pgrp"):
        raise ValueError(f"jobinfo: expected '-id' or '-pgrp', got {by!r}")
    _channel.doc()  # the hello line comes first: the reply is the line after it
    if not _channel.send({"op": "jobinfo", "by": by, "value": int(value)}):
        return []
    reply = _loads(_channel.readline())
    return [j for j in reply if isinstance(j, dict)] if isinstance(reply, list) else []


def jobstatus() -> str | None:
    """The owning job's status as of the event."""
    status = job().get("status")
    return None if status is None else str(status)


def _status_of(kind: str) -> str | None:
    ev = event()
    if ev.get("type") != kind:
        return None
    status = ev.get("status", ev.get("name"))
    return None if status is None else str(status)


def subjobstatus() -> str | None:
    """For a subjob event: the subjob's status (the event name unless the event says)."""
    return _status_of("subjob")


def workstatus() -> str | None:
    """For a work event: the work item's status (the event name unless the event says)."""
    return _status_of("work")


def _targets(ids: Target | Iterable[Target], scope: str) -> list[str]:
    items = [ids] if isinstance(ids, int | str) else list(ids)
    targets = []
    for item in items:
        text = str(item).strip()
        if isinstance(item, bool) or not _SCOPES[scope].fullmatch(text):
            raise ValueError(f"not a {scope} id: {item!r}")
        targets.append(text)
    return targets


def _action(verb: str, scope: str) -> Callable[[Target | Iterable[Target]], None]:
    def act(ids: Target | Iterable[Target]) -> None:
        for target in _targets(ids, scope):
            if not _channel.send({"action": verb, "target": target}):
                print(f"qb: no daemon channel; {verb} {target} not sent", file=sys.stderr)

    act.__name__ = act.__qualname__ = verb if scope == "job" else f"{scope}{verb}"
    act.__doc__ = f"Ask for {verb} on {scope} id(s); applied by the daemon's subscribers."
    return act


unblock = _action("unblock", "job")
block = _action("block", "job")
kill = _action("kill", "job")
remove = _action("remove", "job")
retry = _action("retry", "job")
requeue = _action("requeue", "job")
interrupt = _action("interrupt", "job")
suspend = _action("suspend", "job")
resume = _action("resume", "job")
complete = _action("complete", "job")
fail = _action("fail", "job")
migrate = _action("migrate", "job")
preempt = _action("preempt", "job")

workunblock = _action("unblock", "work")
workblock = _action("block", "work")
workkill = _action("kill", "work")
workretry = _action("retry", "work")
workrequeue = _action("requeue", "work")
workcomplete = _action("complete", "work")
workfail = _action("fail", "work")
workremove = _action("remove", "work")
workinterrupt = _action("interrupt", "work")
worksuspend = _action("suspend", "work")
workresume = _action("resume", "work")
workmigrate = _action("migrate", "work")
workpreempt = _action("preempt", "work")

subjobunblock = _action("unblock", "subjob")
subjobblock = _action("block", "subjob")
subjobkill = _action("kill", "subjob")
subjobretry = _action("retry", "subjob")
subjobrequeue = _action("requeue", "subjob")
subjobcomplete = _action("complete", "subjob")
subjobfail = _action("fail", "subjob")
subjobremove = _action("remove", "subjob")
subjobinterrupt = _action("interrupt", "subjob")
subjobsuspend = _action("suspend", "subjob")
subjobresume = _action("resume", "subjob")
subjobmigrate = _action("migrate", "subjob")
subjobpreempt = _action("preempt", "subjob")
