"""Numbering and matching events inside a batch: seq, event_id, runs (the sequencer's intake)."""

from __future__ import annotations

import json
import logging
from typing import Final

from supervisord.core.events import Received
from supervisord.core.matching import MatchState, Table, match, owner_job
from supervisord.core.model import Event, Firing
from supervisord.core.runtypes import RunRequest
from supervisord.core.timers import due_events
from supervisord.journal import store
from supervisord.journal.batch import Batch, Reply
from supervisord.journal.delivery import Book
from supervisord.journal.recovery import callback_record

log = logging.getLogger("supervisord.journal.sequencer")  # one logger for the whole thread

_string: Final = json.encoder.encode_basestring  # how store.dumps writes a str


def journal_text(event: Event, seq: int, eid: str) -> str:
    """The journal's copy of the event document with its seq and event_id (SPEC §4):
    the request line plus those members when the server kept it, else the encoded doc."""
    doc = event.doc
    if isinstance(doc, Received):
        return f'{doc.head},"seq":{seq},"event_id":{_string(eid)}}}'
    return store.dumps(dict(doc, seq=seq, event_id=eid))


class Numbering:
    """The intake half of the sequencer: it numbers events, matches them and adds their
    runs to the batch. Only the sequencer's thread calls it."""

    table: Table
    state: MatchState
    counters: dict[str, int]
    book: Book
    _id_prefix: str

    def _accept_all(self, events: list[Event], batch: Batch, now: float) -> list[Reply]:
        """`_accept` for each event, with the usual one inline: a new job event with an id
        that no callback's index lists (events/s are bounded by this loop). Such an event
        only updates the registry and gets its seq, journal row and reply."""
        table, state, counters, ids = self.table, self.state, self.counters, batch.ids
        state.latches.adopt(table.live_keys)  # what match() does first; the table is fixed
        observe, candidates, rows = state.registry.observe, table.candidates, batch.events
        inline = not log.isEnabledFor(logging.DEBUG)
        replies: list[Reply] = []
        for event in events:
            eid = event.event_id
            if (
                not inline
                or eid is None
                or eid in ids
                or event.type != "job"
                or candidates(event.name, "job")
            ):
                replies.append(self._accept(event, batch, now))
                continue
            seq = counters["last_seq"] = counters["last_seq"] + 1
            counters["events_total"] += 1
            observe(event)
            rows.append((seq, eid, now, journal_text(event, seq, eid)))
            ids[eid] = seq
            replies.append(
                {"ok": True, "seq": seq, "event_id": eid, "duplicate": False, "matched": []}
            )
        return replies

    def _accept(self, event: Event, batch: Batch, now: float) -> Reply:
        eid = event.event_id
        if eid is not None:
            seq = batch.ids.get(eid)
            if seq is not None:
                return {"ok": True, "seq": seq, "event_id": eid, "duplicate": True, "matched": []}
        counters = self.counters
        seq = counters["last_seq"] = counters["last_seq"] + 1
        counters["events_total"] += 1
        if eid is None:
            eid = self._auto_id(seq)
        firings = match(self.table, self.state, event)
        batch.events.append((seq, eid, now, journal_text(event, seq, eid)))
        batch.ids[eid] = seq
        names: list[str] = []
        if firings:
            self._add_runs(event, seq, eid, firings, batch)
            names = [f.callback.file for f in firings]
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "received seq=%d event_id=%s event=%s-%s job=%s matched=%s",
                seq, eid, event.name, event.type, event.job_id, names,
            )  # fmt: skip
        return {"ok": True, "seq": seq, "event_id": eid, "duplicate": False, "matched": names}

    def _add_runs(
        self, event: Event, seq: int, eid: str, firings: list[Firing], batch: Batch
    ) -> None:
        doc = dict(event.doc, seq=seq, event_id=eid)
        book = self.book
        for firing in firings:
            run_id = self.counters["last_run_id"] + 1
            self.counters["last_run_id"] = run_id
            job = owner_job(self.state, event, firing.owner)
            cb = callback_record(firing.callback)
            if book.breakers and book.is_held(cb["file"]):  # stored, not started (SPEC §7.4)
                batch.policy_runs.append(
                    (run_id, seq, eid, cb["file"], cb["key"], store.dumps(cb), firing.owner,
                     store.dumps(job), "held", 1, None, None, 0)
                )  # fmt: skip
                book.note_held(cb["file"])
                continue
            batch.runs.append(
                (run_id, seq, eid, cb["file"], cb["key"], store.dumps(cb), firing.owner,
                 store.dumps(job))
            )  # fmt: skip
            batch.new_requests.append(
                RunRequest(run_id, seq, eid, firing.callback, firing.owner, doc, job)
            )

    def _auto_id(self, seq: int) -> str:
        # The journal's random prefix keeps these apart from ids clients choose; a client
        # that copies one anyway makes its commit fail (UNIQUE) and is refused, not lost.
        return f"{self._id_prefix}{seq}"

    def _fire_clock(self, now: float, batch: Batch) -> None:
        events = due_events(self.table, self.state, now)
        for event in events:
            late = bool(event.doc.get("late"))
            log.info(
                "time trigger fired trigger=%s late=%s%s", event.doc.get("trigger"), late,
                " (its time passed while the daemon was down)" if late else "",
            )  # fmt: skip
            self._accept(event, batch, now)
