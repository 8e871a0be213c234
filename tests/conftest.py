"""Shared fixtures: real daemons on short /tmp trees, cleaned up after each test."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_harness import Daemon, make_tree


@pytest.fixture
def daemon_factory() -> Iterator[Callable[..., Daemon]]:
    """Build a tree and start a daemon on it; every daemon is stopped and its tree removed."""
    made: list[Daemon] = []

    def factory(
        callbacks: dict[str, str], conf: str, qbconf_extra: str = "", start: bool = True,
        **kw: Any,
    ) -> Daemon:  # fmt: skip
        d = Daemon(make_tree(callbacks, conf, qbconf_extra), **kw)
        made.append(d)
        return d.start() if start else d

    yield factory
    for d in made:
        d.close()
        shutil.rmtree(d.root, ignore_errors=True)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="qbt", dir="/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


# -- the journal's two backends (SPEC §8): journal-level tests take `journal_db` and run on
# both; the PostgreSQL server is started once per test session by the tests themselves.


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    """A real PostgreSQL server in a temporary directory; skips, saying why, without one."""
    from tests.pgserver import PgServer, driver_missing, find_bindir

    bindir, why = find_bindir()
    if bindir is None:
        pytest.skip(why)
    why = driver_missing()
    if why:
        pytest.skip(why)
    server = PgServer(bindir).start()
    yield server
    server.destroy()


_databases = iter(range(1, 1_000_000))


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> str:
    """A fresh, empty database on the session's PostgreSQL server."""
    server = request.getfixturevalue("pg_server")
    return str(server.create_db(f"qbt{next(_databases)}"))


@pytest.fixture(params=["sqlite", "postgresql"])
def journal_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """An empty journal on each backend: SQLite in tmp_path, or a fresh PostgreSQL database."""
    from supervisord.journal import pg, store

    db: Any
    if request.param == "sqlite":
        db = store.connect(str(tmp_path), "off")
    else:
        db = pg.PgJournal(request.getfixturevalue("pg_url"))
        pg.create(db)
    yield db
    db.close()
