"""The fields of a delivery policy (SPEC §7.1): their value types and one checker per key."""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, TypeAlias

import yaml
from yaml.constructor import SafeConstructor

from supervisord.core.errors import ConfigError

# The outcomes (SPEC §3) a run can be retried on; `ok` never is.
OUTCOMES: Final = ("failed", "timeout", "error")
# Per-unit seconds of a `rate`: `20/s`, `20/m`, `20/h`.
RATE_UNITS: Final = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE: Final = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*/\s*([smh])\s*")
_NULL_TAG: Final = "tag:yaml.org,2002:null"


@dataclass(frozen=True, slots=True)
class Rate:
    """A token-bucket rate: ``count`` starts per ``per`` seconds."""

    count: float
    per: float

    def __post_init__(self) -> None:
        if not (self.count > 0 and math.isfinite(self.count) and self.per > 0):
            raise ValueError(f"a rate needs a positive count and period, got {self}")

    @property
    def per_second(self) -> float:
        return self.count / self.per

    def __str__(self) -> str:
        unit = {v: k for k, v in RATE_UNITS.items()}.get(self.per, f"{self.per:g}s")
        return f"{self.count:g}/{unit}"


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """``breaker: {failures: N, cooldown: S}``: N consecutive non-ok outcomes open it for S s."""

    failures: int
    cooldown: float


@dataclass(frozen=True, slots=True)
class Policy:
    """How one callback is delivered; the defaults are exactly Qube's run-once behaviour (§4).

    ``timeout`` None means the global ``supervisor_callback_timeout``; ``concurrency``,
    ``rate`` and ``breaker`` None mean no cap and no breaker. ``backoff`` and ``retry_on``
    only matter once ``retries`` > 0.
    """

    retries: int = 0
    backoff: tuple[float, float] = (10.0, 3600.0)
    retry_on: frozenset[str | int] = frozenset(OUTCOMES)
    concurrency: int | None = None
    rate: Rate | None = None
    timeout: float | None = None
    breaker: BreakerPolicy | None = None

    @property
    def is_default(self) -> bool:
        """True when runs behave exactly as without a policy, so the daemon can skip it all."""
        return (
            self.retries == 0
            and self.concurrency is None
            and self.rate is None
            and self.timeout is None
            and self.breaker is None
        )

    @property
    def max_attempts(self) -> int:
        return self.retries + 1


class Invalid(enum.Enum):
    """The marker a checker returns after reporting why a value is bad."""

    INVALID = 0


INVALID: Final = Invalid.INVALID


class Report:
    """Collects every problem of one policy.yaml as a ConfigError at its line."""

    __slots__ = ("_constructor", "errors", "path")

    def __init__(self, path: str) -> None:
        self.path = path
        self.errors: list[ConfigError] = []
        self._constructor = SafeConstructor()

    def bad(self, node: yaml.Node, reason: str) -> Invalid:
        self.errors.append(ConfigError(self.path, line_of(node), reason))
        return INVALID

    def value(self, node: yaml.Node) -> object:
        """The Python value of a node, as yaml.safe_load would build it.

        A node safe_load refuses (an unknown ``!tag``) reads as its text, which no
        checker accepts, so it is reported like any other wrong value.
        """
        try:
            return self._constructor.construct_object(node, deep=True)
        except yaml.YAMLError:
            return str(node.value) if isinstance(node, yaml.ScalarNode) else None


Checker: TypeAlias = Callable[[yaml.Node, Report], object]


def line_of(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == _NULL_TAG


def shown(node: yaml.Node, report: Report) -> str:
    """A bad value as the reader wrote it: ``-1``, ``'abc'``, ``a list``."""
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if is_null(node):
        return "nothing"
    value = report.value(node)
    return repr(value) if isinstance(value, str) else str(node.value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_exit_code(value: object) -> bool:
    """1..255: a failed run's exit status (0 is `ok`, never retried)."""
    return _is_int(value) and isinstance(value, int) and 1 <= value <= 255


def _positive(value: object) -> float | None:
    """The value as seconds if it is a finite number > 0, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if 0 < value < math.inf else None


def _int_at_least(name: str, low: int) -> Checker:
    def check(node: yaml.Node, report: Report) -> int | Invalid:
        value = report.value(node) if isinstance(node, yaml.ScalarNode) else None
        if _is_int(value) and isinstance(value, int) and value >= low:
            return value
        return report.bad(node, f"{name}: expected an integer >= {low}, got {shown(node, report)}")

    return check


def _seconds(name: str) -> Checker:
    def check(node: yaml.Node, report: Report) -> float | Invalid:
        value = report.value(node) if isinstance(node, yaml.ScalarNode) else None
        seconds = _positive(value)
        if seconds is None:
            got = shown(node, report)
            return report.bad(node, f"{name}: expected a positive number of seconds, got {got}")
        return seconds

    return check


def _optional(check: Checker) -> Checker:
    """``key: null`` sets the field back to none (no cap, the global timeout, no breaker)."""

    def optional(node: yaml.Node, report: Report) -> object:
        return None if is_null(node) else check(node, report)

    return optional


def _backoff(node: yaml.Node, report: Report) -> tuple[float, float] | Invalid:
    expected = "backoff: expected [first, cap], two positive numbers of seconds"
    if not isinstance(node, yaml.SequenceNode) or len(node.value) != 2:
        return report.bad(node, f"{expected}, got {shown(node, report)}")
    first, cap = (_positive(report.value(item)) for item in node.value)
    for item, seconds in zip(node.value, (first, cap), strict=True):
        if seconds is None:
            return report.bad(item, f"{expected}, got {shown(item, report)}")
    assert first is not None and cap is not None
    if first > cap:
        return report.bad(node, f"backoff: first delay {first:g} is above the cap {cap:g}")
    return first, cap


def _retry_on(node: yaml.Node, report: Report) -> frozenset[str | int] | Invalid:
    expected = "retry_on: expected failed, timeout, error or an exit code 1..255"
    if not isinstance(node, yaml.SequenceNode):
        return report.bad(node, f"retry_on: expected a list, got {shown(node, report)}")
    items: set[str | int] = set()
    valid = True
    for item in node.value:
        value = report.value(item) if isinstance(item, yaml.ScalarNode) else None
        if (isinstance(value, str) and value in OUTCOMES) or _is_exit_code(value):
            assert isinstance(value, str | int)
            items.add(value)
        else:
            report.bad(item, f"{expected}, got {shown(item, report)}")
            valid = False
    return frozenset(items) if valid else INVALID


def _rate(node: yaml.Node, report: Report) -> Rate | Invalid:
    value = report.value(node) if isinstance(node, yaml.ScalarNode) else None
    found = _RATE.fullmatch(value) if isinstance(value, str) else None
    if found is None or float(found[1]) <= 0:
        got = shown(node, report)
        return report.bad(node, f"rate: expected N/s, N/m or N/h with N > 0, got {got}")
    return Rate(float(found[1]), RATE_UNITS[found[2]])


_BREAKER_FIELDS: Final[Mapping[str, Checker]] = {
    "cooldown": _seconds("breaker cooldown"),
    "failures": _int_at_least("breaker failures", 1),
}


def _breaker(node: yaml.Node, report: Report) -> BreakerPolicy | Invalid:
    if not isinstance(node, yaml.MappingNode):
        expected = "breaker: expected {failures: N, cooldown: SECONDS}"
        return report.bad(node, f"{expected}, got {shown(node, report)}")
    found: dict[str, object] = {}
    problems_before = len(report.errors)
    for key_node, value_node in node.value:
        key = report.value(key_node)
        check = _BREAKER_FIELDS.get(key) if isinstance(key, str) else None
        if check is None:
            known = ", ".join(_BREAKER_FIELDS)
            report.bad(key_node, f"unknown key {key!r} in breaker (expected one of: {known})")
        elif key in found:
            report.bad(key_node, f"duplicate key {key!r} in breaker")
        else:
            found[str(key)] = check(value_node, report)
    missing = [key for key in _BREAKER_FIELDS if key not in found]
    if missing:
        return report.bad(node, f"breaker: missing {' and '.join(missing)}")
    failures, cooldown = found["failures"], found["cooldown"]
    # Any problem inside (an unknown or repeated key too) drops the breaker as a whole.
    if len(report.errors) > problems_before:
        return INVALID
    assert isinstance(failures, int) and isinstance(cooldown, float)
    return BreakerPolicy(failures, cooldown)


# Every key a callback's (or `defaults`') policy may set, and how its value is checked.
FIELDS: Final[Mapping[str, Checker]] = {
    "backoff": _backoff,
    "breaker": _optional(_breaker),
    "concurrency": _optional(_int_at_least("concurrency", 1)),
    "rate": _optional(_rate),
    "retries": _int_at_least("retries", 0),
    "retry_on": _retry_on,
    "timeout": _optional(_seconds("timeout")),
}
