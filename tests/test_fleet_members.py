"""Members joining and leaving (SPEC §8): a member name in use elsewhere is refused at
start; a member killed and started again at once takes back, as redeliveries, the runs it
had; one stopped cleanly shows `stopped` and hands back what it had not started."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.daemon_harness import DEADLINE, Daemon, make_tree
from tests.fleet_harness import (
    Fleet,
    FleetDB,
    hold_script,
    job_event,
    record_script,
    stream,
    wait_records,
)
from tests.pgserver import wait_for

LONG = hold_script("starts", "os.environ['QB_EVENT_ID']", "os.environ['QB_REDELIVERED']",
                   "tag")  # fmt: skip


def test_a_member_name_in_use_is_refused(pg_url: str) -> None:
    with Fleet(pg_url, {"l.py": LONG}, "l.py = complete-job-self\n") as fleet:
        first = fleet.add("all", name="render1")
        root = fleet.base / "twin"
        root.mkdir()
        make_tree({}, "", fleet.qbconf("render1", "executor", ""), root=root)
        twin = Daemon(root)
        twin.start(wait_ready=False)
        assert twin.proc is not None
        assert twin.proc.wait(DEADLINE) == 78
        log = twin.read_log()
        assert f"member name 'render1' is in use by pid {first.pid}" in log, log
        assert "give each daemon its own supervisor_callback_member" in log
        twin.close()
        assert first.is_alive()


def test_a_member_restarted_after_kill9_takes_its_runs_back(pg_url: str) -> None:
    with Fleet(pg_url, {"l.py": LONG}, "l.py = complete-job-self\n") as fleet:
        front = fleet.add("intake")
        worker = fleet.add("executor")
        starts: Path = fleet.path("starts")
        replies = stream(front.sock, [job_event(f"k{i}", 50 + i) for i in range(3)])
        assert all(r["ok"] for r in replies)
        wait_records(starts, lambda rs: len(rs) == 3, "3 runs started")
        worker.kill9()
        worker.start()  # at once: its old heartbeat is fresh, but its pid is gone
        rows = wait_records(starts, lambda rs: len(rs) == 6, "3 runs started again")
        assert sorted(r[:2] for r in rows[3:]) == [[f"k{i}", "1"] for i in range(3)]
        fleet.path("release").touch()
        db = FleetDB(pg_url)
        try:
            wait_for(lambda: db.unfinished() == 0, "every run finished")
            worker.daemon.stop()
            members = {m["member"]: m["state"] for m in db.members()}
            assert members == {"m1": "up", "m2": "stopped"}
        finally:
            db.close()


def loaded_psycopg(pid: int) -> bool:
    """Whether the process mapped psycopg's compiled module (it is imported)."""
    return "psycopg" in Path(f"/proc/{pid}/maps").read_text()


def test_postgresql_driver_is_loaded_only_by_a_fleet_member(
    pg_url: str, daemon_factory: Callable[..., Daemon]
) -> None:
    lone = daemon_factory({"l.py": "pass\n"}, "l.py = complete-job-self\n")
    assert lone.proc is not None and lone.request({"op": "status"})["ok"]
    assert not loaded_psycopg(lone.proc.pid)  # SQLite: the driver is never imported
    with Fleet(pg_url, {"l.py": "pass\n"}, "l.py = complete-job-self\n") as fleet:
        member = fleet.add("all")
        assert loaded_psycopg(member.pid)  # the same check sees it where it is


LATCH = record_script("latched", "os.environ['QB_EVENT_ID']", "tag")


def test_two_intake_members_share_one_order_duplicates_and_latches(pg_url: str) -> None:
    """One seq order, event_id duplicates and latches across members (SPEC §8): the two
    halves of a compound trigger arrive at different members and fire it once."""
    conf = "latch.py = submit-job-self && complete-job-self\n"
    with Fleet(pg_url, {"latch.py": LATCH}, conf) as fleet:
        a, b = fleet.add("all"), fleet.add("all")
        first = a.request(job_event("d1", 5, name="submit"))
        again = b.request(job_event("d1", 5, name="submit"))  # the same event, resent to b
        assert again["duplicate"] is True and again["seq"] == first["seq"]
        seqs = [
            (a if i % 2 else b).request(job_event(f"s{i}", 100 + i, name="submit"))["seq"]
            for i in range(10)
        ]
        assert seqs == list(range(first["seq"] + 1, first["seq"] + 11))  # one order
        done = b.request(job_event("d2", 5))  # job 5's complete, at the other member
        assert done["matched"] == ["latch.py"]
        rows = wait_records(fleet.path("latched"), lambda rs: len(rs) >= 1, "the latch fired")
        assert [r[0] for r in rows] == ["d2"]
        late = a.request(job_event("d3", 5))  # fired once: the latch was reset fleet-wide
        assert late["matched"] == []


def test_a_member_starts_while_its_database_is_away_and_joins_when_it_answers() -> None:
    """No crash loop under systemd (SPEC §8): READY without the database, events refused
    as `unavailable` meanwhile, then the tables made, the member joined, events run."""
    from tests.pgserver import PgServer, driver_missing, find_bindir

    bindir, why = find_bindir()
    if bindir is None or driver_missing():
        pytest.skip(why or driver_missing())
    server = PgServer(bindir).start()
    try:
        url = server.create_db("late")
        server.stop()
        with Fleet(url, {"r.py": LATCH}, "r.py = complete-job-self\n") as fleet:
            member = fleet.add("all")  # READY=1 while the database is away
            refused = member.request(job_event("w1", 1))
            assert refused["ok"] is False and refused["error"]["code"] == "unavailable"
            server.restart()

            def accepted() -> dict[str, object] | None:
                reply = member.request(job_event("w2", 2))
                return reply if reply["ok"] else None

            reply = wait_for(accepted, "an event accepted once the database is back")
            assert reply["seq"] == 1  # the refused one was never stored
            wait_records(fleet.path("latched"), lambda rs: len(rs) == 1, "its run")
            assert member.is_alive()
    finally:
        server.destroy()
