"""Tests of the job registry: merging, indexes, status, expiry and persistence rows."""

from __future__ import annotations

import json
from typing import Any

import pytest

from supervisord.core.events import validate_event
from supervisord.core.model import Event
from supervisord.core.registry import JobRegistry


def event(name_type: str, job_id: int, time: float = 1000.0, **job: Any) -> Event:
    name, kind = name_type.split("-")
    doc = {"name": name, "type": kind, "job": {"id": job_id, **job}, "time": time}
    if kind == "work":
        doc["work"] = "w"
    return validate_event(doc, time)


def registry(*events: Event, retention: float = 100.0) -> JobRegistry:
    reg = JobRegistry(retention)
    for e in events:
        reg.observe(e)
    return reg


def test_fields_merge_newest_wins() -> None:
    reg = registry(
        event("submit-job", 1, name="a", user="alice", pgrp=1),
        event("running-job", 1, name="b", extra={"k": [1, 2]}),
    )
    assert reg.get(1) == {
        "id": 1, "name": "b", "user": "alice", "pgrp": 1, "status": "running",
        "extra": {"k": [1, 2]},
    }  # fmt: skip
    assert reg.get(2) is None and len(reg) == 1


@pytest.mark.parametrize(
    ("job_id", "name", "value"),
    [(1, "label", "ribGen"), (1, "status", "running"), (1, "pgrp", None), (2, "label", None)],
    ids=["label-as-sent", "status", "missing-field", "unknown-job"],
)
def test_field_reads_one_value_without_copying_the_job(job_id: int, name: str, value: Any) -> None:
    reg = registry(event("running-job", 1, label="ribGen"))
    assert reg.field(job_id, name) == value


def test_get_returns_a_copy() -> None:
    reg = registry(event("submit-job", 1, tags=["x"]))
    job = reg.get(1)
    assert job is not None
    job["tags"].append("y")
    job["name"] = "changed"
    assert reg.get(1) == {"id": 1, "tags": ["x"], "status": "pending"}


@pytest.mark.parametrize(
    ("name_type", "sent", "status"),
    [
        ("submit-job", None, "pending"),
        ("submit-job", "blocked", "blocked"),
        ("complete-job", "running", "complete"),
        ("removed-job", None, "removed"),
        ("modified-job", "waiting", "waiting"),
        ("failed-work", "running", "running"),
    ],
    ids=["submit", "submit-blocked", "event-beats-stale", "removed", "modified", "work-event"],
)
def test_status_from_job_events(name_type: str, sent: str | None, status: str) -> None:
    fields: dict[str, Any] = {} if sent is None else {"status": sent}
    assert (registry(event(name_type, 1, **fields)).get(1) or {}).get("status") == status


def test_indexes_follow_moves() -> None:
    reg = registry(
        event("submit-job", 1, pgrp=1),
        event("submit-job", 2, pgrp=1, pid=1),
        event("submit-job", 3, pgrp=1, pid=1),
    )
    assert reg.pgrp_ids(1) == [1, 2, 3] and reg.children_of(1) == [2, 3]
    reg.observe(event("modified-job", 3, pgrp=9, pid=2))
    assert [j["id"] for j in reg.by_pgrp(1)] == [1, 2]
    assert reg.by_pgrp(9) == [{"id": 3, "pgrp": 9, "pid": 2, "status": "pending"}]
    assert reg.children_of(1) == [2] and reg.children_of(2) == [3]
    assert reg.all_ids() == [1, 2, 3]


def test_non_integer_pgrp_is_not_indexed() -> None:
    reg = registry(event("submit-job", 1, pgrp="1", pid=True))
    # A non-integer pgrp counts as none: the job leads its own process group.
    assert reg.pgrp_ids(1) == [1] and reg.children_of(1) == []
    assert (reg.get(1) or {})["pgrp"] == "1"


def test_job_without_pgrp_leads_its_own_process_group() -> None:
    reg = registry(event("submit-job", 1234), event("submit-job", 1235, pgrp=1234))
    assert [job["id"] for job in reg.by_pgrp(1234)] == [1234, 1235]
    assert reg.by_pgrp(1235) == []


def test_expiry_after_retention() -> None:
    reg = registry(
        event("complete-job", 1, time=1000.0, pgrp=1),
        event("removed-job", 2, time=1050.0, pid=1),
        event("running-job", 3, time=1000.0),
    )
    reg.take_dirty()
    assert reg.expire(1099.0) == []
    assert reg.expire(1100.0) == [1]
    assert reg.pgrp_ids(1) == [] and reg.get(1) is None
    assert reg.expire(10_000.0) == [2]
    assert reg.children_of(1) == [] and reg.all_ids() == [3]
    assert reg.take_dirty() == {1: None, 2: None}


def test_revived_job_is_not_expired() -> None:
    reg = registry(event("failed-job", 1, time=1000.0), event("running-job", 1, time=1010.0))
    assert reg.expire(5000.0) == []
    reg.observe(event("complete-job", 1, time=1020.0))
    reg.observe(event("complete-job", 1, time=1050.0))
    assert reg.expire(1120.0) == [] and reg.expire(1150.0) == [1]


def test_persistence_round_trip() -> None:
    reg = registry(
        event("complete-job", 1, time=1000.0, pgrp=1, label="x"),
        event("running-job", 2, time=1000.0, pgrp=1, pid=1),
    )
    rows = json.loads(json.dumps(list(reg.take_dirty().items())))
    assert reg.take_dirty() == {}
    fresh = JobRegistry(100.0)
    fresh.load((i, row) for i, row in rows)
    assert fresh.take_dirty() == {}
    assert [fresh.get(i) for i in (1, 2)] == [reg.get(i) for i in (1, 2)]
    assert fresh.pgrp_ids(1) == [1, 2] and fresh.children_of(1) == [2]
    assert fresh.expire(1100.0) == [1] and reg.expire(1100.0) == [1]


def test_load_accepts_bare_job_objects() -> None:
    fresh = JobRegistry(100.0)
    fresh.load([(5, {"name": "n", "pgrp": 5})])
    assert fresh.get(5) == {"id": 5, "name": "n", "pgrp": 5}
    assert fresh.pgrp_ids(5) == [5] and fresh.expire(1e12) == []
