"""The journal's interface: the few DB-API calls the journal makes, and its two backends.

SQLite (the default, one daemon) is used as `sqlite3` gives it. PostgreSQL (a fleet of
daemons sharing one database, SPEC §8) is `journal.pg.PgJournal`, which takes the same
statements and raises `sqlite3.Error` too, so every caller handles one error type.
"""

from __future__ import annotations

import socket
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

from supervisord.core.model import Settings

# What any journal backend raises when a read or write fails.
JournalError = sqlite3.Error


class Unreachable(sqlite3.OperationalError):
    """A shared journal's database is known to be away and the next try to reach it is not
    due yet: said in the log once per try (journal/pg.py), not once per refused batch."""


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Db(Protocol):
    """A journal connection: sqlite3.Connection, or the PostgreSQL one that acts like it."""

    @property
    def in_transaction(self) -> bool: ...

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Any: ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Any: ...

    def close(self) -> None: ...


def is_shared(settings: Settings) -> bool:
    """True when the journal is a PostgreSQL database other daemons may share."""
    return settings.journal != "sqlite"


def member_name(settings: Settings) -> str:
    """This daemon's name among the members of one database (SPEC §8)."""
    return settings.member or f"{socket.gethostname()}:{settings.event_socket}"


def redact(dsn: str) -> str:
    """A connection string fit for a log line: any password replaced by `***`."""
    import re

    dsn = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", dsn)
    return re.sub(r"(password\s*=\s*)(\S+)", r"\1***", dsn, flags=re.IGNORECASE)


def connect(settings: Settings) -> Db:
    """Open this daemon's journal: SQLite in the state directory, or the PostgreSQL
    database named by supervisor_callback_journal, reached at its first statement (a fleet
    member starts while its database is away: journal/fleet.py joins when it answers)."""
    if not is_shared(settings):
        from supervisord.journal import store

        return store.connect(settings.state_dir, settings.journal_sync)
    from supervisord.journal import pg

    return pg.PgJournal(settings.journal, lazy=True)
