"""Tests of what keeps the daemon's memory small: compact registry records, shared latch sets,
lean run-queue chains, and the release of memory once the queue drains."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from supervisord.core import jobstore
from supervisord.core.events import validate_event
from supervisord.core.latches import Latches
from supervisord.core.model import Callback, Event, Term
from supervisord.core.registry import JobRegistry
from supervisord.core.runtypes import RunRequest
from supervisord.daemon.memory import release
from supervisord.run import scheduler as scheduler_module
from supervisord.run.scheduler import Scheduler


def event(name_type: str, job_id: int, time: float = 1000.0, **job: Any) -> Event:
    name, kind = name_type.split("-")
    doc = {"name": name, "type": kind, "job": {"id": job_id, **job}, "time": time}
    return validate_event(doc, time)


def parsed(name_type: str, job_id: int, **job: Any) -> Event:
    """An event whose strings are fresh objects, as the JSON parser makes them."""
    name, kind = name_type.split("-")
    fresh = {k: "".join(v) if isinstance(v, str) else v for k, v in job.items()}
    doc = {"name": "".join(name), "type": kind, "job": {"id": job_id, **fresh}}
    return validate_event(doc, 1000.0)


# -- the job registry ---------------------------------------------------------------------


def test_jobs_with_the_same_keys_share_their_layout_and_repeated_strings() -> None:
    reg = JobRegistry(100.0)
    for job_id in (1001, 1002):
        reg.observe(parsed("running-job", job_id, user="alice", label="render"))
    one, two = reg._find(1001), reg._find(1002)
    assert one is not None and two is not None
    assert one[-1] is two[-1]  # the layout (keys) tuple
    for a, b in zip(one[:-2], two[:-2], strict=True):
        if isinstance(a, str):
            assert a is b  # user, label, status: one object each
    assert reg.get(1001) == {"id": 1001, "user": "alice", "label": "render", "status": "running"}


def test_get_keeps_the_merged_key_order() -> None:
    reg = JobRegistry(100.0)
    reg.observe(event("submit-job", 7, name="a", user="u"))
    reg.observe(event("running-job", 7, pgrp=7, name="b"))
    assert list(reg.get(7) or {}) == ["id", "name", "user", "status", "pgrp"]


@pytest.mark.parametrize(
    ("second", "dirty"),
    [
        ({"name": "a"}, False),
        ({"name": "b"}, True),
        ({"extra": 1}, True),
        ({"count": 1.0}, False),  # equal as JSON data: 1 == 1.0, the old value stays
    ],
    ids=["same", "changed", "new-key", "equal-number"],
)
def test_an_event_that_changes_nothing_writes_nothing(second: dict[str, Any], dirty: bool) -> None:
    reg = JobRegistry(100.0)
    reg.observe(event("running-job", 5, name="a", count=1))
    reg.take_dirty()
    reg.observe(event("running-job", 5, **second))
    assert bool(reg.take_dirty()) is dirty


def test_long_and_nested_values_are_kept_and_copied() -> None:
    reg = JobRegistry(100.0)
    long = "x" * (jobstore.MAX_INTERNED + 1)
    reg.observe(event("submit-job", 3, notes=long, env={"A": [1, 2]}))
    job = reg.get(3)
    assert job is not None and job["notes"] == long
    job["env"]["A"].append(3)
    assert (reg.get(3) or {})["env"] == {"A": [1, 2]}


def test_many_key_layouts_start_the_table_afresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobstore, "MAX_LAYOUTS", 4)
    reg = JobRegistry(100.0)
    for i in range(10):
        reg.observe(event("submit-job", i, **{f"k{i}": i}))
    assert len(reg._layouts) <= 4
    assert [reg.get(i) for i in range(10)] == [
        {"id": i, f"k{i}": i, "status": "pending"} for i in range(10)
    ]


def test_process_group_index_grows_and_shrinks_through_one_member() -> None:
    reg = JobRegistry(100.0)
    reg.observe(event("submit-job", 10))
    assert reg._pending_pgrp == {}  # a job leading its own process group needs no entry
    reg.observe(event("submit-job", 11, pgrp=10, pid=10))
    assert reg._pending_pgrp[10] == 11  # one member: the id itself, not a set
    reg.observe(event("submit-job", 12, pgrp=10, pid=10))
    assert reg.pgrp_ids(10) == [10, 11, 12] and reg.children_of(10) == [11, 12]
    reg.observe(event("modified-job", 11, pgrp=11, pid=12))
    reg.observe(event("modified-job", 12, pgrp=11, pid=12))
    assert reg.pgrp_ids(10) == [10] and 10 not in reg._pending_pgrp
    assert reg.pgrp_ids(11) == [11, 12] and reg._pending_pgrp[11] == 12
    assert reg.children_of(12) == [11, 12]
    assert reg.children_of(10) == []
    reg.observe(event("complete-job", 10, time=1.0))
    assert reg.expire(1000.0) == [10] and reg.pgrp_ids(10) == []


def test_expiry_keeps_its_boundary() -> None:
    reg = JobRegistry(0.1)
    reg.observe(event("complete-job", 1, time=0.2))
    assert reg.expire(0.2 + 0.1 - 1e-9) == []
    assert reg.expire(0.2 + 0.1) == [1]


# -- latches ------------------------------------------------------------------------------


def test_equal_latch_sets_are_shared_and_counted() -> None:
    latches = Latches()
    latches.set("cb", 1, frozenset({0}))
    latches.set("cb", 2, frozenset([0]))
    latches.set("other", 1, frozenset({0}))
    assert latches.get("cb", 1) is latches.get("cb", 2) is latches.get("other", 1)
    assert len(latches) == 3
    latches.set("cb", 1, frozenset({0, 1}))
    assert len(latches) == 3 and latches.get("cb", 1) == {0, 1}
    latches.drop_owners([1])
    assert len(latches) == 1 and latches.get("cb", 1) == frozenset()
    assert latches.take_dirty() == {
        ("cb", 1): None, ("cb", 2): frozenset({0}), ("other", 1): None,
    }  # fmt: skip
    latches.drop_callbacks(["cb"])
    assert len(latches) == 0 and latches.take_dirty() == {("cb", 2): None}


# -- the run queue ------------------------------------------------------------------------

TERM = Term("complete", "job", "self", None)
CB = Callback("a.qcb", "/cbdir", 1, "qube", "complete-job-self", TERM, (TERM,))


def request(run_id: int, seq: int, job_id: int) -> RunRequest:
    doc = {"name": "complete", "type": "job", "job": {"id": job_id}, "seq": seq}
    return RunRequest(run_id, seq, f"e-{seq}", CB, job_id, doc, {"id": job_id})


class Gate:
    """Runs that wait until the test lets each one finish; records the start order."""

    def __init__(self, sched_args: tuple[int, bool]) -> None:
        self.started: list[int] = []
        self.release: dict[int, asyncio.Event] = {}
        self.changed = asyncio.Event()  # a run started
        self.bookkept = asyncio.Event()  # the scheduler is done with a finished run
        self.sched = Scheduler(*sched_args, self.execute)
        self.sched.on_drained = self.bookkept.set

    async def execute(self, req: RunRequest) -> None:
        self.started.append(req.run_id)
        self.changed.set()
        await self.release.setdefault(req.run_id, asyncio.Event()).wait()

    async def until_started(self, count: int) -> None:
        while len(self.started) < count:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), 10)

    async def finish(self, run_id: int) -> None:
        """Let the run end, and wait until the scheduler has done its bookkeeping."""
        self.bookkept.clear()
        self.release.setdefault(run_id, asyncio.Event()).set()
        await asyncio.wait_for(self.bookkept.wait(), 10)


async def test_a_jobs_later_events_wait_for_its_earlier_runs() -> None:
    gate = Gate((4, True))
    sched = gate.sched
    sched.submit([request(1, 1, 7), request(2, 2, 7), request(3, 3, 8), request(4, 4, 7)])
    await gate.until_started(2)
    assert gate.started == [1, 3] and sched.queued == 2
    await gate.finish(1)
    await gate.until_started(3)
    assert gate.started == [1, 3, 2]
    await gate.finish(2)
    await gate.finish(3)
    await gate.finish(4)
    assert gate.started == [1, 3, 2, 4] and sched.queued == 0 and not sched._chains
    assert sched.is_done_through(4) is False  # seq 4 not numbered yet
    sched.note_seq(4)
    assert sched.is_done_through(4)


async def test_on_idle_comes_once_drained_after_enough_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(scheduler_module, "IDLE_WORK", 3)
    gate, idle = Gate((1, True)), []
    sched = gate.sched
    sched.on_idle = lambda: idle.append(sched.running + sched.queued)
    sched.submit([request(1, 1, 1)])
    sched.note_seq(1)
    await gate.finish(1)
    assert idle == []  # drained, but only 2 units of work so far
    sched.submit([request(2, 2, 1), request(3, 3, 2)])
    sched.note_seq(3)
    await gate.finish(2)
    assert idle == []  # enough work, but a run still waits
    await gate.finish(3)
    assert idle == [0]
    sched.submit([request(4, 4, 1)])
    await gate.finish(4)
    assert idle == [0]


# -- giving memory back -------------------------------------------------------------------


@pytest.mark.parametrize("with_db", [True, False], ids=["journal", "none"])
def test_release_leaves_the_journal_working(tmp_path: Path, with_db: bool) -> None:
    db = sqlite3.connect(tmp_path / "j.db") if with_db else None
    if db is not None:
        db.execute("CREATE TABLE t (x)")
        db.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(1000)])
    release(db)
    if db is not None:
        assert db.execute("SELECT count(*) FROM t").fetchone() == (1000,)
        db.close()
