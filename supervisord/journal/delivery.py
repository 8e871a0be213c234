"""The delivery policy's book (SPEC §7): retries, dead runs, breakers and held runs, decided
in the sequencer thread and stored in the same transaction as the run's end.

Runs waiting for a retry (state ``retrying``, with a ``due`` time) or held by an open breaker
(state ``held``) live in the journal only; this book keeps the breakers and the earliest due
time, and turns what has come due into run requests, a chunk at a time.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from supervisord.core.delivery import (
    CLOSED,
    Breaker,
    after_restart,
    is_dead,
    is_due,
    on_outcome,
    retry_delay,
    should_retry,
    start_trial,
)
from supervisord.core.model import Callback
from supervisord.core.policy import DEFAULT_POLICY, Policy
from supervisord.core.runtypes import RunRequest, RunResult
from supervisord.journal import state, store
from supervisord.journal.backend import Db
from supervisord.journal.recovery import callback_record

log = logging.getLogger(__name__)

# Runs moved from the journal to the run queue per batch (due retries, released held runs):
# a breaker that closes over 100,000 held runs feeds them in steps, not in one allocation.
RELEASE_CHUNK: Final = 1000

PolicyOf = Callable[[Callback], Policy]


def default_policy(_cb: Callback) -> Policy:
    return DEFAULT_POLICY


@dataclass(frozen=True, slots=True)
class Ending:
    """What the policy made of a run's end: dead, and the retry's run row if one is due."""

    dead: bool
    retry_due: float | None  # Unix time the next attempt is due, if one is


class Book:
    """Breakers by callback file, the earliest retry due, and what is to be released."""

    def __init__(self, policy_of: PolicyOf = default_policy, rand: random.Random | None = None):
        self.policy_of = policy_of  # swapped by reload in one assignment
        self._rand = rand or random.Random()
        self.breakers: dict[str, Breaker] = {}
        self._trial: dict[str, int] = {}  # callback -> run_id of its half-open trial
        self._dirty: set[str] = set()
        self._releasing: set[str] = set()  # closed again: its held runs go back to the queue
        self._want_trial: set[str] = set()  # half-open, no trial yet: the next held run is it
        self.next_due: float | None = None  # the earliest stored retry
        # The earliest retry scheduled in the batch being built: its row is written only at
        # the commit, so a re-read of the journal before then cannot see it.
        self._unwritten: float | None = None

    # -- loading ---------------------------------------------------------------------------

    def load(self, db: Db, *, restart: bool = True) -> None:
        """The breakers as stored: at a start (``restart``) a half-open one is open again;
        a fleet member catching up with another's writes takes them as they are, with the
        half-open breaker's trial run, wherever it runs (SPEC §8)."""
        self.breakers = {}
        trials: dict[str, int] = {}
        for file, doc in state.load_breakers(db).items():
            try:
                breaker = Breaker.from_json(doc)
            except ValueError as exc:  # a damaged row must not stop the daemon: closed
                log.warning("breaker state unreadable callback=%s error=%s", file, exc)
                continue
            self.breakers[file] = after_restart(breaker) if restart else breaker
            if not restart and breaker.state == "half-open" and isinstance(doc.get("trial"), int):
                trials[file] = doc["trial"]
        held = {r[0] for r in db.execute("SELECT DISTINCT callback FROM runs WHERE state='held'")}
        self._releasing = {f for f in held if self.breakers.get(f, CLOSED).is_closed}
        self._trial, self._dirty = trials, set()
        self._want_trial = {
            f for f, b in self.breakers.items() if b.state == "half-open" and f not in trials
        }
        self._unwritten = None  # a failed commit wrote none of them: the journal has the truth
        self.refresh_due(db)

    def refresh_due(self, db: Db) -> None:
        row = db.execute("SELECT min(due) FROM runs WHERE state = 'retrying'").fetchone()
        stored = None if row is None or row[0] is None else float(row[0])
        times = [t for t in (stored, self._unwritten) if t is not None]
        self.next_due = min(times, default=None)

    def written(self) -> None:
        """The batch committed: its retries are in the journal now."""
        self._unwritten = None

    # -- decisions -------------------------------------------------------------------------

    def is_held(self, file: str) -> bool:
        """New runs of this callback are held: its breaker is open or half-open."""
        breaker = self.breakers.get(file)
        return breaker is not None and not breaker.is_closed

    def note_held(self, file: str) -> None:
        """A run was held: if its breaker waits for a trial run, this one can be it."""
        if self.breakers.get(file, CLOSED).state == "half-open" and file not in self._trial:
            self._want_trial.add(file)

    def finished(self, req: RunRequest, result: RunResult) -> Ending:
        """Update the breaker and decide: retry (when), dead, or neither."""
        policy = self.policy_of(req.callback)
        if policy.is_default:
            return Ending(False, None)
        if policy.breaker is not None or req.callback.file in self.breakers:
            self._breaker_outcome(req, result, policy)
        outcome, code = result.outcome, result.exit_code
        if should_retry(policy, outcome, code, req.attempt):
            delay = retry_delay(policy, req.attempt, self._rand.random())
            due = result.ended + delay
            self.next_due = due if self.next_due is None else min(self.next_due, due)
            self._unwritten = due if self._unwritten is None else min(self._unwritten, due)
            log.info(
                "retry scheduled run_id=%d callback=%s attempt=%d next_attempt=%d delay=%.1fs",
                req.run_id, req.callback.file, req.attempt, req.attempt + 1, delay,
            )  # fmt: skip
            return Ending(False, due)
        dead = is_dead(policy, outcome, code, req.attempt)
        if dead:
            log.warning(
                "run dead run_id=%d callback=%s job=%s attempts=%d outcome=%s",
                req.run_id, req.callback.file, req.owner, req.attempt, outcome,
            )  # fmt: skip
        return Ending(dead, None)

    def _breaker_outcome(self, req: RunRequest, result: RunResult, policy: Policy) -> None:
        file = req.callback.file
        before = self.breakers.get(file, CLOSED)
        if before.state == "half-open" and self._trial.get(file) != req.run_id:
            return  # only the trial's outcome decides a half-open breaker
        after = on_outcome(before, result.outcome == "ok", result.ended, policy, result.outcome)
        if after == before:
            return
        self._set(file, after)
        self._trial.pop(file, None)
        if after.state == "open":
            log.warning(
                "breaker opened callback=%s reason=%r retry_at=%.3f",
                file, after.reason, after.retry_at or 0.0,
            )  # fmt: skip
        elif after.is_closed and before.state == "half-open":
            log.info("breaker closed callback=%s (half-open trial ok)", file)
            self._releasing.add(file)

    def prune(self, callbacks: Iterable[Callback]) -> None:
        """Close the breakers of callbacks whose policy has no breaker any more (or that are
        gone), so their held runs are released rather than held for ever."""
        keep = {cb.file for cb in callbacks if self.policy_of(cb).breaker is not None}
        for file in [f for f in self.breakers if f not in keep]:
            self.resume(file)

    def resume(self, file: str) -> str:
        """``qbsupervisor resume``: close the breaker now; returns the state it had."""
        before = self.breakers.get(file, CLOSED)
        self._set(file, CLOSED)
        self._trial.pop(file, None)
        self._want_trial.discard(file)
        self._releasing.add(file)
        log.info("breaker resumed callback=%s was=%s", file, before.state)
        return before.state

    def _set(self, file: str, breaker: Breaker) -> None:
        if breaker == CLOSED:
            self.breakers.pop(file, None)
        else:
            self.breakers[file] = breaker
        self._dirty.add(file)

    def is_dirty(self) -> bool:
        return bool(self._dirty)

    def _stored_doc(self, file: str) -> dict[str, Any]:
        doc = self.breakers[file].to_json()
        if file in self._trial:
            doc["trial"] = self._trial[file]
        return doc

    def take_dirty(self) -> dict[str, dict[str, Any] | None]:
        dirty = {f: self._stored_doc(f) if f in self.breakers else None for f in self._dirty}
        self._dirty.clear()
        return dirty

    # -- what comes due --------------------------------------------------------------------

    def next_deadline(self, now: float) -> float | None:
        times = [b.retry_at for b in self.breakers.values() if b.state == "open" and b.retry_at]
        if self.next_due is not None:
            times.append(self.next_due)
        if self._releasing or self._want_trial:
            times.append(now)
        return min(times, default=None)

    def collect_due(self, db: Db, now: float) -> Iterable[store.RunRow]:
        """Rows to start now; each is already moved to ``pending`` (or back to ``held``)."""
        moves: list[tuple[str, int]] = []
        rows: list[store.RunRow] = []
        if self.next_due is not None and self.next_due <= now:
            where = "r.state = 'retrying' AND r.due <= ? ORDER BY r.due LIMIT ?"
            for row in store.run_rows(db, where, (now, RELEASE_CHUNK)):
                held = self.is_held(row.cb["file"])
                moves.append(("held" if held else "pending", row.run_id))
                if held:
                    self.note_held(row.cb["file"])
                else:
                    rows.append(row)
            store.set_state(db, moves)  # before the held runs below are looked up
            moves = []
            self.refresh_due(db)
        for file, breaker in list(self.breakers.items()):
            if is_due(breaker, now):
                self._set(file, start_trial(breaker))
                self._want_trial.add(file)
        for file in list(self._want_trial):
            self._want_trial.discard(file)
            trial = self._held_rows(db, file, 1)
            if trial:
                self._trial[file] = trial[0].run_id
                self._dirty.add(file)  # stored with its trial: any fleet member may run it
                log.info("breaker half-open callback=%s trial_run_id=%d", file, trial[0].run_id)
                rows += trial
                moves.append(("pending", trial[0].run_id))
        for file in list(self._releasing):
            released = self._held_rows(db, file, RELEASE_CHUNK)
            if len(released) < RELEASE_CHUNK:
                self._releasing.discard(file)
            rows += released
            moves += [("pending", row.run_id) for row in released]
        store.set_state(db, moves)
        return rows

    def _held_rows(self, db: Db, file: str, limit: int) -> list[store.RunRow]:
        where = "r.state = 'held' AND r.callback = ? ORDER BY r.run_id LIMIT ?"
        return list(store.run_rows(db, where, (file, limit)))

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """The breakers not closed, for `status` on the loop."""
        return {f: b.to_json() for f, b in self.breakers.items() if not b.is_closed}


def retry_row(req: RunRequest, run_id: int, due: float) -> tuple[Any, ...]:
    """The run row of the next attempt, waiting in the journal until ``due``."""
    cb = callback_record(req.callback)
    first = req.first_run_id or req.run_id
    return (
        run_id, req.seq, req.event_id, cb["file"], cb["key"], store.dumps(cb), req.owner,
        store.dumps(dict(req.job_doc)), "retrying", req.attempt + 1, first, due, int(req.replayed),
    )  # fmt: skip
