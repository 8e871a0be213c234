"""Tests of matching: owning jobs by context, compound-trigger latches, dry runs, persistence."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
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
        ["complete-work-ribgen-1"],
        [
            event("submit-job", 30, job={"label": "ribGen", "pgrp": 30}),
            event("submit-job", 31, job={"label": "render", "pgrp": 30, "pid": 30}),
        ],
        [
            (event("complete-work", 30, work="1"), [(0, 30), (0, 31)]),
            (event("complete-work", 31, work="1"), []),
            (event("complete-work", 32, work="1", job={"label": "RIBGEN"}), [(0, 32)]),
        ],
        id="qube-callbacks-page-ribGen-label-any-case",
    ),
    pytest.param(
        ["Complete-Work-Self-Frame5", "done-host-self-Node7", "complete-job-RENDER"],
        [event("submit-job", 40, job={"label": "Render"})],
        [
            (event("complete-work", 1, work="FRAME5"), [(0, 1)]),
            (event("COMPLETE-work", 1, work="frame5"), [(0, 1)]),
            (event("complete-work", 1, work="frame50"), []),
            (event("failed-host", 1, host="NODE7"), [(1, 1)]),
            (event("complete-JOB", 40), [(2, 40)]),
        ],
        id="names-types-work-hosts-labels-any-case",
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


def test_callbacks_see_the_event_as_sent() -> None:
    table, state = Table([callback("complete-work-ribgen-1")]), MatchState(60)
    e = event("Complete-Work", 7, work="1", job={"label": "ribGen", "user": "Alice"})
    [firing] = match(table, state, e)
    assert (e.doc["name"], e.doc["type"], e.job["label"]) == ("Complete", "Work", "ribGen")
    assert owner_job(state, e, firing.owner)["label"] == "ribGen"
    assert firing.why == ("complete-work-ribgen-1",)  # the term as the admin wrote it


def test_explicit_job_ids_cost_an_event_about_another_job_nothing() -> None:
    """Issue 16 workload M: 10,000 callbacks, one on every job and 9,999 on explicit job ids:
    an event about job 5 looks at the first only, and never asks for a label."""
    names = ("complete", "failed", "running", "submit", "done", "killed", "blocked")
    kinds = (("job", ""), ("work", "-*"), ("subjob", "-3"))
    lines = ["complete-job-self"] + [
        f"{names[i % 7]}-{kinds[i % 3][0]}-{900_000 + i}{kinds[i % 3][1]}" for i in range(9_999)
    ]
    table = Table([callback(t, line=n) for n, t in enumerate(lines, 1)])

    def no_label() -> str | None:
        raise AssertionError("no term watches a label: the label is never needed")

    assert table.lookup("complete", "job", None, 5, no_label) == ((0, (0,)),)
    [(i, _)] = table.lookup("complete", "job", None, 900_000, no_label)[1:]
    assert table.callbacks[i].trigger_text == "complete-job-900000"
    got = match(table, MatchState(60), event("complete-job", 900_000), dry_run=True)
    assert [(f.callback.line, f.owner) for f in got] == [(1, 900_000), (2, 900_000)]


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


# ---- the index against a matcher that walks every term of every callback (SPEC §2)

_CONTEXTS = ("self", "parent", "1", "2", "3", "Lab", "lab", "OTHER")
_EXTRAS = {"job": (None,), "work": (None, "*", "F1", "f1", "f2"), "subjob": (None, "*", "1")}


@st.composite
def _terms(draw: st.DrawFn) -> Term:
    kind = draw(st.sampled_from(sorted(_EXTRAS)))
    name = draw(st.sampled_from(("complete", "failed", "done", "running")))
    return Term(name, kind, draw(st.sampled_from(_CONTEXTS)), draw(st.sampled_from(_EXTRAS[kind])))


@st.composite
def _triggers(draw: st.DrawFn) -> Expr:
    terms = draw(st.lists(_terms(), min_size=1, max_size=3))
    if len(terms) == 1:
        return terms[0]
    return And(tuple(terms)) if draw(st.booleans()) else Or(tuple(terms))


@st.composite
def _events(draw: st.DrawFn) -> Any:
    kind = draw(st.sampled_from(("job", "work", "subjob")))
    name = draw(st.sampled_from(("complete", "failed", "Killed", "running", "submit")))
    job: dict[str, Any] = {}
    for key, values in (("label", ("lab", "LAB", "other")), ("pgrp", (1, 2)), ("pid", (0, 1, 2))):
        if draw(st.booleans()):
            job[key] = draw(st.sampled_from(values))
    extra = {"work": {"work": draw(st.sampled_from(("F1", "f1", "f2")))},
             "subjob": {"subid": draw(st.integers(0, 2))}}.get(kind, {})  # fmt: skip
    return event(f"{name}-{kind}", draw(st.integers(1, 4)), job=job, **extra)


def _walk_all(callbacks: list[Callback], state: MatchState, latched: dict[Any, frozenset[int]],
              e: Any, dry_run: bool) -> list[tuple[int, int, tuple[str, ...]]]:  # fmt: skip
    """What fires, found by comparing every term with the event, folding case each time."""
    x = e.job_id
    subject = {**(state.registry.get(x) or {}), **e.job}
    pgrp = subject.get("pgrp") if isinstance(subject.get("pgrp"), int) else x
    fired = []
    for i, cb in enumerate(callbacks):
        touched: dict[int, set[int]] = {}
        for p, term in enumerate(cb.terms):
            names = ("complete", "failed", "killed") if term.name == "done" else (term.name,)
            extra = {"work": e.work, "subjob": str(e.subid)}.get(e.type)
            if e.name not in names or e.type != term.type:
                continue
            if term.extra not in (None, "*") and term.extra.casefold() != str(extra).casefold():
                continue
            context = str(term.context)
            if context == "self":
                owners = [x]
            elif context == "parent":
                owners = state.registry.children_of(x)
            elif context.isdecimal():
                owners = [x] if int(context) == x else []
            elif str(subject.get("label")).casefold() == context.casefold():
                owners = sorted({x, *state.registry.pgrp_ids(pgrp)})
            else:
                owners = []
            for owner in owners:
                touched.setdefault(owner, set()).add(p)
        for owner in sorted(touched):
            now = latched.get((i, owner), frozenset()) | touched[owner]
            if isinstance(cb.trigger, Term) or holds(cb.trigger, now):
                fired.append((i, owner, tuple(str(cb.terms[p]) for p in sorted(now))))
                now = frozenset()
            if not dry_run and not isinstance(cb.trigger, Term):
                latched[(i, owner)] = now
    return fired


@settings(max_examples=300, deadline=None)
@given(st.lists(_triggers(), min_size=1, max_size=8), st.lists(_events(), max_size=25))
def test_the_index_fires_what_walking_every_term_fires(
    triggers: list[Expr], events: list[Any]
) -> None:
    callbacks = [callback(t, line=n) for n, t in enumerate(triggers, 1)]
    table, state, reference = Table(callbacks), MatchState(60), MatchState(60)
    latched: dict[Any, frozenset[int]] = {}
    for e in events:
        for dry_run in (True, False):
            got = [(callbacks.index(f.callback), f.owner, f.why)
                   for f in match(table, state, e, dry_run=dry_run)]  # fmt: skip
            if not dry_run:
                reference.registry.observe(e)
            assert got == _walk_all(callbacks, reference, latched, e, dry_run)
