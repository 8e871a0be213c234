#!/usr/bin/env python3
"""Bridge: apply the actions that universal callbacks request, using Qube's own API.

qbcallbacks does not own the jobs, so when a callback calls ``qb.unblock(1234)``
or a .qcb says ``retry-work-self`` the daemon only records the action and sends
it to ``subscribe`` clients. This is such a client. It connects to the daemon's
socket, sends ``{"op": "subscribe", "since": N}`` and reads action lines:

    {"op": "action", "seq": 17, "callback": "x.py", "job_id": 1234,
     "action": "unblock", "target": "1234"}

With Qube's Python API importable (Qube's ``qb`` module: it has ``qb.ping`` and
``qb.submit``, which the callback runtime's ``qb`` has not) each action is
applied -- ``qb.unblock(1234)``, ``qb.retrywork("1234:frame5")``, ... -- else it
is printed. On a lost connection it reconnects with ``since`` one below the last
seq seen and skips the actions of that seq it has already handled: nothing is
missed across a daemon restart, even when the connection dropped between two
actions of one event, and nothing is applied twice.

    python3 apply_actions.py --socket /run/qbcallbacks/callbacks.sock
    python3 apply_actions.py --config /etc/qb.conf --print     # never apply

It talks to the daemon through the qbcallbacks client API (``from supervisord.client
import Client``, standard library only), which finds the socket as ``qbsupervisor`` does.
Run it as a user that may connect to the socket (supervisor_event_allow_users) and that
Qube lets act on the jobs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from supervisord.client import Client
from supervisord.core.errors import QbError

# Job verbs -> Qube API function; a verb missing here has no Qube API equivalent.
JOB_API = {
    "unblock": "unblock",
    "block": "block",
    "kill": "kill",
    "retry": "retry",
    "requeue": "requeue",
    "complete": "retire",
    "remove": "remove",
    "migrate": "migrate",
    "preempt": "preempt",
    "interrupt": "interrupt",
    "suspend": "suspend",
    "resume": "resume",
}
# Work-item verbs ("1234:frame5" targets) -> Qube API function.
WORK_API = {
    "unblock": "unblockwork",
    "block": "blockwork",
    "kill": "killwork",
    "retry": "retrywork",
    "requeue": "requeuework",
    "complete": "retirework",
}
# Reconnect backoff: first wait, doubled per failure up to the cap.
RETRY_CAP_S = 30.0


def plan(action: str, target: str) -> tuple[str, Any] | None:
    """The Qube API call for one action: (function name, argument), or None if unsupported."""
    if ":" in target:
        name = WORK_API.get(action)
        return (name, target) if name else None
    name = JOB_API.get(action)
    if name is None:
        return None
    return (name, int(target)) if target.isdigit() else (name, target)  # "1234.2": an instance


def qube_api() -> Any | None:
    """Qube's own qb module if importable (not the callback runtime's qb), else None."""
    try:
        module = importlib.import_module("qb")
    except ImportError:
        return None
    return module if hasattr(module, "ping") and hasattr(module, "submit") else None


def subscribe(client: Client, since: int) -> Iterator[dict[str, Any]]:
    """Subscribe from `since` and yield action documents until the connection ends."""
    for doc in client.subscribe(since):
        if doc.get("op") == "action":
            yield doc


def handle(doc: dict[str, Any], api: Any | None, out: Callable[[str], None]) -> None:
    """Apply one action through Qube's API, or print it when there is no API."""
    action, target = str(doc.get("action")), str(doc.get("target"))
    what = f"seq={doc.get('seq')} callback={doc.get('callback')} {action} {target}"
    call = plan(action, target)
    if call is None:
        out(f"skipped (no Qube API for {action!r} on {target!r}): {what}")
    elif api is None:
        out(f"would apply qb.{call[0]}({call[1]!r}): {what}")
    else:
        try:
            result = getattr(api, call[0])(call[1])
        except Exception as exc:  # one bad action must not stop the bridge
            out(f"FAILED qb.{call[0]}({call[1]!r}): {exc}: {what}")
        else:
            out(f"applied qb.{call[0]}({call[1]!r}) -> {result!r}: {what}")


def _action_key(doc: dict[str, Any]) -> tuple[Any, ...]:
    """An action without its stored ``id`` (live lines have none)."""
    return tuple(doc.get(k) for k in ("seq", "callback", "job_id", "action", "target"))


def run(args: argparse.Namespace, client: Client, api: Any | None) -> int:
    """Subscribe forever (or once), reconnecting from the last seq seen."""
    path, since, delay = client.socket_path, args.since, args.retry_delay
    # The actions of seq `since` handled so far: on a reconnect the daemon sends that
    # seq's actions again (a drop may have come between two of them), these are skipped.
    seen: Counter[tuple[Any, ...]] = Counter()
    while True:
        replayed = Counter(seen)
        try:
            for doc in subscribe(client, since - 1 if seen else since):
                key = _action_key(doc)
                if doc.get("seq") == since and replayed[key]:
                    replayed[key] -= 1
                    continue
                if doc.get("seq") != since:
                    since, seen = int(doc.get("seq", since)), Counter()
                seen[key] += 1
                handle(doc, api, lambda text: print(text, flush=True))
                delay = args.retry_delay
            print(f"connection to {path} closed (last seq {since})", flush=True)
        except (OSError, ValueError, QbError) as exc:
            print(f"cannot subscribe at {path}: {exc}", file=sys.stderr, flush=True)
            if args.once:
                return 1
        if args.once:
            return 0
        time.sleep(delay)  # reconnect backoff, not synchronisation
        delay = min(max(delay * 2, 0.5), RETRY_CAP_S) if delay else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", help="the daemon's socket (default: from qb.conf)")
    parser.add_argument("--config", help="qb.conf to read supervisor_event_socket from")
    parser.add_argument("--since", type=int, default=0, help="send actions after this seq")
    parser.add_argument("--once", action="store_true", help="exit when the connection ends")
    parser.add_argument("--retry-delay", type=float, default=1.0, help="first reconnect wait")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--apply", action="store_true", help="require Qube's API and apply")
    mode.add_argument("--print", action="store_true", help="only print, never apply")
    args = parser.parse_args(argv)
    api = None if args.print else qube_api()
    if args.apply and api is None:
        print("--apply: Qube's Python API (import qb) is not available", file=sys.stderr)
        return 2
    try:
        client = Client(args.socket, args.config)
    except QbError as exc:  # an unreadable or invalid qb.conf
        print(f"cannot find the daemon's socket: {exc}", file=sys.stderr)
        return 2
    print(f"{'applying' if api else 'printing'} actions from {client.socket_path}", flush=True)
    try:
        return run(args, client, api)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
