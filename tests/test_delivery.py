"""Tests of the delivery arithmetic: retry delays and decisions, token buckets, breakers."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from supervisord.core.delivery import (
    CLOSED,
    MAX_OPEN_PERIOD,
    Breaker,
    TokenBucket,
    after_restart,
    is_dead,
    is_due,
    is_retryable,
    on_outcome,
    resume,
    retry_delay,
    should_retry,
    start_trial,
)
from supervisord.core.policy import BreakerPolicy, Policy, Rate

SPEC_BACKOFF = Policy(retries=10, backoff=(10.0, 3600.0))
# Attempt k waits min(cap, first * 2^(k-1)) at most, and half of it at least.
CEILINGS = [10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0, 1280.0, 2560.0, 3600.0]


BOUNDS = [pytest.param(k, ceiling, id=f"k={k}") for k, ceiling in enumerate(CEILINGS, start=1)]
JITTER = [pytest.param(r, f, id=f"rand={r}") for r, f in [(0, 0.5), (0.5, 0.75), (0.999, 0.9995)]]


@pytest.mark.parametrize(("attempts", "ceiling"), BOUNDS)
@pytest.mark.parametrize(("rand", "factor"), [*JITTER, pytest.param(1.0, 1.0, id="rand=1")])
def test_retry_delay_bounds(attempts: int, ceiling: float, rand: float, factor: float) -> None:
    assert retry_delay(SPEC_BACKOFF, attempts, rand) == pytest.approx(ceiling * factor)


DELAYS = [
    pytest.param((1.0, 1.0), 1, 0.0, 0.5, id="first equals cap"),
    pytest.param((1.0, 1.0), 50, 0.0, 0.5, id="first equals cap, late"),
    pytest.param((0.5, 5.0), 4, 0.0, 2.0, id="fractional first"),
    pytest.param((0.5, 5.0), 5, 0.0, 2.5, id="hits the cap"),
    pytest.param((10.0, 3600.0), 5000, 0.0, 1800.0, id="huge attempt count"),
    pytest.param((1e-300, 1e300), 3000, 0.0, 0.5e300, id="extreme range"),
    pytest.param((1e-300, 1e300), 2, 0.0, 1e-300, id="extreme range early"),
]


@pytest.mark.parametrize(("backoff", "attempts", "rand", "expected"), DELAYS)
def test_retry_delay_edges(
    backoff: tuple[float, float], attempts: int, rand: float, expected: float
) -> None:
    assert retry_delay(Policy(retries=1, backoff=backoff), attempts, rand) == pytest.approx(
        expected
    )


def test_retry_delay_with_a_seeded_random_stays_in_the_jitter_band() -> None:
    rng = random.Random(7)
    for attempts in range(1, 40):
        ceiling = min(3600.0, 10.0 * 2 ** (attempts - 1))
        delay = retry_delay(SPEC_BACKOFF, attempts, rng.random())
        assert ceiling / 2 <= delay <= ceiling


@pytest.mark.parametrize(
    ("attempts", "rand", "message"),
    [(0, 0.5, "attempts_made"), (-3, 0.5, "attempts_made"), (1, -0.1, "rand"), (1, 1.5, "rand")],
    ids=["attempt 0", "negative attempt", "rand below 0", "rand above 1"],
)
def test_retry_delay_rejects_bad_arguments(attempts: int, rand: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        retry_delay(SPEC_BACKOFF, attempts, rand)


ALL = frozenset({"failed", "timeout", "error"})
# (retries, retry_on, outcome, exit code, attempt that just ended, retried?, dead?)
DECISIONS = [
    pytest.param(0, ALL, "failed", 1, 1, False, False, id="qube: no retries, never dead"),
    pytest.param(2, ALL, "ok", 0, 1, False, False, id="ok is never retried"),
    pytest.param(2, ALL, "failed", 3, 1, True, False, id="failed, first attempt"),
    pytest.param(2, ALL, "failed", 3, 2, True, False, id="failed, second attempt"),
    pytest.param(2, ALL, "failed", 3, 3, False, True, id="failed, last attempt: dead"),
    pytest.param(2, ALL, "failed", None, 1, True, False, id="killed by a signal"),
    pytest.param(2, ALL, "timeout", None, 3, False, True, id="timeout, last attempt"),
    pytest.param(2, ALL, "error", None, 1, True, False, id="error"),
    pytest.param(2, ALL, "failed", 3, 7, False, True, id="past the end after a reload"),
    pytest.param(3, frozenset({75, "timeout"}), "failed", 75, 1, True, False, id="code listed"),
    pytest.param(3, frozenset({75, "timeout"}), "failed", 75, 4, False, True, id="code, last"),
    pytest.param(3, frozenset({75, "timeout"}), "failed", 1, 1, False, False, id="code not listed"),
    pytest.param(3, frozenset({75, "timeout"}), "failed", 1, 4, False, False, id="never dead"),
    pytest.param(3, frozenset({75, "timeout"}), "failed", None, 1, False, False, id="signal"),
    pytest.param(3, frozenset({75, "timeout"}), "timeout", None, 2, True, False, id="outcome"),
    pytest.param(3, frozenset({75, "timeout"}), "error", None, 1, False, False, id="not listed"),
    pytest.param(3, frozenset({1}), "timeout", 1, 1, False, False, id="codes only for failed"),
    pytest.param(3, frozenset({"failed", 75}), "failed", 9, 1, True, False, id="failed covers all"),
    pytest.param(3, frozenset(), "failed", 1, 4, False, False, id="empty retry_on"),
]


@pytest.mark.parametrize(
    ("retries", "retry_on", "outcome", "code", "attempt", "retried", "dead"), DECISIONS
)
def test_retry_decisions(
    retries: int,
    retry_on: frozenset[str | int],
    outcome: str,
    code: int | None,
    attempt: int,
    retried: bool,
    dead: bool,
) -> None:
    policy = Policy(retries=retries, retry_on=retry_on)
    assert should_retry(policy, outcome, code, attempt) is retried
    assert is_dead(policy, outcome, code, attempt) is dead
    if retried or dead:
        assert is_retryable(policy, outcome, code)


@pytest.mark.parametrize(
    ("rate", "capacity"),
    [
        (Rate(20.0, 1.0), 20),
        (Rate(1.5, 1.0), 2),
        (Rate(0.5, 1.0), 1),
        (Rate(120.0, 60.0), 2),
        (Rate(5.0, 60.0), 1),
        (Rate(3600.0, 3600.0), 1),
    ],
    ids=["20/s", "1.5/s", "0.5/s", "120/m", "5/m", "3600/h"],
)
def test_token_bucket_capacity_is_one_second_rounded_up(rate: Rate, capacity: int) -> None:
    bucket = TokenBucket(rate, now=100.0)
    assert bucket.capacity == capacity
    assert [bucket.take(100.0) for _ in range(capacity)] == [0.0] * capacity
    assert bucket.take(100.0) == pytest.approx(1.0 / rate.per_second)


# (rate, [(now, what take(now) returns), ...]) from a full bucket made at 0.
BUCKET_SCRIPTS = [
    pytest.param(
        Rate(2.0, 1.0),
        [(0.0, 0.0), (0.0, 0.0), (0.0, 0.5), (0.25, 0.25), (0.5, 0.0), (0.5, 0.5), (10.0, 0.0)],
        id="2/s: burst, wait, refill",
    ),
    pytest.param(
        Rate(2.0, 1.0),
        [(0.0, 0.0), (0.0, 0.0), (100.0, 0.0), (100.0, 0.0), (100.0, 0.5)],
        id="2/s: a long idle refills only to capacity",
    ),
    pytest.param(
        Rate(5.0, 60.0),
        [(0.0, 0.0), (0.0, 12.0), (6.0, 6.0), (12.0, 0.0), (12.0, 12.0), (100.0, 0.0)],
        id="5/m: one start every 12 s",
    ),
    pytest.param(
        Rate(20.0, 1.0),
        [*[(0.0, 0.0)] * 20, (0.0, 0.05), (0.05, 0.0), (0.05, 0.05)],
        id="20/s: exactly 20 at once, then one per 50 ms",
    ),
    pytest.param(
        Rate(1.0, 1.0),
        [(10.0, 0.0), (5.0, 1.0), (10.5, 0.5), (11.0, 0.0)],
        id="clock stepping back adds nothing",
    ),
]


@pytest.mark.parametrize(("rate", "script"), BUCKET_SCRIPTS)
def test_token_bucket_script(rate: Rate, script: list[tuple[float, float]]) -> None:
    bucket = TokenBucket(rate, now=0.0)
    assert [bucket.take(now) for now, _ in script] == pytest.approx([w for _, w in script])


def test_token_bucket_delay_is_exact_enough_to_start_on_time() -> None:
    bucket = TokenBucket(Rate(3.0, 1.0), now=0.0)
    now = 0.0
    for _ in range(3):
        assert bucket.take(now) == 0.0
    for _ in range(1000):  # every returned delay, waited exactly, yields a token
        wait = bucket.take(now)
        assert wait > 0
        now += wait
        assert bucket.take(now) == 0.0
    assert now == pytest.approx(1000 / 3)


def test_token_bucket_tokens_does_not_take() -> None:
    bucket = TokenBucket(Rate(4.0, 1.0), now=0.0)
    assert bucket.tokens(0.0) == 4.0
    assert bucket.take(0.0) == 0.0
    assert bucket.tokens(0.0) == 3.0
    assert bucket.tokens(0.125) == pytest.approx(3.5)


GUARDED = Policy(breaker=BreakerPolicy(failures=3, cooldown=60.0))


def step(state: Breaker, action: str, now: float, policy: Policy = GUARDED) -> Breaker:
    """One event in a breaker's life: a run ended ok/fail, a trial started, or resume."""
    if action == "trial":
        assert is_due(state, now)
        return start_trial(state)
    if action == "resume":
        return resume(state)
    return on_outcome(state, action == "ok", now, policy, detail="exit status 1")


def view(state: Breaker) -> tuple[str, int, float | None, float]:
    return state.state, state.failures, state.retry_at, state.period


# (action, now, (state, failures, retry_at, period) after it)
FULL_CYCLE = [
    ("fail", 0.0, ("closed", 1, None, 0.0)),
    ("ok", 1.0, ("closed", 0, None, 0.0)),  # ok resets the count
    ("fail", 2.0, ("closed", 1, None, 0.0)),
    ("fail", 3.0, ("closed", 2, None, 0.0)),
    ("fail", 4.0, ("open", 3, 64.0, 60.0)),  # 3 in a row: open for the cooldown
    ("ok", 5.0, ("open", 3, 64.0, 60.0)),  # a run started before it opened: ignored
    ("fail", 6.0, ("open", 3, 64.0, 60.0)),
    ("trial", 64.0, ("half-open", 3, 64.0, 60.0)),
    ("fail", 70.0, ("open", 4, 190.0, 120.0)),  # failed trial: twice as long
    ("trial", 190.0, ("half-open", 4, 190.0, 120.0)),
    ("fail", 200.0, ("open", 5, 440.0, 240.0)),
    ("trial", 440.0, ("half-open", 5, 440.0, 240.0)),
    ("fail", 440.0, ("open", 6, 920.0, 480.0)),
    ("trial", 920.0, ("half-open", 6, 920.0, 480.0)),
    ("fail", 920.0, ("open", 7, 1880.0, 960.0)),
    ("trial", 1880.0, ("half-open", 7, 1880.0, 960.0)),
    ("fail", 1880.0, ("open", 8, 3800.0, 1920.0)),
    ("trial", 3800.0, ("half-open", 8, 3800.0, 1920.0)),
    ("fail", 3800.0, ("open", 9, 7400.0, 3600.0)),  # at most an hour
    ("trial", 7400.0, ("half-open", 9, 7400.0, 3600.0)),
    ("fail", 7400.0, ("open", 10, 11000.0, 3600.0)),
    ("trial", 11000.0, ("half-open", 10, 11000.0, 3600.0)),
    ("ok", 11001.0, ("closed", 0, None, 0.0)),  # a good trial closes it
    ("fail", 11002.0, ("closed", 1, None, 0.0)),  # and counting starts afresh
]


def test_breaker_full_cycle() -> None:
    state = CLOSED
    for number, (action, now, expected) in enumerate(FULL_CYCLE, start=1):
        state = step(state, action, now)
        assert view(state) == expected, f"step {number}: {action} at {now}"


DUE = [
    pytest.param(CLOSED, 1e9, False, id="closed"),
    pytest.param(Breaker("open", 3, 64.0, 60.0), 63.9, False, id="open, cooling down"),
    pytest.param(Breaker("open", 3, 64.0, 60.0), 64.0, True, id="open, cooldown over"),
    pytest.param(Breaker("open", 3, 64.0, 60.0), 1e9, True, id="open, long over"),
    pytest.param(Breaker("half-open", 3, 64.0, 60.0), 1e9, False, id="half-open: trial running"),
]


@pytest.mark.parametrize(("state", "now", "due"), DUE)
def test_breaker_is_due(state: Breaker, now: float, due: bool) -> None:
    assert is_due(state, now) is due


OPEN = Breaker("open", 3, 64.0, 60.0, "3 consecutive failures")
HALF = Breaker("half-open", 3, 64.0, 60.0, "3 consecutive failures")
TRANSITIONS = [
    pytest.param(OPEN, "resume", GUARDED, CLOSED, id="resume open"),
    pytest.param(HALF, "resume", GUARDED, CLOSED, id="resume half-open"),
    pytest.param(Breaker("closed", 2), "resume", GUARDED, CLOSED, id="resume clears the count"),
    pytest.param(OPEN, "fail", Policy(), CLOSED, id="breaker removed by reload"),
    pytest.param(Breaker("closed", 2), "fail", Policy(), CLOSED, id="no breaker: no count"),
    pytest.param(
        HALF,
        "fail",
        Policy(breaker=BreakerPolicy(1, 7200.0)),
        Breaker("open", 4, 7264.0, 7200.0, "half-open trial failed (last: exit status 1)"),
        id="reopen never shorter than the cooldown",
    ),
    pytest.param(
        Breaker("closed", 0),
        "fail",
        Policy(breaker=BreakerPolicy(1, 5.0)),
        Breaker("open", 1, 69.0, 5.0, "1 failure (last: exit status 1)"),
        id="failures 1 opens at once, with the reason",
    ),
]


@pytest.mark.parametrize(("state", "action", "policy", "expected"), TRANSITIONS)
def test_breaker_transitions(
    state: Breaker, action: str, policy: Policy, expected: Breaker
) -> None:
    assert step(state, action, 64.0, policy) == expected


RESTARTS = [
    pytest.param(CLOSED, CLOSED, id="closed stays"),
    pytest.param(OPEN, OPEN, id="open stays"),
    pytest.param(HALF, OPEN, id="half-open: the cut trial is due again"),
]


@pytest.mark.parametrize(("stored", "resumed"), RESTARTS)
def test_breaker_after_restart(stored: Breaker, resumed: Breaker) -> None:
    assert after_restart(stored) == resumed
    assert start_trial(CLOSED) == CLOSED  # only an open breaker starts a trial


ROUND_TRIPS = [
    pytest.param(CLOSED, id="closed"),
    pytest.param(Breaker("closed", 2), id="closed counting"),
    pytest.param(OPEN, id="open"),
    pytest.param(HALF, id="half-open"),
    pytest.param(Breaker("open", 9, 7400.5, 3600.0, "trial failed (last: timed out)"), id="late"),
]


@pytest.mark.parametrize("state", ROUND_TRIPS)
def test_breaker_json_round_trip(state: Breaker) -> None:
    stored = json.dumps(state.to_json())
    assert Breaker.from_json(json.loads(stored)) == state


def test_breaker_json_shape() -> None:
    assert OPEN.to_json() == {
        "state": "open",
        "failures": 3,
        "retry_at": 64.0,
        "period": 60.0,
        "reason": "3 consecutive failures",
    }
    assert Breaker.from_json({"state": "open", "retry_at": 64, "period": 60}) == Breaker(
        "open", 0, 64.0, 60.0
    )


BAD_JSON: list[Any] = [
    pytest.param({}, "state", id="no state"),
    pytest.param({"state": "ajar"}, "state", id="unknown state"),
    pytest.param({"state": "open"}, "retry_at", id="open without retry_at"),
    pytest.param({"state": "closed", "failures": -1}, "not a stored breaker", id="negative"),
    pytest.param({"state": "closed", "failures": True}, "not a stored breaker", id="bool count"),
    pytest.param({"state": "closed", "period": "60"}, "not a stored breaker", id="text period"),
    pytest.param({"state": "closed", "reason": 5}, "not a stored breaker", id="number reason"),
    pytest.param({"state": "open", "retry_at": "soon"}, "retry_at", id="text retry_at"),
]


@pytest.mark.parametrize(("doc", "message"), BAD_JSON)
def test_breaker_from_json_rejects(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Breaker.from_json(doc)


def test_breaker_checks_itself() -> None:
    with pytest.raises(ValueError, match="retry_at"):
        Breaker("open")
    assert MAX_OPEN_PERIOD == 3600.0
