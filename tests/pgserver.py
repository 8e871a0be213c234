"""A real PostgreSQL server for the fleet tests and benchmarks, started by them in a
temporary directory (initdb + pg_ctl), as an unprivileged user when run as root.

Nothing here is installed by hand: the machine image carries PostgreSQL's server binaries
(`initdb`, `pg_ctl`, `postgres`); where they are missing, `find_bindir` says so and the
tests that need a server skip with that reason.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

DEADLINE = 30.0


def find_bindir() -> tuple[str | None, str]:
    """The directory holding initdb, pg_ctl and postgres, or None and why not."""
    found = shutil.which("pg_ctl")
    candidates = [os.path.dirname(os.path.realpath(found))] if found else []
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    candidates += ["/usr/pgsql/bin", "/usr/local/pgsql/bin"]
    for d in candidates:
        if all(os.access(os.path.join(d, b), os.X_OK) for b in ("initdb", "pg_ctl", "postgres")):
            return d, ""
    return None, "PostgreSQL server binaries (initdb, pg_ctl, postgres) are not on this machine"


def driver_missing() -> str:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'qbcallbacks[postgres]')"
    return ""


def server_user() -> pwd.struct_passwd:
    """Who runs the server when the tests run as root: PostgreSQL's own account where the
    package made one, else `daemon`. Not `nobody`: the run-as tests cap the processes of
    `nobody` (RLIMIT_NPROC), and a server's processes would count against that cap."""
    for name in ("postgres", "daemon"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    return pwd.getpwnam("nobody")


class PgServer:
    """One PostgreSQL cluster in its own directory, reached by its Unix socket there."""

    def __init__(self, bindir: str, *, fsync: bool = False) -> None:
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="qbpg", dir="/tmp"))
        self.data = self.dir / "data"
        self.port = 5432 + (os.getpid() % 20000) + 1
        self.fsync = fsync
        self._user: dict[str, Any] = {}
        self.role = pwd.getpwuid(os.getuid()).pw_name
        if os.geteuid() == 0:  # postgres refuses to run as root: run it as another user
            user = server_user()
            self._user = {"user": user.pw_uid, "group": user.pw_gid}
            self.role = user.pw_name
            os.chown(self.dir, user.pw_uid, user.pw_gid)
        os.chmod(self.dir, 0o755)  # the socket is reached by the test's own user

    def _run(self, *args: str) -> None:
        subprocess.run(
            [os.path.join(self.bindir, args[0]), *args[1:]],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=self.dir,
            env={**os.environ, "LC_ALL": "C.UTF-8"},
            **self._user,
        )

    def start(self) -> PgServer:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", self.role, "-E", "UTF8")
        self.restart()
        return self

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://{self.role}@/{db}?host={self.dir}&port={self.port}"

    def create_db(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self, mode: str = "fast") -> None:
        if self.data.exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self) -> None:
        """Start the server (again, after `stop`) on the same directory and settings."""
        durable = "on" if self.fsync else "off"
        opts = (
            f"-c listen_addresses='' -c unix_socket_directories={self.dir} -p {self.port}"
            f" -c max_connections=200 -c fsync={durable} -c synchronous_commit={durable}"
        )
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.dir / "log"),
                  "-w", "-t", str(int(DEADLINE)), "start")  # fmt: skip

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


def wait_for(fact: Any, what: str, deadline: float = DEADLINE) -> Any:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        value = fact()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {deadline}s waiting for {what}")
