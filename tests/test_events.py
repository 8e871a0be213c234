"""Tests of event validation (SPEC §3.1) and the value describer used in its messages."""

from __future__ import annotations

import json
from typing import Any

import pytest

from supervisord.core.errors import EventError
from supervisord.core.events import Received, describe, validate_event
from supervisord.journal.intake import journal_text
from supervisord.journal.store import event_doc

NOW = 1764064000.0


def event(**fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": "complete", "type": "job", "job": {"id": 1234}}
    doc.update(fields)
    return {key: value for key, value in doc.items() if value is not ...}


def test_full_document_is_kept() -> None:
    doc = {
        "op": "event",
        "event_id": "farm1-000123",
        "name": "complete",
        "type": "job",
        "job": {"id": 1234, "name": "shot010", "pgrp": 1234, "pid": 0, "extra": [1]},
        "subid": None,
        "work": None,
        "host": None,
        "time": 1764064000.5,
        "custom": {"a": 1},
    }
    ev = validate_event(doc, NOW)
    assert (ev.name, ev.type, ev.job_id, ev.subid, ev.work, ev.host) == (
        "complete",
        "job",
        1234,
        None,
        None,
        None,
    )
    assert ev.time == 1764064000.5
    assert ev.event_id == "farm1-000123"
    assert "op" not in ev.doc
    assert ev.doc["custom"] == {"a": 1}
    assert ev.job == doc["job"]
    assert ev.doc is not doc
    assert "op" in doc  # the caller's document is not modified


VALID = [
    ("minimal", event(), {"job_id": 1234, "time": NOW}),
    ("op omitted", event(op=...), {"job_id": 1234}),
    ("job id zero", event(job={"id": 0}), {"job_id": 0}),
    ("subjob", event(type="subjob", subid=3), {"subid": 3}),
    ("work string", event(type="work", work="frame5"), {"work": "frame5"}),
    ("work integer", event(type="work", work=5), {"work": "5"}),
    ("host", event(type="host", host="node01"), {"host": "node01"}),
    ("integer time", event(time=5), {"time": 5.0}),
    ("null time", event(time=None), {"time": NOW}),
    ("null event_id", event(event_id=None), {"event_id": None}),
    ("128 char event_id", event(event_id="x" * 128), {"event_id": "x" * 128}),
    ("subid on a work event", event(type="work", work="w", subid=2), {"subid": 2}),
    ("done name", event(name="done"), {"name": "done"}),
    ("dummy name", event(name="dummy"), {"name": "dummy"}),
    # SPEC §2: names and types compare case-insensitively; the Event holds them folded.
    ("name in capitals", event(name="COMPLETE"), {"name": "complete"}),
    ("type mixed case", event(type="Work", work="Frame5"), {"type": "work", "work": "Frame5"}),
]


def test_case_is_folded_for_matching_and_kept_as_sent_for_callbacks() -> None:
    ev = validate_event(event(name="Done", type="SubJob", subid=2), NOW)
    assert (ev.name, ev.type, ev.subid) == ("done", "subjob", 2)
    assert (ev.doc["name"], ev.doc["type"]) == ("Done", "SubJob")


@pytest.mark.parametrize(("doc", "expected"), [v[1:] for v in VALID], ids=[v[0] for v in VALID])
def test_valid(doc: dict[str, Any], expected: dict[str, Any]) -> None:
    ev = validate_event(doc, NOW)
    for attribute, value in expected.items():
        assert getattr(ev, attribute) == value
    assert ev.doc["time"] == ev.time or ev.doc["time"] == doc.get("time")
    if ev.work is not None:
        assert ev.doc["work"] == ev.work


INVALID = [
    ("not an object", ["x"], "event", "expected a JSON object, got array"),
    ("other op", event(op="ping"), "op", "expected 'event', got string 'ping'"),
    ("name missing", event(name=...), "name", "got nothing"),
    ("name unknown", event(name="finished"), "name", "got string 'finished'"),
    ("name not a string", event(name=3), "name", "got integer 3"),
    ("type missing", event(type=...), "type", "expected an event type (job, subjob, work, host)"),
    ("type time", event(type="time"), "type", "got string 'time'"),
    ("type globaltime", event(type="globaltime"), "type", "got string 'globaltime'"),
    ("job missing", event(job=...), "job", "expected an object with an 'id', got nothing"),
    ("job not object", event(job=12), "job", "got integer 12"),
    ("job.id missing", event(job={"name": "x"}), "job.id", "got nothing"),
    ("job.id string", event(job={"id": "12"}), "job.id", "got string '12'"),
    ("job.id float", event(job={"id": 12.0}), "job.id", "got float 12.0"),
    ("job.id bool", event(job={"id": True}), "job.id", "got boolean true"),
    ("job.id negative", event(job={"id": -1}), "job.id", "got integer -1"),
    ("job.id null", event(job={"id": None}), "job.id", "got null"),
    (
        "subid missing",
        event(type="subjob"),
        "subid",
        "expected a non-negative integer, got nothing",
    ),
    ("subid null", event(type="subjob", subid=None), "subid", "got null"),
    ("subid float", event(type="subjob", subid=1.5), "subid", "got float 1.5"),
    ("subid string", event(subid="1"), "subid", "got string '1'"),
    ("subid bool", event(type="subjob", subid=False), "subid", "got boolean false"),
    ("work missing", event(type="work"), "work", "got nothing"),
    ("work empty", event(type="work", work=""), "work", "got string ''"),
    ("work float", event(work=1.5), "work", "got float 1.5"),
    ("work bool", event(type="work", work=True), "work", "got boolean true"),
    ("work object", event(work={}), "work", "got object"),
    ("host missing", event(type="host"), "host", "got nothing"),
    ("host integer", event(host=5), "host", "got integer 5"),
    ("time string", event(time="now"), "time", "expected a number (Unix seconds), got string"),
    ("time bool", event(time=True), "time", "got boolean true"),
    ("time nan", event(time=float("nan")), "time", "got float nan"),
    ("event_id empty", event(event_id=""), "event_id", "1 to 128 characters, got string ''"),
    ("event_id long", event(event_id="x" * 129), "event_id", "got string 'xxx"),
    ("event_id integer", event(event_id=7), "event_id", "got integer 7"),
]


@pytest.mark.parametrize(
    ("doc", "field", "message"), [i[1:] for i in INVALID], ids=[i[0] for i in INVALID]
)
def test_invalid(doc: Any, field: str, message: str) -> None:
    with pytest.raises(EventError) as caught:
        validate_event(doc, NOW)
    assert caught.value.field == field
    assert message in caught.value.message
    assert str(caught.value).startswith(f"{field}: expected ")


def test_message_reads_as_in_the_brief() -> None:
    with pytest.raises(
        EventError, match=r"^job\.id: expected a non-negative integer, got string '12'$"
    ):
        validate_event(event(job={"id": "12"}), NOW)


DESCRIBED = [
    ("null", None, "null"),
    ("true", True, "boolean true"),
    ("int", 7, "integer 7"),
    ("float", 1.5, "float 1.5"),
    ("string", "12", "string '12'"),
    ("long string", "y" * 50, "string '" + "y" * 37 + "...'"),
    ("list", [1], "array"),
    ("dict", {"a": 1}, "object"),
]


@pytest.mark.parametrize(
    ("value", "text"), [d[1:] for d in DESCRIBED], ids=[d[0] for d in DESCRIBED]
)
def test_describe(value: Any, text: str) -> None:
    assert describe(value) == text


# The journal keeps the request line plus what the daemon added (seq, event_id, time, the
# work name as a string); read back, it must be the document callbacks see, keys in order.
JOURNAL_LINES = [
    pytest.param('{"op":"event","name":"complete","type":"job","job":{"id":1}}', id="plain"),
    pytest.param('{"name":"complete","type":"job","job":{"id":1},"time":5}', id="time-given"),
    pytest.param('{"name":"complete","type":"job","job":{"id":1},"time":null}', id="time-null"),
    pytest.param('{"name":"complete","type":"work","job":{"id":1},"work":7}', id="work-int"),
    pytest.param('{"name":"complete","type":"work","job":{"id":1},"work":"w"}', id="work-str"),
    pytest.param('{"name":"complete","type":"job","job":{"id":1},"event_id":null}', id="id-null"),
    pytest.param('{"name":"complete","type":"job","job":{"id":1},"event_id":"a\\"é"}', id="id"),
    pytest.param('{"seq":3,"name":"complete","type":"job","job":{"id":1},"op":"event"}', id="seq"),
    pytest.param('{"name":"x","name":"complete","type":"job","job":{"id":1}}', id="repeated-key"),
    pytest.param(' { "name" : "complete" , "type":"job","job":{"id":1} }\t\r ', id="blanks"),
]


@pytest.mark.parametrize("line", JOURNAL_LINES)
def test_journal_text_reads_back_as_the_event_document(line: str) -> None:
    ev = validate_event(json.loads(line), NOW, line)
    assert isinstance(ev.doc, Received)
    want = dict(validate_event(json.loads(line), NOW).doc, seq=9, event_id="qb-1")
    got = event_doc(journal_text(ev, 9, "qb-1"))
    assert (got, list(got)) == (want, list(want))


EVENT = '"name":"complete","type":"job","job":{"id":1'
SURROGATES = [
    pytest.param("{" + EVENT + ',"n":"\\ud800"}}', "job.n", id="job"),
    pytest.param("{" + EVENT + '},"\\udfff":1}', "\\udfff", id="key"),
    pytest.param("{" + EVENT + '},"event_id":"\\ud800"}', "event_id", id="event-id"),
    pytest.param("{" + EVENT + '},"x":[1,"\\udc00"]}', "x[1]", id="in-array"),
]


@pytest.mark.parametrize(("line", "field"), SURROGATES)
@pytest.mark.parametrize("with_line", [True, False], ids=["line", "no-line"])
def test_lone_surrogates_are_refused(line: str, field: str, with_line: bool) -> None:
    # JSON escapes can spell them; the journal (UTF-8) could not store them.
    with pytest.raises(EventError) as err:
        validate_event(json.loads(line), NOW, line if with_line else None)
    assert err.value.field == field.encode().decode("unicode_escape", "surrogatepass")
