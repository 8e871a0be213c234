"""Delivery arithmetic (SPEC §7.2, §7.4): retry delays and decisions, rate tokens, breakers.

Nothing here reads a clock or a random source: ``now`` and ``rand`` are arguments.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Final, Literal, TypeAlias, get_args

from supervisord.core.policy import Policy, Rate

# Longest a breaker stays open after failed half-open trials (SPEC §7.4: "at most an hour").
MAX_OPEN_PERIOD: Final = 3600.0
# Slack when testing for a whole token: a start scheduled at exactly the delay `take`
# returned must find its token although the refill sum rounds to 0.9999999999.
_TOKEN_SLACK: Final = 1e-9

BreakerState: TypeAlias = Literal["closed", "open", "half-open"]
BREAKER_STATES: Final[tuple[BreakerState, ...]] = get_args(BreakerState)


def retry_delay(policy: Policy, attempts_made: int, rand: float) -> float:
    """Seconds from the end of attempt ``attempts_made`` (k >= 1) to the start of the next.

    ``min(cap, first * 2^(k-1))`` times the jitter factor ``0.5 + 0.5 * rand`` in [0.5, 1],
    ``rand`` in [0, 1] (``random.Random.random()``, passed in to keep this pure).
    """
    if attempts_made < 1:
        raise ValueError(f"attempts_made counts from 1, got {attempts_made}")
    if not 0.0 <= rand <= 1.0:
        raise ValueError(f"rand must be in [0, 1], got {rand}")
    first, cap = policy.backoff
    doublings = attempts_made - 1
    # Compared as logarithms so that attempt 5000 gives the cap instead of a float overflow.
    if doublings >= math.log2(cap) - math.log2(first):
        base = cap
    else:
        base = min(cap, math.ldexp(first, doublings))
    return base * (0.5 + 0.5 * rand)


def is_retryable(policy: Policy, outcome: str, exit_code: int | None) -> bool:
    """Whether ``retry_on`` names this outcome, or (for a failed run) its exit code."""
    if outcome in policy.retry_on:
        return True
    return outcome == "failed" and exit_code is not None and exit_code in policy.retry_on


def should_retry(policy: Policy, outcome: str, exit_code: int | None, attempt: int) -> bool:
    """Whether the run whose attempt ``attempt`` (1-based) just ended gets another one."""
    return attempt <= policy.retries and is_retryable(policy, outcome, exit_code)


def is_dead(policy: Policy, outcome: str, exit_code: int | None, attempt: int) -> bool:
    """Whether that ending makes the run dead: retryable, but out of attempts (SPEC §7.2).

    A run whose outcome is not in ``retry_on``, or under ``retries: 0``, is never dead.
    """
    return (
        policy.retries > 0
        and attempt >= policy.max_attempts
        and is_retryable(policy, outcome, exit_code)
    )


class TokenBucket:
    """The starts a ``rate`` allows: refills continuously, holds at most one second's worth.

    Mutable on purpose, unlike the values around it: one per rated callback, owned by the
    daemon's state object and taken from on every start, where a new object per start
    would buy nothing. Capacity is the per-second rate rounded up, at least 1, so ``20/s``
    allows a burst of 20 and ``5/m`` one start every 12 s.
    """

    __slots__ = ("_stamp", "_tokens", "capacity", "rate")

    def __init__(self, rate: Rate, now: float) -> None:
        self.rate = rate
        self.capacity = max(1, math.ceil(rate.per_second))
        self._tokens = float(self.capacity)
        self._stamp = now

    def take(self, now: float) -> float:
        """0.0 if a token was taken for a start at ``now``; else seconds until one is due."""
        self._refill(now)
        if self._tokens + _TOKEN_SLACK >= 1.0:
            self._tokens = max(0.0, self._tokens - 1.0)
            return 0.0
        return (1.0 - self._tokens) / self.rate.per_second

    def tokens(self, now: float) -> float:
        """Tokens available at ``now``, without taking one."""
        self._refill(now)
        return self._tokens

    def _refill(self, now: float) -> None:
        # A clock that steps back adds nothing and keeps the later stamp.
        if now > self._stamp:
            gained = (now - self._stamp) * self.rate.per_second
            self._tokens = min(float(self.capacity), self._tokens + gained)
            self._stamp = now


@dataclass(frozen=True, slots=True)
class Breaker:
    """A callback's circuit breaker (SPEC §7.4); changed only by the functions below.

    ``failures`` counts consecutive non-ok outcomes; ``retry_at`` is when an open breaker's
    half-open trial is due; ``period`` the length of the last open period, which a failed
    trial doubles.
    """

    state: BreakerState = "closed"
    failures: int = 0
    retry_at: float | None = None
    period: float = 0.0
    reason: str = ""

    def __post_init__(self) -> None:
        if self.state not in BREAKER_STATES:
            raise ValueError(f"breaker state must be one of {BREAKER_STATES}, got {self.state!r}")
        if self.state != "closed" and self.retry_at is None:
            raise ValueError(f"a {self.state} breaker needs retry_at")
        if self.failures < 0 or self.period < 0:
            raise ValueError(f"breaker counts must be >= 0: {self}")

    @property
    def is_closed(self) -> bool:
        """Closed: runs start freely. Open or half-open: new runs are held (stored)."""
        return self.state == "closed"

    def to_json(self) -> dict[str, Any]:
        """A plain dict for the journal; ``from_json`` reads it back."""
        return {
            "state": self.state,
            "failures": self.failures,
            "retry_at": self.retry_at,
            "period": self.period,
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Breaker:
        """The breaker stored by ``to_json``; ValueError if the dict is not one."""
        state, failures = doc.get("state"), doc.get("failures", 0)
        retry_at, period = doc.get("retry_at"), doc.get("period", 0.0)
        reason = doc.get("reason", "")
        if state not in BREAKER_STATES:
            raise ValueError(f"breaker state must be one of {BREAKER_STATES}, got {state!r}")
        if not _is_count(failures) or not _is_number(period) or not isinstance(reason, str):
            raise ValueError(f"not a stored breaker: {dict(doc)!r}")
        if retry_at is not None and not _is_number(retry_at):
            raise ValueError(f"breaker retry_at must be a number, got {retry_at!r}")
        at = None if retry_at is None else float(retry_at)
        return cls(state, int(failures), at, float(period), reason)


CLOSED: Final = Breaker()


def on_outcome(state: Breaker, ok: bool, now: float, policy: Policy, detail: str = "") -> Breaker:
    """The breaker after a run of its callback ended at ``now`` (``detail``: e.g. the outcome).

    Closed: N consecutive non-ok outcomes open it for ``cooldown``. Half-open (the outcome
    is the trial's): ok closes it, anything else reopens it for twice the last period, at
    most an hour but never less than ``cooldown``. Open: the run started before it opened,
    and its ending changes nothing. No ``breaker`` in the policy (any more): closed.
    """
    limits = policy.breaker
    if limits is None:
        return CLOSED
    if state.state == "open":
        return state
    if ok:
        return CLOSED
    failures = state.failures + 1
    last = f" (last: {detail})" if detail else ""
    if state.state == "half-open":
        period = max(limits.cooldown, min(2.0 * state.period, MAX_OPEN_PERIOD))
        return Breaker("open", failures, now + period, period, f"half-open trial failed{last}")
    if failures < limits.failures:
        return Breaker("closed", failures)
    count = "1 failure" if failures == 1 else f"{failures} consecutive failures"
    reason = f"{count}{last}"
    return Breaker("open", failures, now + limits.cooldown, limits.cooldown, reason)


def is_due(state: Breaker, now: float) -> bool:
    """Whether an open breaker's cooldown has passed, so one held run may start as a trial."""
    return state.state == "open" and state.retry_at is not None and now >= state.retry_at


def start_trial(state: Breaker) -> Breaker:
    """Half-open: the daemon has started one held run whose outcome decides (``on_outcome``)."""
    return replace(state, state="half-open") if state.state == "open" else state


def after_restart(state: Breaker) -> Breaker:
    """A stored breaker as the daemon loads it at start; only half-open changes.

    The trial a stop cut short decided nothing: the breaker is open again, and since its
    ``retry_at`` has passed, ``is_due`` at once, so a new trial starts.
    """
    return replace(state, state="open") if state.state == "half-open" else state


def resume(state: Breaker) -> Breaker:
    """``qbsupervisor resume CALLBACK``: closed at once, whatever ``state`` was.

    ``state`` is taken only so every transition reads ``new = f(old, ...)``.
    """
    return CLOSED


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
