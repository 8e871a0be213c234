"""Tests of time triggers: schedules, due events, late firing after downtime, persistence."""

from __future__ import annotations

import pytest

from supervisord.core.clock import ClockState, Schedule, schedule_of
from supervisord.core.events import validate_event
from supervisord.core.matching import MatchState, Table, match
from supervisord.core.model import QUBE_EPOCH, Callback, Term
from supervisord.core.timers import due_events, next_deadline
from supervisord.core.triggers import parse_trigger, terms_of

T = 800_000_000  # a Qube time; its Unix time is T + QUBE_EPOCH
AT = T + QUBE_EPOCH


def callback(trigger: str, line: int = 1) -> Callback:
    expr = parse_trigger(trigger)
    return Callback(f"cb{line}.py", "/cbdir", line, "python", trigger, expr, terms_of(expr))


def setup(*triggers: str) -> tuple[Table, MatchState]:
    return Table([callback(t, i + 1) for i, t in enumerate(triggers)]), MatchState(86400)


def fired_at(table: Table, state: MatchState, now: float) -> list[tuple[int | None, int]]:
    return [(e.job_id, e.doc["qube_time"]) for e in due_events(table, state, now)]


@pytest.mark.parametrize(
    ("term", "expected"),
    [
        (Term(None, "globaltime", None, "100"), Schedule(100.0, None)),
        (Term(None, "globalrepeat", None, "100-60"), Schedule(100.0, 60.0)),
        (Term("dummy", "time", "self", "7"), Schedule(7.0, None)),
        (Term("dummy", "repeat", "self", "7-3"), Schedule(7.0, 3.0)),
        (Term(None, "globalrepeat", None, "100-0"), None),
        (Term(None, "globaltime", None, "soon"), None),
        (Term("complete", "job", "self", None), None),
    ],
    ids=["globaltime", "globalrepeat", "time", "repeat", "zero-interval", "garbage", "not-time"],
)
def test_schedule_of(term: Term, expected: Schedule | None) -> None:
    assert schedule_of(term) == expected


def test_schedule_steps() -> None:
    s = Schedule(100.0, 60.0)
    assert [s.latest(q) for q in (99, 100, 159, 160)] == [None, 100, 100, 160]
    assert [s.after(q) for q in (99, 100, 159, 160)] == [100, 160, 160, 220]
    assert Schedule(100.0, None).after(100) is None


def test_globaltime_fires_once() -> None:
    table, state = setup(f"globaltime-{T}")
    assert next_deadline(table, state.clock, AT - 100) == AT
    assert fired_at(table, state, AT - 1) == []
    [e] = due_events(table, state, AT + 0.01)
    assert (e.name, e.type, e.job_id, e.event_id) == ("dummy", "globaltime", None, None)
    assert e.doc == {
        "name": "dummy", "type": "globaltime", "time": AT + 0.01, "qube_time": T,
        "trigger": f"globaltime-{T}", "late": False, "callback": "/cbdir/callbacks.conf:1",
        "term": 0,
    }  # fmt: skip
    assert fired_at(table, state, AT + 10) == []
    assert next_deadline(table, state.clock, AT + 10) is None


def test_globalrepeat_schedule() -> None:
    table, state = setup(f"globalrepeat-{T}-60")
    assert next_deadline(table, state.clock, AT - 5) == AT
    assert fired_at(table, state, AT) == [(None, T)]
    assert next_deadline(table, state.clock, AT) == AT + 60
    assert fired_at(table, state, AT + 30) == []
    assert fired_at(table, state, AT + 60) == [(None, T + 60)]
    assert fired_at(table, state, AT + 121) == [(None, T + 120)]


def test_missed_time_fires_once_late_after_restart() -> None:
    table, state = setup(f"globalrepeat-{T}-60", f"globaltime-{T + 30}")
    assert next_deadline(table, state.clock, AT - 100) == AT
    rows = state.clock.take_dirty()
    assert rows == {
        (f"/cbdir/callbacks.conf:1=globalrepeat-{T}-60", 0): T - 100,
        (f"/cbdir/callbacks.conf:2=globaltime-{T + 30}", 0): T - 100,
    }
    restarted = MatchState(86400)
    restarted.clock.load([(list(k), v) for k, v in rows.items()])  # as the store returns keys
    assert next_deadline(table, restarted.clock, AT + 1000) == AT
    events = due_events(table, restarted, AT + 1000)
    assert [(e.doc["qube_time"], e.doc["late"]) for e in events] == [
        (T + 960, True),
        (T + 30, True),
    ]
    assert due_events(table, restarted, AT + 1000) == []
    assert next_deadline(table, restarted.clock, AT + 1000) == AT + 1020


def test_times_past_before_a_callback_is_loaded_do_not_fire() -> None:
    table, state = setup(f"globaltime-{T}", f"globalrepeat-{T}-60")
    assert fired_at(table, state, AT + 90) == []
    assert fired_at(table, state, AT + 120) == [(None, T + 120)]


def test_time_terms_fire_for_every_registry_job() -> None:
    table, state = setup(f"dummy-time-self-{T}", f"complete-repeat-self-{T}-10")
    for job_id in (3, 1, 2):
        doc = {"name": "submit", "type": "job", "job": {"id": job_id}}
        match(table, state, validate_event(doc, AT - 50))
    next_deadline(table, state.clock, AT - 50)
    events = due_events(table, state, AT)
    assert [(e.name, e.type, e.job_id, e.doc["job"]) for e in events] == [
        ("dummy", "time", 1, {"id": 1}),
        ("dummy", "time", 2, {"id": 2}),
        ("dummy", "time", 3, {"id": 3}),
        ("complete", "repeat", 1, {"id": 1}),
        ("complete", "repeat", 2, {"id": 2}),
        ("complete", "repeat", 3, {"id": 3}),
    ]
    firings = [f for e in events for f in match(table, state, e)]
    assert [(f.callback.line, f.owner) for f in firings] == [
        (1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3),
    ]  # fmt: skip


def test_clock_event_matches_only_its_own_term() -> None:
    table, state = setup(f"globaltime-{T}", f"globaltime-{T}", f"globaltime-{T} || globaltime-{T}")
    next_deadline(table, state.clock, AT - 1)
    events = due_events(table, state, AT)
    assert [(e.doc["callback"], e.doc["term"]) for e in events] == [
        ("/cbdir/callbacks.conf:1", 0),
        ("/cbdir/callbacks.conf:2", 0),
        ("/cbdir/callbacks.conf:3", 0),
        ("/cbdir/callbacks.conf:3", 1),
    ]
    per_event = [
        [(f.callback.line, f.owner, f.why) for f in match(table, state, e)] for e in events
    ]
    term = f"globaltime-{T}"
    assert per_event == [
        [(1, None, (term,))], [(2, None, (term,))], [(3, None, (term,))], [(3, None, (term,))],
    ]  # fmt: skip
    assert match(Table([]), state, events[0]) == []


def test_compound_with_a_time_term_latches_for_the_job() -> None:
    table, state = setup(f"complete-job-self && dummy-time-self-{T}")
    match(table, state, validate_event({"name": "complete", "type": "job", "job": {"id": 4}}, AT))
    next_deadline(table, state.clock, AT - 1)
    [tick] = due_events(table, state, AT)
    [firing] = match(table, state, tick)
    assert (firing.owner, firing.why) == (4, ("complete-job-self", f"dummy-time-self-{T}"))


def test_drop_callbacks() -> None:
    clock = ClockState()
    clock.load([(("a", 0), 5.0), (("b", 1), 6.0)])
    clock.drop_callbacks(["a"])
    assert (clock.get(("a", 0)), clock.get(("b", 1)), len(clock)) == (None, 6.0, 1)
    assert clock.take_dirty() == {("a", 0): None}


def test_edited_time_trigger_starts_afresh() -> None:
    table, state = setup(f"globaltime-{T}")
    next_deadline(table, state.clock, AT - 100)
    edited, _ = setup(f"globaltime-{T - 50}")
    assert next_deadline(edited, state.clock, AT - 10) is None  # armed after its time
    assert state.clock.take_dirty() == {
        (f"/cbdir/callbacks.conf:1=globaltime-{T}", 0): None,
        (f"/cbdir/callbacks.conf:1=globaltime-{T - 50}", 0): T - 10,
    }
    assert state.clock.get((f"/cbdir/callbacks.conf:1=globaltime-{T}", 0)) is None
