"""Tests of the trigger grammar: parsing, errors, formatting, terms and evaluation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisord.core.errors import TriggerError
from supervisord.core.model import EVENT_NAMES, And, Expr, Or, Term
from supervisord.core.triggers import evaluate, format_trigger, parse_trigger, terms_of

T = Term

PARSES = [
    ("complete-job-self", T("complete", "job", "self", None)),
    ("running-job-19294", T("running", "job", "19294", None)),
    ("complete-subjob-self-2", T("complete", "subjob", "self", "2")),
    ("done-job-hello", T("done", "job", "hello", None)),
    (
        "complete-job-self && complete-job-parent",
        And((T("complete", "job", "self", None), T("complete", "job", "parent", None))),
    ),
    (
        "(complete-work-ribgen-5 && complete-work-render-5) || complete-work-composite-5",
        Or(
            (
                And(
                    (
                        T("complete", "work", "ribgen", "5"),
                        T("complete", "work", "render", "5"),
                    )
                ),
                T("complete", "work", "composite", "5"),
            )
        ),
    ),
    ("failed-work-self-*", T("failed", "work", "self", "*")),
    ("complete-work-self-Segment:1-100", T("complete", "work", "self", "Segment:1-100")),
    ("globaltime-800000000", T(None, "globaltime", None, "800000000")),
    ("globalrepeat-800000000-3600", T(None, "globalrepeat", None, "800000000-3600")),
    ("dummy-time-self-800000000", T("dummy", "time", "self", "800000000")),
    # SPEC.md examples
    ("failed-job-self", T("failed", "job", "self", None)),
    ("done-job-self", T("done", "job", "self", None)),
    ("done-work-self-*", T("done", "work", "self", "*")),
    ("submit-job-self", T("submit", "job", "self", None)),
    (
        "complete-job-self && complete-job-42",
        And((T("complete", "job", "self", None), T("complete", "job", "42", None))),
    ),
    # case, spacing and keyword forms
    ("COMPLETE-Job-SELF", T("complete", "job", "self", None)),
    ("complete-job-Render", T("complete", "job", "Render", None)),
    ("complete-job-self-*", T("complete", "job", "self", None)),
    ("  complete-job-self  ", T("complete", "job", "self", None)),
    ("GlobalTime-5", T(None, "globaltime", None, "5")),
    ("submit-repeat-self-100-60", T("submit", "repeat", "self", "100-60")),
    ("running-host-self-node-01", T("running", "host", "self", "node-01")),
    ("failed-subjob-parent-*", T("failed", "subjob", "parent", "*")),
    (
        "complete-job-self&&failed-job-parent",
        And((T("complete", "job", "self", None), T("failed", "job", "parent", None))),
    ),
    (
        "complete-job-self AND failed-job-self and killed-job-self",
        And(
            (
                T("complete", "job", "self", None),
                T("failed", "job", "self", None),
                T("killed", "job", "self", None),
            )
        ),
    ),
    (
        "complete-job-self Or failed-job-self || killed-job-self",
        Or(
            (
                T("complete", "job", "self", None),
                T("failed", "job", "self", None),
                T("killed", "job", "self", None),
            )
        ),
    ),
    (
        "complete-job-1 || complete-job-2 && complete-job-3",
        Or(
            (
                T("complete", "job", "1", None),
                And((T("complete", "job", "2", None), T("complete", "job", "3", None))),
            )
        ),
    ),
    (
        "complete-job-1 && (complete-job-2 || complete-job-3)",
        And(
            (
                T("complete", "job", "1", None),
                Or((T("complete", "job", "2", None), T("complete", "job", "3", None))),
            )
        ),
    ),
    (
        "(complete-job-1 && complete-job-2) && complete-job-3",
        And(
            (
                And((T("complete", "job", "1", None), T("complete", "job", "2", None))),
                T("complete", "job", "3", None),
            )
        ),
    ),
    ("((complete-job-self))", T("complete", "job", "self", None)),
]


@pytest.mark.parametrize(("text", "expected"), PARSES, ids=[p[0] or "<empty>" for p in PARSES])
def test_parse(text: str, expected: Expr) -> None:
    parsed = parse_trigger(text)
    assert parsed == expected
    assert parse_trigger(format_trigger(parsed)) == parsed


ERRORS = [
    ("complete-jb-self", "unknown event type 'jb' in 'complete-jb-self'"),
    ("&&", "expected a term at the start, got '&&'"),
    ("(complete-job-self", "missing ')'"),
    ("complete-job-self)", "unexpected ')' at column 18"),
    ("complete-job", "expected name-type-context in 'complete-job'"),
    ("complete", "expected name-type-context in 'complete'"),
    ("", "empty trigger"),
    ("   ", "empty trigger"),
    ("complete-job-self &&", "expected a term after '&&'"),
    ("complete-job-self ||", "expected a term after '||'"),
    ("complete-job-self AND", "expected a term after 'AND'"),
    ("complete-job-self && || failed-job-self", "expected a term after '&&', got '||'"),
    ("bogus-job-self", "unknown event name 'bogus' in 'bogus-job-self'"),
    ("complete-subjob-self-x", "expected a subjob id or '*', got 'x' in 'complete-subjob-self-x'"),
    ("complete-job-", "empty context in 'complete-job-'"),
    ("complete-job-self-3", "a job term takes no extra, got '3'"),
    ("complete-work-self-", "empty extra in 'complete-work-self-'"),
    ("dummy-time-self", "expected a Qube time (an integer), got nothing"),
    ("dummy-time-self-noon", "expected a Qube time (an integer), got 'noon'"),
    ("submit-repeat-self-100", "expected time-interval, got '100'"),
    ("submit-repeat-self-100-0", "expected time-interval, got '100-0'"),
    ("globaltime-", "expected a Qube time (an integer), got nothing"),
    ("globaltime-12-3", "expected a Qube time (an integer), got '12-3'"),
    ("globalrepeat-800000000", "expected time-interval, got '800000000'"),
    ("globalrepeat-8-x", "expected time-interval, got '8-x'"),
    ("complete-job-self failed-job-self", "expected '&&' or '||' before 'failed-job-self'"),
    ("()", "expected a term after '(', got ')'"),
    ("complete-job-self && ()", "expected a term after '(', got ')'"),
]


# Qube job dependency strings (what a job waits for at submission) are not triggers (SPEC §2).
DEPENDENCIES = [
    ("link-complete-job-220", "'link' is not an event name", "written complete-job-220"),
    ("LINK-done-work-221", "'link' is not an event name", "written done-work-221"),
    ("link-complete-job-220,link-done-job-221", "a comma list", "e.g. complete-job-220"),
    ("link-complete-job-220, link-done-job-221", "a comma list", "e.g. complete-job-220"),
    ("220", "a bare job id", "written complete-job-220"),
    ("220,221", "a comma list", "e.g. complete-job-220"),
    ("220.3", "a bare job id", "written complete-job-220"),
    ("link-whatever", "'link' is not an event name", "e.g. complete-job-220"),
    ("complete-job-self && link-done-job-3", "'link' is not an event name", "done-job-3"),
]


@pytest.mark.parametrize(("text", "why", "hint"), DEPENDENCIES, ids=[d[0] for d in DEPENDENCIES])
def test_dependency_strings_are_not_triggers(text: str, why: str, hint: str) -> None:
    with pytest.raises(TriggerError) as caught:
        parse_trigger(text)
    assert "is a Qube job dependency, not a callback trigger" in caught.value.reason
    assert why in caught.value.reason and hint in caught.value.reason


@pytest.mark.parametrize(("text", "reason"), ERRORS, ids=[e[0] or "<empty>" for e in ERRORS])
def test_parse_error(text: str, reason: str) -> None:
    with pytest.raises(TriggerError) as caught:
        parse_trigger(text)
    assert reason in caught.value.reason


FORMATS = [
    ("complete-job-self", "complete-job-self"),
    ("COMPLETE-JOB-SELF-*", "complete-job-self"),
    ("complete-job-1 AND complete-job-2", "complete-job-1 && complete-job-2"),
    (
        "(complete-job-1 || complete-job-2) && complete-job-3",
        "(complete-job-1 || complete-job-2) && complete-job-3",
    ),
    (
        "complete-job-1 OR complete-job-2 AND complete-job-3",
        "complete-job-1 || complete-job-2 && complete-job-3",
    ),
    ("globalrepeat-1-2", "globalrepeat-1-2"),
]


@pytest.mark.parametrize(("text", "canonical"), FORMATS, ids=[f[1] for f in FORMATS])
def test_format(text: str, canonical: str) -> None:
    assert format_trigger(parse_trigger(text)) == canonical


def test_terms_keep_order_and_duplicates() -> None:
    expr = parse_trigger("complete-job-1 || (complete-job-2 && complete-job-1)")
    assert [str(t) for t in terms_of(expr)] == [
        "complete-job-1",
        "complete-job-2",
        "complete-job-1",
    ]


EVALUATIONS = [
    ("complete-job-1", (True,), True),
    ("complete-job-1", (False,), False),
    ("complete-job-1 && complete-job-2", (True, False), False),
    ("complete-job-1 && complete-job-2", (True, True), True),
    ("complete-job-1 || complete-job-2 && complete-job-3", (False, True, True), True),
    ("complete-job-1 || complete-job-2 && complete-job-3", (False, True, False), False),
    ("(complete-job-1 || complete-job-2) && complete-job-3", (True, False, False), False),
    ("(complete-job-1 || complete-job-2) && complete-job-3", (False, True, True), True),
]


@pytest.mark.parametrize(
    ("text", "truth", "expected"), EVALUATIONS, ids=[f"{e[0]}={e[1]}" for e in EVALUATIONS]
)
def test_evaluate(text: str, truth: tuple[bool, ...], expected: bool) -> None:
    assert evaluate(parse_trigger(text), truth) is expected


def test_evaluate_rejects_wrong_length() -> None:
    with pytest.raises(ValueError, match="expected 2 truth values"):
        evaluate(parse_trigger("complete-job-1 && complete-job-2"), (True,))


# --- properties ------------------------------------------------------------

_word = st.from_regex(r"[A-Za-z][A-Za-z0-9_.:]{0,8}", fullmatch=True).filter(
    lambda w: w.lower() not in ("and", "or", "self", "parent")
)
_int = st.integers(min_value=0, max_value=10**10).map(str)
_context = st.one_of(st.sampled_from(["self", "parent"]), _int, _word)
_name = st.sampled_from(sorted(EVENT_NAMES))
_terms = st.one_of(
    st.builds(Term, _name, st.just("job"), _context, st.none()),
    st.builds(Term, _name, st.just("subjob"), _context, st.one_of(st.none(), st.just("*"), _int)),
    st.builds(Term, _name, st.just("work"), _context, st.one_of(_word, st.just("a-b:1-9"))),
    st.builds(Term, _name, st.just("time"), _context, _int),
    st.builds(
        Term,
        _name,
        st.just("repeat"),
        _context,
        st.builds(lambda t, i: f"{t}-{i + 1}", _int, st.integers(0, 99)),
    ),
    st.builds(Term, st.none(), st.just("globaltime"), st.none(), _int),
    st.builds(
        Term,
        st.none(),
        st.just("globalrepeat"),
        st.none(),
        st.builds(lambda t, i: f"{t}-{i + 1}", _int, st.integers(0, 99)),
    ),
)
_exprs: st.SearchStrategy[Expr] = st.recursive(
    _terms,
    lambda inner: st.one_of(
        st.builds(And, st.lists(inner, min_size=2, max_size=4).map(tuple)),
        st.builds(Or, st.lists(inner, min_size=2, max_size=4).map(tuple)),
    ),
    max_leaves=12,
)


@given(_exprs)
def test_format_round_trips(expr: Expr) -> None:
    assert parse_trigger(format_trigger(expr)) == expr


def _direct(expr: Expr, truth: dict[int, bool], counter: list[int]) -> bool:
    if isinstance(expr, Term):
        counter[0] += 1
        return truth[counter[0] - 1]
    values = [_direct(op, truth, counter) for op in expr.operands]
    return all(values) if isinstance(expr, And) else any(values)


@given(_exprs, st.data())
def test_evaluate_matches_direct_recursion(expr: Expr, data: st.DataObject) -> None:
    count = len(terms_of(expr))
    truth = data.draw(st.lists(st.booleans(), min_size=count, max_size=count))
    assert evaluate(expr, truth) == _direct(expr, dict(enumerate(truth)), [0])
