"""A fleet member's lease (SPEC §8): joining and leaving the fleet, the heartbeat that keeps
its claims, declaring lost the members whose heartbeat is older than the lease, and the
members as `status` shows them. Part of the sequencer (its thread only) through `Fleet`.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any, Final

from supervisord import __version__
from supervisord.core.errors import StoreError
from supervisord.core.model import Settings
from supervisord.journal import store
from supervisord.journal.backend import Db, JournalError, member_name
from supervisord.journal.delivery import Book

log = logging.getLogger("supervisord.journal.sequencer")

_NOW: Final = "extract(epoch from clock_timestamp())"


class Leases:
    """Join, leave, heartbeat; the sequencer (through `Fleet`) holds what is named here."""

    settings: Settings
    book: Book
    member: str
    lost_self: bool
    joined: bool
    counters: dict[str, int]
    _stored: dict[str, int]
    _id_prefix: str
    _last_error: str
    _gens: dict[str, str]
    _db: Db | None

    def _load_state(self, db: Db) -> None:
        raise NotImplementedError

    @staticmethod
    def _notify(db: Db, channel: str = "") -> None:
        raise NotImplementedError

    # -- start and stop --------------------------------------------------------------------

    def _join(self, *, at_start: bool) -> bool:
        """Create the tables if missing, join the fleet, read the counters and state. A
        database that does not answer leaves the member serving, refusing events, until
        a batch finds it back; a schema newer than ours stops a start (exit 78) and, found
        later, keeps refusing, said in the log."""
        db = self._db
        assert db is not None
        from supervisord.journal import pg

        try:
            assert isinstance(db, pg.PgJournal)
            pg.create(db)
            self._open_shared()
            self.counters = store.read_counters(db)
            self._stored = dict(self.counters)
            self._id_prefix = store.id_prefix(db)
            self._load_state(db)
        except StoreError as exc:
            if at_start:
                raise
            self._last_error = str(exc)
            log.critical("cannot join the fleet: %s", exc)
            return False
        except JournalError as exc:
            self._last_error = str(exc)
            if at_start:
                log.warning(
                    "journal database unreachable at start: serving, events refused until"
                    " it answers error=%s", exc,
                )  # fmt: skip
            return False
        self.joined = True
        self._gens = {}
        return True

    def _open_shared(self) -> None:
        """Join the fleet: refuse a name in use, take back what a previous run of this
        member left claimed (as redeliveries), register. Blocking, at start."""
        db = self._db
        assert db is not None
        db.execute("BEGIN IMMEDIATE")
        try:
            self._refuse_taken_name(db)
            released = _release(db, self.member)
            db.execute(
                f"INSERT OR REPLACE INTO members VALUES (?, ?, ?, ?, ?, {_NOW}, {_NOW}, 0, 'up')",
                (self.member, self.settings.role, socket.gethostname(), os.getpid(), __version__),
            )
            if released:
                log.warning("redelivering runs this member left claimed count=%d", released)
                self._notify(db)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        log.info("joined the fleet member=%s role=%s", self.member, self.settings.role)

    def _refuse_taken_name(self, db: Db) -> None:
        row = db.execute(
            f"SELECT host, pid, state, {_NOW} - heartbeat FROM members WHERE member = ?",
            (self.member,),
        ).fetchone()
        if row is None or row[2] != "up" or float(row[3]) > self.settings.lease:
            return
        host, pid = str(row[0]), int(row[1])
        if host == socket.gethostname() and (pid == os.getpid() or not _alive(pid)):
            return  # a previous run of this member, on this host, that is gone
        raise StoreError(
            f"member name {self.member!r} is in use by pid {pid} on {host} (heartbeat"
            f" {float(row[3]):.1f}s ago): give each daemon its own supervisor_callback_member"
        )

    def _leave(self) -> None:
        """A clean stop: hand back the claimed runs not started, say so. Blocking."""
        db = self._db
        if db is None:
            return
        try:
            db.execute("BEGIN IMMEDIATE")
            n = db.execute(
                "UPDATE runs SET state = 'pending' WHERE member = ? AND state = 'claimed'",
                (self.member,),
            ).rowcount
            db.execute(
                f"UPDATE members SET state = 'stopped', running = 0, heartbeat = {_NOW}"
                " WHERE member = ?",
                (self.member,),
            )
            if n:
                self._notify(db)
            db.execute("COMMIT")
            log.info("left the fleet member=%s handed_back=%d", self.member, n)
        except JournalError as exc:
            log.error("could not leave the fleet cleanly member=%s error=%s", self.member, exc)

    # -- heartbeat and leases ----------------------------------------------------------------

    def _heartbeat(self, running: int) -> None:
        db = self._db
        assert db is not None
        row = db.execute("SELECT state FROM members WHERE member = ?", (self.member,)).fetchone()
        if row is not None and row[0] == "lost" and not self.lost_self:
            self.lost_self = True
            log.error(
                "the fleet declared this member lost (no heartbeat for over %.0fs): the runs"
                " it had claimed were handed to others and may run twice member=%s",
                self.settings.lease, self.member,
            )  # fmt: skip
        db.execute(
            f"UPDATE members SET heartbeat = {_NOW}, running = ?, state = 'up' WHERE member = ?",
            (running, self.member),
        )
        lost = [
            str(m)
            for (m,) in db.execute(
                f"SELECT member FROM members WHERE state = 'up' AND member != ?"
                f" AND heartbeat < {_NOW} - ?",
                (self.member, self.settings.lease),
            ).fetchall()
        ]
        for member in lost:
            n = _release(db, member)
            db.execute("UPDATE members SET state = 'lost' WHERE member = ?", (member,))
            log.warning("member lost member=%s lease=%.0fs runs_redelivered=%d",
                        member, self.settings.lease, n)  # fmt: skip
        if lost:  # the retries it had scheduled are anybody's now: know when they are due
            self.book.refresh_due(db)


def fleet_view(db: Db, settings: Settings, running: int) -> list[dict[str, Any]]:
    """`status`'s `fleet` (SPEC §8): the members, or this daemon alone on SQLite."""
    if settings.journal == "sqlite":
        return [
            {"member": member_name(settings), "role": settings.role,
             "host": socket.gethostname(), "pid": os.getpid(), "heartbeat_age_s": 0.0,
             "running": running, "version": __version__, "state": "up"}
        ]  # fmt: skip
    rows = db.execute(
        f"SELECT member, role, host, pid, {_NOW} - heartbeat, running, version, state"
        " FROM members ORDER BY member"
    ).fetchall()
    return [
        {"member": m, "role": r, "host": h, "pid": int(p), "heartbeat_age_s": round(float(a), 3),
         "running": int(n), "version": v, "state": s}
        for m, r, h, p, a, n, v, s in rows
    ]  # fmt: skip


def _release(db: Db, member: str) -> int:
    """A gone member's claimed and running runs back to pending, each a redelivery (it
    may have started); how many."""
    return int(
        db.execute(
            "UPDATE runs SET state = 'pending', attempts = greatest(attempts, 1)"
            " WHERE member = ? AND state IN ('claimed', 'running')",
            (member,),
        ).rowcount
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
