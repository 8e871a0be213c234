"""The delivery-policy operations (SPEC §7): `dead`, `replay`, `resume`, and their status."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from supervisord.core.errors import EventError
from supervisord.journal import reads
from supervisord.journal.batch import Replay, Resume

if TYPE_CHECKING:
    from supervisord.core.matching import MatchState
    from supervisord.daemon.server import Connection, Reply
    from supervisord.daemon.view import Daemon


def int_field(doc: dict[str, Any], name: str, default: int | None = None) -> int | None:
    value = doc.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise EventError(name, f"expected an integer, got {value!r}")
    return value


def str_field(doc: dict[str, Any], name: str) -> str | None:
    value = doc.get(name)
    if value is not None and not isinstance(value, str):
        raise EventError(name, f"expected a string, got {value!r}")
    return value


def replay_selector(doc: dict[str, Any]) -> dict[str, Any]:
    """The one selector of a replay request: ``runs``, ``dead`` or ``seq`` (SPEC §7.3)."""
    given = [k for k in ("runs", "dead", "seq") if doc.get(k) not in (None, False)]
    if len(given) != 1:
        raise EventError("runs", "expected exactly one of runs (a list of run ids), dead or seq")
    callback = str_field(doc, "callback")
    selector: dict[str, Any] = {} if callback is None else {"callback": callback}
    if given == ["runs"]:
        runs = doc["runs"]
        bad = not isinstance(runs, list) or not runs
        if bad or any(isinstance(r, bool) or not isinstance(r, int) for r in runs):
            raise EventError("runs", f"expected a non-empty list of run ids, got {runs!r}")
        return {"runs": sorted(set(runs))}
    if given == ["dead"]:
        if doc["dead"] is not True:
            raise EventError("dead", f"expected true, got {doc['dead']!r}")
        since = doc.get("since")
        if since is not None and (isinstance(since, bool) or not isinstance(since, int | float)):
            raise EventError("since", f"expected Unix seconds, got {since!r}")
        return {**selector, "dead": True, "since": since}
    return {**selector, "seq": int_field(doc, "seq")}


class PolicyOps:
    """Handlers for the policy ops, and the per-callback part of `status`."""

    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon

    async def op_dead(self, doc: dict[str, Any], conn: Connection) -> Reply:
        callback = str_field(doc, "callback")
        limit = max(1, min(int_field(doc, "limit", 100) or 100, 100_000))

        def read(db: Any, _state: MatchState) -> list[dict[str, Any]]:
            return reads.history(db, None, callback, None, limit, dead=True)

        return {"ok": True, "runs": await self.d.query(read)}

    async def op_replay(self, doc: dict[str, Any], conn: Connection) -> Reply:
        selector = replay_selector(doc)
        made: dict[str, Any] = await self._submit(lambda f: Replay(selector, f))
        reply: Reply = {"ok": True, "run_ids": made["run_ids"]}
        missing = sorted(set(selector.get("runs", ())) - set(made["sources"]))
        if missing:
            reply["missing"] = missing  # named, not fatal: the others were replayed
        return reply

    async def op_resume(self, doc: dict[str, Any], conn: Connection) -> Reply:
        callback = str_field(doc, "callback")
        if not callback:
            raise EventError("callback", "required: the callback file whose breaker to close")
        if callback not in {cb.file for cb in self.d.table.callbacks}:
            raise EventError("callback", f"no callback {callback!r} in the loaded table")
        was = await self._submit(lambda f: Resume(callback, f))
        return {"ok": True, "callback": callback, "was": was}

    async def _submit(self, make: Any) -> Any:
        sequencer = self.d.sequencer
        assert sequencer is not None
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        sequencer.submit(make(future))
        return await future

    def status(self, waiting: dict[str, dict[str, int]]) -> dict[str, Any]:
        """`status` fields of SPEC §7.4/§7.5: per-callback counts and the open breakers."""
        sequencer = self.d.sequencer
        assert sequencer is not None
        breakers = sequencer.open_breakers
        counts = self.d.scheduler.per_callback()
        per_cb: dict[str, dict[str, Any]] = {}
        language = {cb.file: cb.language for cb in self.d.table.callbacks}
        for name in sorted(language.keys() | waiting.keys()):
            w, c = waiting.get(name, {}), counts.get(name, {})
            per_cb[name] = {
                "language": language.get(name, "-"),
                "running": c.get("running", 0), "queued": c.get("queued", 0),
                "held": w.get("held", 0), "retrying": w.get("retrying", 0),
                "dead": w.get("dead", 0), "breaker": breakers.get(name, {}).get("state", "closed"),
            }  # fmt: skip
        return {
            "runs_dead_total": sequencer.counters["runs_dead"],
            "runs_retried_total": sequencer.counters["runs_retried"],
            "runs_held": sum(w.get("held", 0) for w in waiting.values()),
            "background": getattr(self.d.runner, "background", 0),
            "delivery": per_cb,
            "breakers": [
                {"callback": name, "state": b.get("state"), "reason": b.get("reason"),
                 "retry_at": b.get("retry_at")}
                for name, b in sorted(breakers.items())
            ],
        }  # fmt: skip
