"""Tests of matching: owning jobs by context, compound-trigger latches, dry runs, persistence."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisord.core.events import validate_event
from supervisord.core.matching import MatchState, Table, holds, match, owner_job, state_key
from supervisord.core.model import And, Callback, Expr, Or, Term
from supervisord.core.triggers import parse_trigger, terms_of

NOW = 1_764_064_000.0


def callback(trigger: str | Expr, line: int = 1, file: str | None = None) -> Callback:
    expr = parse_trigger(trigger) if isinstance(trigger, str) else trigger
    text = trigger if isinstance(trigger, str) else repr(trigger)
    return Callback(file or f"cb{line}.py", "/cbdir", line, "python", text, expr, terms_of(expr))


def event(name_type: str, job_id: int, **fields: Any) -> Any:
    name, kind = name_type.split("-")
    job_doc = {"id": job_id, **fields.pop("job", {})}
    return validate_event({"name": name, "type": kind, "job": job_doc, **fields}, NOW)


# Jobs some cases register first (through submit events, which match none of the triggers).
FAMILY = [
    event("submit-job", 1, job={"label": "main", "pgrp": 1, "pid": 0}),
    event("submit-job", 2, job={"label": "child", "pgrp": 1, "pid": 1}),
    event("submit-job", 3, job={"label": "child", "pgrp": 1, "pid": 1}),
]
PGRP = [
    event("submit-job", 10, job={"label": "hello", "pgrp": 10}),
    event("submit-job", 11, job={"label": "other", "pgrp": 10, "pid": 10}),
    event("submit-job", 12, job={"label": "hello", "pgrp": 12}),
]
RENDER = [
    event("submit-job", 20, job={"label": "ribgen", "pgrp": 20}),
    event("submit-job", 21, job={"label": "render", "pgrp": 20, "pid": 20}),
    event("submit-job", 22, job={"label": "composite", "pgrp": 20, "pid": 20}),
]
RIBGEN = "(complete-work-ribgen-5 && complete-work-render-5) || complete-work-composite-5"

# (triggers, jobs registered first, [(event, [(callback index, owner), ...]), ...])
CASES: list[Any] = [
    pytest.param(
        ["complete-job-self"],
        [],
        [
            (event("complete-job", 5), [(0, 5)]),
            (event("failed-job", 5), []),
            (event("complete-subjob", 5, subid=1), []),
            (event("complete-job", 6), [(0, 6)]),
        ],
        id="complete-job-self",
    ),
    pytest.param(
        ["running-job-19294"],
        [],
        [(event("running-job", 19294), [(0, 19294)]), (event("running-job", 7), [])],
        id="running-job-19294",
    ),
    pytest.param(
        ["complete-subjob-self-2"],
        [],
        [
            (event("complete-subjob", 5, subid=2), [(0, 5)]),
            (event("complete-subjob", 5, subid=3), []),
            (event("complete-job", 5), []),
        ],
        id="complete-subjob-self-2",
    ),
    pytest.param(
        ["done-job-hello"],
        PGRP,
        [
            (event("failed-job", 10), [(0, 10), (0, 11)]),
            (event("complete-job", 11), []),
            (event("killed-job", 12), [(0, 12)]),
            (event("running-job", 10), []),
        ],
        id="done-job-hello",
    ),
    pytest.param(
        ["complete-job-self && complete-job-parent"],
        FAMILY,
        [
            (event("complete-job", 2), []),
            (event("complete-job", 1), [(0, 2)]),
            (event("complete-job", 3), [(0, 3)]),
        ],
        id="self-and-parent",
    ),
    pytest.param(
        [RIBGEN],
        RENDER,
        [
            (event("complete-work", 20, work="5"), []),
            (event("complete-work", 21, work="4"), []),
            (event("complete-work", 21, work=5), [(0, 20), (0, 21), (0, 22)]),
            (event("complete-work", 22, work="5"), [(0, 20), (0, 21), (0, 22)]),
            (event("complete-work", 21, work="5"), []),
        ],
        id="ribgen-render-composite",
    ),
    pytest.param(
        ["failed-work-self-*"],
        [],
        [
            (event("failed-work", 5, work="frame1"), [(0, 5)]),
            (event("failed-work", 5, work="frame2"), [(0, 5)]),
            (event("complete-work", 5, work="frame1"), []),
        ],
        id="failed-work-self-any",
    ),
    pytest.param(
        ["complete-work-self-Segment:1-100"],
        [],
        [
            (event("complete-work", 5, work="Segment:1-100"), [(0, 5)]),
            (event("complete-work", 5, work="Segment:1-10"), []),
        ],
        id="work-name-with-dashes",
    ),
    pytest.param(
        ["done-job-self", "failed-job-self", "complete-job-self"],
        [],
        [(event("failed-job", 5), [(0, 5), (1, 5)])],
        id="done-alias",
    ),
    pytest.param(
        ["complete-job-self && complete-work-self"],
        [],
        [
            (event("complete-job", 1), []),
            (event("complete-work", 2, work="a"), []),
            (event("complete-work", 1, work="a"), [(0, 1)]),
        ],
        id="latches-are-per-job",
    ),
    pytest.param(
        ["complete-job-self && complete-job-42"],
        [],
        [
            (event("complete-job", 1), []),
            (event("complete-job", 42), [(0, 42)]),
            (event("complete-job", 1), []),
        ],
        id="self-and-job-id-fires-only-for-that-job",
    ),
    pytest.param(
        ["complete-job-self && failed-work-self"],
        [],
        [
            (event("complete-job", 1), []),
            (event("failed-work", 1, work="w"), [(0, 1)]),
            (event("failed-work", 1, work="w"), []),
            (event("complete-job", 1), [(0, 1)]),
        ],
        id="latches-clear-after-firing",
    ),
    pytest.param(
        ["complete-job-self || done-job-self"],
        [],
        [(event("complete-job", 1), [(0, 1)])],
        id="two-terms-one-event-one-firing",
    ),
    pytest.param(
        ["complete-host-self-node7", "complete-host-self"],
        [],
        [
            (event("complete-host", 1, host="node7"), [(0, 1), (1, 1)]),
            (event("complete-host", 1, host="node8"), [(1, 1)]),
        ],
        id="host-extra",
    ),
    pytest.param(
        ["complete-job-child", "done-job-parent"],
        FAMILY,
        [
            (event("complete-job", 2), [(0, 1), (0, 2), (0, 3)]),
            (event("failed-job", 1), [(1, 2), (1, 3)]),
        ],
        id="label-and-parent-order",
    ),
]


@pytest.mark.parametrize(("triggers", "setup", "steps"), CASES)
def test_doc_examples(triggers: list[str], setup: list[Any], steps: list[Any]) -> None:
    callbacks = [callback(t, line=i + 1) for i, t in enumerate(triggers)]
    table, state = Table(callbacks), MatchState(86400)
    for e in setup:
        assert match(table, state, e) == []
    for number, (e, expected) in enumerate(steps, 1):
        got = [(callbacks.index(f.callback), f.owner) for f in match(table, state, e)]
        assert got == expected, f"step {number}: {e.name}-{e.type} job={e.job_id}"


def test_why_lists_latched_terms() -> None:
    table, state = Table([callback("complete-job-self && complete-job-parent")]), MatchState(60)
    for e in FAMILY:
        match(table, state, e)
    match(table, state, event("complete-job", 2))
    [firing] = match(table, state, event("complete-job", 1))
    assert (firing.owner, firing.why) == (2, ("complete-job-self", "complete-job-parent"))
    [single] = match(Table([callback("done-job-self")]), state, event("killed-job", 4))
    assert single.why == ("done-job-self",)


def test_dry_run_changes_nothing() -> None:
    table, state = Table([callback("complete-job-self && failed-work-self")]), MatchState(60)
    match(table, state, event("complete-job", 1))
    state.registry.take_dirty(), state.latches.take_dirty()
    probe = event("failed-work", 1, work="w", job={"label": "x"})
    assert [f.owner for f in match(table, state, probe, dry_run=True)] == [1]
    assert [f.owner for f in match(table, state, probe, dry_run=True)] == [1]
    assert state.registry.take_dirty() == {} and state.latches.take_dirty() == {}
    assert state.registry.get(1) == {"id": 1, "status": "complete"}
    assert match(table, state, event("failed-work", 2, work="w"), dry_run=True) == []
    assert len(state.registry) == 1


def test_dry_run_resolves_labels_with_the_event_job() -> None:
    table, state = Table([callback("complete-job-render")]), MatchState(60)
    match(table, state, event("submit-job", 7, job={"label": "render", "pgrp": 5}))
    probe = event("complete-job", 8, job={"label": "render", "pgrp": 5})
    assert [f.owner for f in match(table, state, probe, dry_run=True)] == [7, 8]
    assert state.registry.get(8) is None


def test_owner_job() -> None:
    state = MatchState(60)
    e = event("complete-job", 3, job={"name": "shot"})
    assert owner_job(state, e, 3) == {"id": 3, "name": "shot"}
    match(Table([]), state, e)
    assert owner_job(state, e, 3) == {"id": 3, "name": "shot", "status": "complete"}
    assert owner_job(state, e, 9) == {"id": 9}
    assert owner_job(state, e, None) == {}


def _replay(table: Table, state: MatchState, events: list[Any]) -> list[list[tuple[int, int]]]:
    return [[(f.callback.line, f.owner or 0) for f in match(table, state, e)] for e in events]


def test_persistence_round_trip() -> None:
    table = Table([callback("complete-job-self && complete-job-parent", 1), callback(RIBGEN, 2)])
    before, after = (
        FAMILY + RENDER + [event("complete-job", 2)],
        [
            event("complete-work", 20, work="5"),
            event("complete-job", 1),
            event("complete-work", 21, work="5"),
        ],
    )
    live = MatchState(60)
    _replay(table, live, before)
    jobs, latches = live.registry.take_dirty(), live.latches.take_dirty()
    stored_jobs = json.loads(json.dumps(list(jobs.items())))
    restored = MatchState(60)
    restored.registry.load((i, row) for i, row in stored_jobs if row is not None)
    restored.latches.load((k, v) for k, v in latches.items() if v)
    assert _replay(table, restored, after) == _replay(table, live, after)
    assert restored.latches.take_dirty().keys() == live.latches.take_dirty().keys()


def test_latch_state_dropped_for_expired_jobs_and_removed_callbacks() -> None:
    cb = callback("complete-job-self && failed-work-self")
    table, state = Table([cb]), MatchState(10)
    match(table, state, event("complete-job", 1, time=100.0))
    match(table, state, event("failed-work", 2, work="w"))
    assert len(state.latches) == 2
    assert state.expire(111.0) == [1]
    assert len(state.latches) == 1
    key = state_key(cb)
    state.latches.drop_callbacks([key])
    assert len(state.latches) == 0
    assert state.latches.take_dirty() == {(key, 1): None, (key, 2): None}


@pytest.mark.parametrize(
    ("new_trigger", "line", "fires"),
    [
        ("complete-job-self && failed-work-self", 1, [1]),
        ("failed-work-self && complete-job-self", 1, []),
        ("complete-job-self && failed-work-self", 2, []),
    ],
    ids=["unchanged", "edited-in-place", "moved"],
)
def test_reload_keeps_latches_only_of_unchanged_callbacks(
    new_trigger: str, line: int, fires: list[int]
) -> None:
    old = callback("complete-job-self && failed-work-self", 1)
    state = MatchState(60)
    match(Table([old]), state, event("complete-job", 1))
    # After a restart too: the state is loaded afresh, and the new table adopts it.
    restarted = MatchState(60)
    restarted.latches.load((k, v) for k, v in state.latches.take_dirty().items() if v)
    for s in (state, restarted):
        got = match(Table([callback(new_trigger, line)]), s, event("failed-work", 1, work="w"))
        assert [f.owner for f in got] == fires


def test_large_table_matches_only_what_can_match() -> None:
    other = [
        Term(n, t, "self", None) for n in ("submit", "running", "blocked") for t in ("job", "work")
    ]
    callbacks = [
        Callback(f"f{i}.py", "/d", i, "python", "x", other[i % 6], (other[i % 6],))
        for i in range(1, 10_001)
    ]
    target = Term("complete", "work", "self", "frame5")
    callbacks.insert(5000, Callback("t.py", "/d", 0, "python", "x", target, (target,)))
    table = Table(callbacks)
    assert len(table.candidates("complete", "work", "frame5")) == 1
    [firing] = match(table, MatchState(60), event("complete-work", 3, work="frame5"))
    assert (firing.callback.file, firing.owner) == ("t.py", 3)


def test_terms_of_other_extras_are_never_candidates() -> None:
    """10,000 callbacks of one name and type told apart only by the work name: an event of
    one frame looks at the callbacks of that frame and those of any frame, in table order."""
    frames = [Term("complete", "work", "self", f"frame{i}") for i in range(10_000)]
    callbacks = [
        Callback(f"f{i}.py", "/d", i + 1, "python", "x", t, (t,)) for i, t in enumerate(frames)
    ]
    anyone = Term("complete", "work", "self", "*")
    both = And((Term("complete", "work", "self", "frame7"), anyone))
    callbacks.insert(3, Callback("any.py", "/d", 0, "python", "x", anyone, (anyone,)))
    callbacks.append(Callback("both.py", "/d", 99_999, "python", "x", both, both.operands))
    table = Table(callbacks)
    assert [table.callbacks[i].file for i, _ in table.candidates("complete", "work", "frame7")] == [
        "any.py", "f7.py", "both.py",
    ]  # fmt: skip
    got = match(table, MatchState(60), event("complete-work", 3, work="frame7"))
    assert [f.callback.file for f in got] == ["any.py", "f7.py", "both.py"]


@st.composite
def expressions(draw: st.DrawFn, depth: int = 3) -> Expr:
    if depth == 0 or draw(st.booleans()):
        return Term("complete", "job", str(draw(st.integers(0, 10**6))), None)
    operands = tuple(draw(st.lists(expressions(depth - 1), min_size=1, max_size=3)))
    return And(operands) if draw(st.booleans()) else Or(operands)


def _direct(expr: Expr, truth: dict[int, bool], counter: list[int]) -> bool:
    if isinstance(expr, Term):
        counter[0] += 1
        return truth[counter[0] - 1]
    values = [_direct(op, truth, counter) for op in expr.operands]
    return all(values) if isinstance(expr, And) else any(values)


@given(expressions(), st.sets(st.integers(0, 30)))
def test_latch_evaluator_agrees_with_boolean_evaluation(expr: Expr, latched: set[int]) -> None:
    n = len(terms_of(expr))
    truth = {i: i in latched for i in range(n)}
    assert holds(expr, frozenset(latched)) == _direct(expr, truth, [0])


@given(st.lists(st.integers(0, 2), max_size=20))
def test_and_fires_exactly_when_every_term_was_seen(sequence: list[int]) -> None:
    names = ["complete-job", "failed-work", "killed-subjob"]
    table, state = (
        Table([callback("complete-job-self && failed-work-self && killed-subjob-self")]),
        MatchState(60),
    )
    seen: set[int] = set()
    for i in sequence:
        fired = match(table, state, event(names[i], 1, work="w", subid=0))
        seen.add(i)
        assert bool(fired) == (seen == {0, 1, 2})
        if fired:
            seen.clear()
