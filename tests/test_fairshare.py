"""The ready queue of the scheduler: round robin over callbacks, per-callback caps (SPEC §7.5)."""

from __future__ import annotations

import pytest

from supervisord.core.model import Callback
from supervisord.core.policy import DEFAULT_POLICY, Policy, Rate
from supervisord.core.runtypes import RunRequest
from supervisord.core.triggers import parse_trigger, terms_of
from supervisord.run.fairshare import ReadyQueue


def request(file: str, run_id: int) -> RunRequest:
    trigger = parse_trigger("complete-job-self")
    cb = Callback(file, "/cb", 1, "python", "complete-job-self", trigger, terms_of(trigger))
    return RunRequest(run_id, run_id, f"e{run_id}", cb, 1, {}, {})


def drain(queue: ReadyQueue, now: float = 0.0) -> list[str]:
    order = []
    while (item := queue.pop(now)) is not None:
        order.append(item[0].callback.file)
    return order


@pytest.mark.parametrize(
    ("pushes", "expected"),
    [
        pytest.param("aaab", "abaa", id="a-flood-then-b"),
        pytest.param("ab", "ab", id="one-event-keeps-file-order"),
        pytest.param("aabbcc", "abcabc", id="three-in-turn"),
    ],
)
def test_round_robin_order(pushes: str, expected: str) -> None:
    queue = ReadyQueue()
    for i, file in enumerate(pushes):
        queue.push(request(file, i), 0.0)
    assert "".join(drain(queue)) == expected


def test_a_newcomer_goes_ahead_of_the_callback_that_just_had_its_turn() -> None:
    queue = ReadyQueue()
    for i in range(4):
        queue.push(request("slow", i), 0.0)
    assert drain_one(queue) == "slow"
    queue.push(request("fast", 9), 0.0)
    assert drain(queue) == ["fast", "slow", "slow", "slow"]


def drain_one(queue: ReadyQueue) -> str:
    item = queue.pop(0.0)
    assert item is not None
    return item[0].callback.file


def test_concurrency_cap_skips_a_callback_until_one_of_its_runs_ends() -> None:
    capped = Policy(concurrency=1)
    queue = ReadyQueue(lambda cb: capped if cb.file == "a" else DEFAULT_POLICY)
    for i, file in enumerate("aab"):
        queue.push(request(file, i), 0.0)
    assert drain(queue) == ["a", "b"]
    assert queue.counts()["a"] == {"running": 1, "queued": 1}
    queue.finished(request("a", 0))
    assert drain(queue) == ["a"]


def test_rate_cap_says_when_the_next_token_comes() -> None:
    limited = Policy(rate=Rate(1, 1.0))
    queue = ReadyQueue(lambda cb: limited)
    for i in range(2):
        queue.push(request("a", i), 0.0)
    assert drain(queue, 10.0) == ["a"]
    assert queue.pop(10.0) is None
    assert queue.next_token == pytest.approx(11.0)
    assert drain(queue, 11.0) == ["a"]
