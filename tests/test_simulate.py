"""Tests of scenario replay: the YAML format, its errors, and the shipped scenarios."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from supervisord.core.errors import ConfigErrors
from supervisord.core.model import QUBE_EPOCH, Callback
from supervisord.core.simulate import load_scenario, simulate
from supervisord.core.triggers import parse_trigger, terms_of

SCENARIOS = Path(__file__).resolve().parent.parent / "callback" / "scenarios"
_CONF_LINE = re.compile(r"^#\s+(\S+\.(?:py|pl|qcb))\s*=\s*(.+?)\s*$")


def callbacks_of(text: str) -> list[Callback]:
    """The callbacks.conf a scenario states in its header comment, as Callback values."""
    found = [m.groups() for m in map(_CONF_LINE.match, text.splitlines()) if m]
    return [
        Callback(f, "/cbdir", i, "python", t, parse_trigger(t), terms_of(parse_trigger(t)))
        for i, (f, t) in enumerate(found, 1)
    ]


def replay(text: str) -> list[str]:
    return simulate(callbacks_of(text), load_scenario(text, "s.yaml"))


SHIPPED = [
    pytest.param(
        "parent-child.yaml",
        [
            "#1 submit-job job=100 -> (nothing)",
            "#2 submit-job job=101 -> (nothing)",
            "#3 submit-job job=102 -> (nothing)",
            "#4 complete-job job=101 -> (nothing)",
            "#5 complete-job job=100 -> notify.py for job 101"
            " (latched: complete-job-self, complete-job-parent)",
            "#5 complete-job job=100 -> cleanup.py for job 101 (matched: done-job-parent)",
            "#5 complete-job job=100 -> cleanup.py for job 102 (matched: done-job-parent)",
            "#6 failed-job job=102 -> (nothing)",
            "#7 running-job job=102 -> (nothing)",
            "#8 complete-job job=102 -> notify.py for job 102"
            " (latched: complete-job-self, complete-job-parent)",
        ],
        id="parent-child",
    ),
    pytest.param(
        "label-pgrp.yaml",
        [
            *(
                f"#{n} submit-job job={j} -> (nothing)"
                for n, j in enumerate((200, 201, 202, 203, 300), 1)
            ),
            "#6 complete-job job=200 -> (nothing)",
            *(
                f"#7 failed-job job=201 -> killGroup.py for job {j} (matched: failed-job-render)"
                for j in (200, 201, 202, 203)
            ),
            "#8 killed-job job=202 -> (nothing)",
            "#9 failed-job job=300 -> killGroup.py for job 300 (matched: failed-job-render)",
            *(
                f"#10 complete-job job=203 -> tally.py for job {j} (matched: done-job-comp)"
                for j in (200, 201, 202, 203)
            ),
        ],
        id="label-pgrp",
    ),
    pytest.param(
        "compound-work.yaml",
        [
            *(f"#{n} submit-job job={j} -> (nothing)" for n, j in enumerate((400, 401, 402), 1)),
            "#4 complete-work job=400 work=5 -> (nothing)",
            "#5 failed-work job=401 work=5 host=node7 -> failedFrame.py for job 401"
            " (matched: failed-work-self-*)",
            "#6 complete-work job=401 work=4 -> (nothing)",
            *(
                f"#7 complete-work job=401 work=5 -> frame5.py for job {j}"
                " (latched: complete-work-ribgen-5, complete-work-render-5)"
                for j in (400, 401, 402)
            ),
            *(
                f"#8 complete-work job=402 work=5 -> frame5.py for job {j}"
                " (latched: complete-work-composite-5)"
                for j in (400, 401, 402)
            ),
        ],
        id="compound-work",
    ),
]


@pytest.mark.parametrize(("name", "expected"), SHIPPED)
def test_shipped_scenarios(name: str, expected: list[str]) -> None:
    assert replay((SCENARIOS / name).read_text(encoding="utf-8")) == expected


def test_documents_are_what_a_client_sends() -> None:
    text = """
jobs:
  - {id: 7, name: a, label: x, parent: 3, mailaddress: a@example.com}
events:
  - {event: complete-subjob, job: 7, subid: 2, host: n1, time: 5.5, event_id: e1}
  - {event: failed-work, job: 7, work: 12, set: {status: failed}}
  - {event: removed-job, job: 8}
"""
    job = {"id": 7, "name": "a", "label": "x", "pid": 3, "mailaddress": "a@example.com", "pgrp": 7}
    assert load_scenario(text, "s.yaml") == [
        {"name": "complete", "type": "subjob", "job": job, "subid": 2, "host": "n1",
         "time": 5.5, "event_id": "e1"},
        {"name": "failed", "type": "work", "job": {**job, "status": "failed"}, "work": 12},
        {"name": "removed", "type": "job", "job": {"id": 8}},
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "errors"),
    [
        ("events: [\n  {event: x", ["s.yaml:2: not valid YAML"]),
        ("- a\n- b\n", ["s.yaml:1: a scenario is a mapping"]),
        ("jobs: []\n", ["s.yaml:1: missing `events`"]),
        ("events: {}\nextra: 1\n", ["s.yaml:1: `events` must be a list", "s.yaml:2: unknown key"]),
        (
            "jobs:\n  - {name: a}\nevents:\n  - {event: done, job: 1}\n  - {event: complete-job}\n",
            [
                "s.yaml:2: a job needs",
                "s.yaml:4: `event` must be NAME-TYPE",
                "s.yaml:5: `job` must",
            ],
        ),
        (
            "events:\n  - {event: complete-subjob, job: 1}\n"
            "  - {event: complete-job, job: 1, wrok: a}\n",
            ["s.yaml:2: subid: expected", "s.yaml:3: unknown key 'wrok'"],
        ),
    ],
    ids=["bad-yaml", "not-a-mapping", "no-events", "bad-sections", "bad-items", "bad-fields"],
)
def test_bad_scenarios_name_the_line(text: str, errors: list[str]) -> None:
    with pytest.raises(ConfigErrors) as info:
        load_scenario(text, "s.yaml")
    got = [str(e) for e in info.value.errors]
    assert len(got) == len(errors) and all(
        g.startswith(e) for g, e in zip(got, errors, strict=True)
    )


def test_time_triggers_fire_as_simulated_time_passes() -> None:
    start = 1_764_064_000
    q = start - QUBE_EPOCH
    text = f"""
# callbacks.conf:
#   hourly.py = globalrepeat-{q + 60}-60
#   poke.py = dummy-time-self-{q + 90}
events:
  - {{event: submit-job, job: 1, time: {start}}}
  - {{event: complete-job, job: 1, time: {start + 150}}}
"""
    assert replay(text) == [
        "#1 submit-job job=1 -> (nothing)",
        f"#2 globalrepeat qube_time={q + 60} -> hourly.py (matched: globalrepeat-{q + 60}-60)",
        f"#3 dummy-time job=1 qube_time={q + 90} -> poke.py for job 1"
        f" (matched: dummy-time-self-{q + 90})",
        f"#4 globalrepeat qube_time={q + 120} -> hourly.py (matched: globalrepeat-{q + 60}-60)",
        "#5 complete-job job=1 -> (nothing)",
    ]


def test_invalid_documents_are_reported_not_numbered() -> None:
    lines = simulate([], [{"name": "complete", "type": "job", "job": {"id": "x"}}])
    assert lines == [
        "(rejected) complete-job: job.id: expected a non-negative integer, got string 'x'"
    ]
