"""Tests of the policy.yaml parser (SPEC §7.1): values, merging, and every error at its line."""

from __future__ import annotations

from typing import Any

import pytest

from supervisord.core.policy import (
    DEFAULT_POLICY,
    BreakerPolicy,
    Policy,
    PolicySet,
    Rate,
    parse_policy,
)

CALLBACKS = ("logFailuresToDB.py", "mail-status.qcb", "checkWork.pl", "submitted.py")

SPEC_EXAMPLE = """\
defaults:
  retries: 0
logFailuresToDB.py:
  retries: 5              # further attempts after the first; 0 = Qube's behaviour
  backoff: [10, 3600]     # first delay and cap, seconds; exponential, full jitter
  retry_on: [failed, timeout, error]   # outcomes retried; or exit codes: [75, timeout]
  concurrency: 2          # at most 2 runs of this callback at once
  rate: 20/s              # token bucket: at most 20 starts a second (also /m, /h)
  timeout: 60             # overrides supervisor_callback_timeout for this callback
  breaker: {failures: 5, cooldown: 60}
"""


def parse(text: str) -> tuple[PolicySet, list[str]]:
    policies, errors = parse_policy(text, "policy.yaml", CALLBACKS)
    return policies, [str(e) for e in errors]


def test_spec_example() -> None:
    policies, errors = parse(SPEC_EXAMPLE)
    assert errors == []
    assert policies.for_callback("logFailuresToDB.py") == Policy(
        retries=5,
        backoff=(10.0, 3600.0),
        retry_on=frozenset({"failed", "timeout", "error"}),
        concurrency=2,
        rate=Rate(20.0, 1.0),
        timeout=60.0,
        breaker=BreakerPolicy(5, 60.0),
    )
    assert policies.for_callback("mail-status.qcb") == DEFAULT_POLICY
    assert not policies.is_default


def test_default_policy_is_qube_behaviour() -> None:
    assert (DEFAULT_POLICY.retries, DEFAULT_POLICY.max_attempts) == (0, 1)
    assert DEFAULT_POLICY.concurrency is None and DEFAULT_POLICY.rate is None
    assert DEFAULT_POLICY.timeout is None and DEFAULT_POLICY.breaker is None
    assert DEFAULT_POLICY.retry_on == frozenset({"failed", "timeout", "error"})
    assert DEFAULT_POLICY.is_default


NO_POLICY = [
    pytest.param("", id="empty"),
    pytest.param("# only a comment\n\n   # and another\n", id="comments"),
    pytest.param("~\n", id="null document"),
    pytest.param("{}\n", id="empty mapping"),
    pytest.param("---\n", id="document marker only"),
    pytest.param("defaults:\nsubmitted.py:\n", id="keys without fields"),
    pytest.param("defaults: {retries: 0}\nsubmitted.py: {}\n", id="qube values spelled out"),
]


@pytest.mark.parametrize("text", NO_POLICY)
def test_no_policy(text: str) -> None:
    policies, errors = parse(text)
    assert errors == []
    assert policies.is_default
    assert all(policies.for_callback(file) == DEFAULT_POLICY for file in CALLBACKS)


FIELD_VALUES: list[Any] = [
    pytest.param("retries: 0", "retries", 0, id="retries zero"),
    pytest.param("retries: 12", "retries", 12, id="retries"),
    pytest.param("backoff: [1, 30]", "backoff", (1.0, 30.0), id="backoff ints"),
    pytest.param("backoff: [0.5, 0.5]", "backoff", (0.5, 0.5), id="backoff first equals cap"),
    pytest.param("backoff:\n    - 2\n    - 8", "backoff", (2.0, 8.0), id="backoff block list"),
    pytest.param("retry_on: [timeout]", "retry_on", frozenset({"timeout"}), id="retry_on one"),
    pytest.param(
        "retry_on: [75, timeout, 1, 255]",
        "retry_on",
        frozenset({75, "timeout", 1, 255}),
        id="retry_on exit codes",
    ),
    pytest.param("retry_on: [error, error]", "retry_on", frozenset({"error"}), id="retry_on dup"),
    pytest.param("retry_on: []", "retry_on", frozenset(), id="retry_on nothing"),
    pytest.param("concurrency: 1", "concurrency", 1, id="concurrency"),
    pytest.param("concurrency: null", "concurrency", None, id="concurrency null"),
    pytest.param("rate: 20/s", "rate", Rate(20.0, 1.0), id="rate per second"),
    pytest.param("rate: 5/m", "rate", Rate(5.0, 60.0), id="rate per minute"),
    pytest.param("rate: 0.5 / h", "rate", Rate(0.5, 3600.0), id="rate fraction spaced"),
    pytest.param("rate: '.25/s'", "rate", Rate(0.25, 1.0), id="rate quoted"),
    pytest.param("rate: ~", "rate", None, id="rate null"),
    pytest.param("timeout: 0.25", "timeout", 0.25, id="timeout fraction"),
    pytest.param("timeout: 3600", "timeout", 3600.0, id="timeout"),
    pytest.param(
        "breaker: {failures: 1, cooldown: 0.5}", "breaker", BreakerPolicy(1, 0.5), id="br"
    ),
    pytest.param(
        "breaker:\n    cooldown: 60\n    failures: 3",
        "breaker",
        BreakerPolicy(3, 60.0),
        id="breaker block mapping",
    ),
]


@pytest.mark.parametrize(("field_text", "name", "value"), FIELD_VALUES)
def test_field_values(field_text: str, name: str, value: object) -> None:
    policies, errors = parse(f"submitted.py:\n  {field_text}\n")
    assert errors == []
    policy = policies.for_callback("submitted.py")
    assert getattr(policy, name) == value
    assert policies.for_callback("checkWork.pl") == DEFAULT_POLICY


MERGE_TEXT = """\
defaults:
  retries: 3
  timeout: 30
  concurrency: 2
  breaker: {failures: 5, cooldown: 60}
logFailuresToDB.py:
  retries: 1
  concurrency: null
submitted.py:
  breaker: {failures: 1, cooldown: 5}
  rate: 2/m
"""
MERGED = Policy(retries=3, timeout=30.0, concurrency=2, breaker=BreakerPolicy(5, 60.0))
MERGE_CASES = [
    pytest.param(
        "logFailuresToDB.py",
        Policy(retries=1, timeout=30.0, breaker=BreakerPolicy(5, 60.0)),
        id="own keys win, null unsets",
    ),
    pytest.param(
        "submitted.py",
        Policy(
            retries=3,
            timeout=30.0,
            concurrency=2,
            rate=Rate(2.0, 60.0),
            breaker=BreakerPolicy(1, 5.0),
        ),
        id="own breaker replaces the default one whole",
    ),
    pytest.param("checkWork.pl", MERGED, id="no own key: defaults"),
    pytest.param("not-in-this-dir.py", MERGED, id="unknown file: defaults"),
]


@pytest.mark.parametrize(("file", "expected"), MERGE_CASES)
def test_defaults_merge_key_by_key(file: str, expected: Policy) -> None:
    policies, errors = parse(MERGE_TEXT)
    assert errors == []
    assert policies.defaults == MERGED
    assert policies.for_callback(file) == expected


IS_DEFAULT = [
    pytest.param(Policy(), True, id="nothing set"),
    pytest.param(Policy(backoff=(1.0, 2.0), retry_on=frozenset({75})), True, id="no retries"),
    pytest.param(Policy(retries=1), False, id="retries"),
    pytest.param(Policy(concurrency=4), False, id="concurrency"),
    pytest.param(Policy(rate=Rate(1.0, 1.0)), False, id="rate"),
    pytest.param(Policy(timeout=5.0), False, id="timeout"),
    pytest.param(Policy(breaker=BreakerPolicy(1, 1.0)), False, id="breaker"),
]


@pytest.mark.parametrize(("policy", "expected"), IS_DEFAULT)
def test_is_default(policy: Policy, expected: bool) -> None:
    assert policy.is_default is expected
    assert PolicySet(defaults=policy).is_default is expected
    assert PolicySet(by_file={"a.py": policy}).is_default is expected


RATES = [
    pytest.param(Rate(20.0, 1.0), "20/s", 20.0, id="per second"),
    pytest.param(Rate(30.0, 60.0), "30/m", 0.5, id="per minute"),
    pytest.param(Rate(0.5, 3600.0), "0.5/h", 0.5 / 3600, id="per hour"),
]


@pytest.mark.parametrize(("rate", "text", "per_second"), RATES)
def test_rate_value(rate: Rate, text: str, per_second: float) -> None:
    assert str(rate) == text
    assert rate.per_second == pytest.approx(per_second)


@pytest.mark.parametrize(
    ("count", "per"), [(0.0, 1.0), (-1.0, 1.0), (1.0, 0.0)], ids=["zero", "negative", "no period"]
)
def test_rate_checks_itself(count: float, per: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        Rate(count, per)


KEYS = "backoff, breaker, concurrency, rate, retries, retry_on, timeout"
SECONDS = "expected a positive number of seconds, got"
BACKOFF = "backoff: expected [first, cap], two positive numbers of seconds, got"
RETRY_ON = "retry_on: expected failed, timeout, error or an exit code 1..255, got"
RATE = "rate: expected N/s, N/m or N/h with N > 0, got"
BREAKER = "breaker: expected {failures: N, cooldown: SECONDS}, got"
NOT_CALLBACK = "is not a callback in callbacks.conf"
TOP = "expected callback file names (or defaults) as keys, got"
# (id, whole file, ["LINE: reason", ...])
FILE_ERRORS = [
    ("unknown key", "defaults: {}\nlogFailuresToDB.py:\n  retries: 1\n  retrys: 2\n",
     [f"4: unknown key 'retrys' for logFailuresToDB.py (expected one of: {KEYS})"]),
    ("unknown key in defaults", "defaults:\n  rate: 1/s\n  colour: red\n",
     [f"3: unknown key 'colour' for defaults (expected one of: {KEYS})"]),
    ("list as field", "submitted.py:\n  [retries]: 1\n",
     [f"2: unknown key a list for submitted.py (expected one of: {KEYS})"]),
    ("not a callback", "submitted.py: {}\nnosuch.py:\n  retries: 1\n",
     [f"2: 'nosuch.py' {NOT_CALLBACK}"]),
    ("not a callback, body checked", "nosuch.py:\n  retries: -1\n",
     [f"1: 'nosuch.py' {NOT_CALLBACK}", "2: retries: expected an integer >= 0, got -1"]),
    ("case-sensitive name", "Submitted.py: {}\n", [f"1: 'Submitted.py' {NOT_CALLBACK}"]),
    ("number as name", "12: {}\n", [f"1: '12' {NOT_CALLBACK}"]),
    ("list as name", "? [a.py]\n: {}\n", ["1: expected a callback file name as key, got a list"]),
    ("duplicate callback", "submitted.py: {}\n\nsubmitted.py: {retries: 1}\n",
     ["3: duplicate key 'submitted.py' (first at line 1)"]),
    ("duplicate field", "submitted.py:\n  retries: 1\n  timeout: 5\n  retries: 2\n",
     ["4: duplicate key 'retries' for submitted.py"]),
    ("top is a list", "- submitted.py\n", [f"1: {TOP} a list"]),
    ("top is text", "just text\n", [f"1: {TOP} 'just text'"]),
    ("callback not a mapping", "defaults: {}\nsubmitted.py: 3\n",
     ["2: expected policy keys for submitted.py, got 3"]),
    ("defaults a list", "defaults:\n  - retries\n",
     ["2: expected policy keys for defaults, got a list"]),
    ("yaml indentation", "submitted.py:\n  retries: 1\n timeout: 5\n",
     ["3: not valid YAML: expected <block end>, but found '<block mapping start>'"]),
    ("yaml tab", "submitted.py:\n\tretries: 1\n",
     ["2: not valid YAML: found character '\\t' that cannot start any token"]),
    ("yaml unclosed list", "submitted.py:\n  retries: 1\n  backoff: [1, 2\n",
     ["4: not valid YAML: expected ',' or ']', but got '<stream end>'"]),
    ("yaml two documents", "submitted.py: {}\n---\ncheckWork.pl: {}\n",
     ["2: not valid YAML: expected a single document in the stream, but found another document"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "expected"), [e[1:] for e in FILE_ERRORS], ids=[e[0] for e in FILE_ERRORS]
)
def test_file_errors(text: str, expected: list[str]) -> None:
    _policies, errors = parse(text)
    assert errors == [f"policy.yaml:{e}" for e in expected]


# (id, the lines under `submitted.py:` from line 2 on, ["LINE: reason", ...])
FIELD_ERRORS = [
    ("retries negative", "retries: -1", ["2: retries: expected an integer >= 0, got -1"]),
    ("retries float", "retries: 1.5", ["2: retries: expected an integer >= 0, got 1.5"]),
    ("retries bool", "retries: yes", ["2: retries: expected an integer >= 0, got yes"]),
    ("retries string", "retries: '3'", ["2: retries: expected an integer >= 0, got '3'"]),
    ("retries empty", "retries:", ["2: retries: expected an integer >= 0, got nothing"]),
    ("retries list", "retries: [1]", ["2: retries: expected an integer >= 0, got a list"]),
    ("unknown tag", "retries: !foo 3", ["2: retries: expected an integer >= 0, got '3'"]),
    ("python tag never built", "retry_on: [!!python/name:os.system x]", [f"2: {RETRY_ON} 'x'"]),
    ("backoff scalar", "backoff: 10", [f"2: {BACKOFF} 10"]),
    ("backoff of 3", "backoff: [1, 2, 3]", [f"2: {BACKOFF} a list"]),
    ("backoff item line", "backoff:\n    - 1\n    - 0", [f"4: {BACKOFF} 0"]),
    ("backoff negative", "backoff: [-1, 5]", [f"2: {BACKOFF} -1"]),
    ("backoff inf", "backoff: [.inf, 5]", [f"2: {BACKOFF} .inf"]),
    ("backoff bool", "backoff: [1, true]", [f"2: {BACKOFF} true"]),
    ("first > cap", "backoff: [60, 10]", ["2: backoff: first delay 60 is above the cap 10"]),
    ("retry_on ok", "retry_on: [ok]", [f"2: {RETRY_ON} 'ok'"]),
    ("retry_on code 0", "retry_on: [failed, 0]", [f"2: {RETRY_ON} 0"]),
    ("retry_on float", "retry_on: [7.5]", [f"2: {RETRY_ON} 7.5"]),
    ("retry_on two bad", "retry_on:\n    - 256\n    - crashed",
     [f"3: {RETRY_ON} 256", f"4: {RETRY_ON} 'crashed'"]),
    ("retry_on scalar", "retry_on: timeout", ["2: retry_on: expected a list, got 'timeout'"]),
    ("concurrency 0", "concurrency: 0", ["2: concurrency: expected an integer >= 1, got 0"]),
    ("concurrency 2.5", "concurrency: 2.5", ["2: concurrency: expected an integer >= 1, got 2.5"]),
    ("rate unit", "rate: 20/d", [f"2: {RATE} '20/d'"]),
    ("rate long unit", "rate: 20/sec", [f"2: {RATE} '20/sec'"]),
    ("rate zero", "rate: 0/s", [f"2: {RATE} '0/s'"]),
    ("rate negative", "rate: -1/s", [f"2: {RATE} '-1/s'"]),
    ("rate no unit", "rate: 20", [f"2: {RATE} 20"]),
    ("timeout zero", "timeout: 0", [f"2: timeout: {SECONDS} 0"]),
    ("timeout 1m", "timeout: 1m", [f"2: timeout: {SECONDS} '1m'"]),
    ("timeout nan", "timeout: .nan", [f"2: timeout: {SECONDS} .nan"]),
    ("breaker scalar", "breaker: 5", [f"2: {BREAKER} 5"]),
    ("breaker no cooldown", "breaker: {failures: 5}", ["2: breaker: missing cooldown"]),
    ("breaker empty", "breaker: {}", ["2: breaker: missing cooldown and failures"]),
    ("breaker values", "breaker:\n    failures: 0\n    cooldown: -5",
     ["3: breaker failures: expected an integer >= 1, got 0",
      f"4: breaker cooldown: {SECONDS} -5"]),
    ("breaker unknown key", "breaker:\n    failures: 2\n    cooldown: 5\n    reset: 9",
     ["5: unknown key 'reset' in breaker (expected one of: cooldown, failures)"]),
    ("breaker duplicate", "breaker: {failures: 2, cooldown: 5, failures: 3}",
     ["2: duplicate key 'failures' in breaker"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "expected"), [e[1:] for e in FIELD_ERRORS], ids=[e[0] for e in FIELD_ERRORS]
)
def test_field_errors(body: str, expected: list[str]) -> None:
    policies, errors = parse("submitted.py:\n  " + body + "\n")
    assert errors == [f"policy.yaml:{e}" for e in expected]
    assert policies.for_callback("submitted.py") == DEFAULT_POLICY  # the bad field is dropped


def test_every_error_collected_in_line_order_and_good_values_kept() -> None:
    text = """\
defaults:
  timeout: 30
  retries: -2
submitted.py:
  breaker: {failures: 0, cooldown: 9, extra: 1}
  rate: 3/m
nosuch.py: {}
checkWork.pl:
  concurrency: 3
  retrys: 4
"""
    policies, errors = parse(text)
    assert [e.split(": ")[0] for e in errors] == [
        "policy.yaml:3",
        "policy.yaml:5",
        "policy.yaml:5",
        "policy.yaml:7",
        "policy.yaml:10",
    ]
    # What did validate is still there, merged over the valid defaults.
    assert policies.for_callback("submitted.py") == Policy(timeout=30.0, rate=Rate(3.0, 60.0))
    assert policies.for_callback("checkWork.pl") == Policy(timeout=30.0, concurrency=3)


def test_error_carries_path_and_line() -> None:
    _policies, errors = parse_policy("a.py:\n  retries: x\n", "cb/policy.yaml", ["a.py"])
    (error,) = errors
    assert (error.path, error.line) == ("cb/policy.yaml", 2)
    assert error.reason == "retries: expected an integer >= 0, got 'x'"
