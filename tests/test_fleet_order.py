"""A fleet keeps one job's events in order and a policy's `concurrency` across its members,
and a half-open breaker's trial decides it wherever it runs (SPEC §3, §7, §8).

Real member daemons on one real PostgreSQL (tests/fleet_harness.py); the callbacks write
their start and end times to a file every member shares, and the facts are read there.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest

from tests.daemon_harness import DEADLINE
from tests.fleet_harness import Fleet, job_event, record_script, stream, wait_records

RUN = record_script("runs", "os.environ['QB_EVENT_ID']", "tag", "_t0", "time.time()",
                    sleep=0.3, at_end=True)  # fmt: skip


POLICY = "w.py:\n  concurrency: 2\n"


@pytest.fixture
def fleet(pg_url: str, request: pytest.FixtureRequest) -> Iterator[Fleet]:
    """An intake member and two executors; `request.param`: (slots each, policy.yaml)."""
    slots, policy = request.param
    files = {"w.py": RUN, **({"policy.yaml": policy} if policy else {})}
    with Fleet(pg_url, files, "w.py = complete-job-self\n",
               extra=f"supervisor_callback_concurrency = {slots}\n") as f:  # fmt: skip
        f.add("intake")
        f.add("executor")
        f.add("executor")
        yield f


def spans(rows: list[list[str]]) -> dict[str, tuple[str, float, float]]:
    return {eid: (tag, float(start), float(end)) for eid, tag, start, end in rows}


def overlapping(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant."""
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


@pytest.mark.parametrize("fleet", [(1, "")], indirect=True)  # one slot each: both must work
def test_one_jobs_events_run_in_order_across_members(fleet: Fleet) -> None:
    front = fleet.members["m1"]
    docs = [job_event(f"j{i}", 7) for i in range(6)]  # one job: each waits for the one before
    docs += [job_event(f"o{i}", 100 + i) for i in range(6)]  # others: free to run beside
    replies = stream(front.sock, docs)
    assert all(r["ok"] for r in replies), replies
    rows = wait_records(fleet.path("runs"), lambda rs: len(rs) >= 12, "12 runs")
    ran = spans(rows)
    chain = [ran[f"j{i}"] for i in range(6)]
    for (_, _, end), (_, start, _) in itertools.pairwise(chain):
        assert start >= end, f"a job's later event started before the earlier one ended: {chain}"
    # Both executors worked: the one idle while a job's event ran did not take its next.
    assert {tag for tag, _, _ in ran.values()} == {"m2", "m3"}, ran
    # Every log line of a fleet member names it (logs of several hosts read as one).
    lines = [ln for ln in fleet.members["m2"].daemon.read_log().splitlines() if " INFO " in ln]
    assert lines and all(" INFO member=m2 supervisord." in ln for ln in lines), lines[:3]


@pytest.mark.parametrize("fleet", [(4, POLICY)], indirect=True)
def test_policy_concurrency_caps_the_callback_across_the_fleet(fleet: Fleet) -> None:
    front = fleet.members["m1"]
    replies = stream(front.sock, [job_event(f"c{i}", 200 + i) for i in range(10)])
    assert all(r["ok"] for r in replies), replies
    rows = wait_records(fleet.path("runs"), lambda rs: len(rs) >= 10, "10 runs")
    ran = spans(rows)
    assert overlapping([(s, e) for _, s, e in ran.values()]) <= 2  # 8 slots, capped at 2
    assert overlapping([(s, e) for _, s, e in ran.values()]) == 2  # and the cap is used
    status: dict[str, Any] = front.request({"op": "status"})
    assert {m["member"]: m["role"] for m in status["fleet"]} == {
        "m1": "intake", "m2": "executor", "m3": "executor",
    }  # fmt: skip
    waited = front.request({"op": "wait", "seq": replies[-1]["seq"], "timeout": DEADLINE})
    assert waited["done"] is True


FLOOD = record_script("runs", "os.environ['QB_EVENT_ID']", "tag", "_t0", "time.time()",
                      sleep=0.1, at_end=True)  # fmt: skip


def test_a_flood_of_one_callback_does_not_keep_another_waiting(pg_url: str) -> None:
    """Fair share across the fleet (SPEC §7.5, §8): 40 runs of flood.py are pending when
    one run of other.py comes; the executor's next claims take the callbacks in turn."""
    files = {"flood.py": FLOOD, "other.py": FLOOD}
    conf = "flood.py = complete-job-self\nother.py = submit-job-self\n"
    with Fleet(pg_url, files, conf, extra="supervisor_callback_concurrency = 1\n") as fleet:
        front = fleet.add("intake")
        fleet.add("executor")
        flood = [job_event(f"f{i}", 300 + i) for i in range(40)]
        assert all(r["ok"] for r in stream(front.sock, flood))
        wait_records(fleet.path("runs"), lambda rs: len(rs) >= 2, "the flood under way")
        newcomer = job_event("n0", 900, name="submit")
        assert stream(front.sock, [newcomer])[0]["ok"]
        rows = wait_records(
            fleet.path("runs"), lambda rs: any(r[0] == "n0" for r in rs), "the newcomer's run"
        )
        before = [r[0] for r in rows].index("n0")  # 40 before fair share across the fleet
        assert before <= 4, f"the newcomer ran after {before} flood runs: {rows}"
