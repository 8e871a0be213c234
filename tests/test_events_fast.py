"""The intake's inline validation (validate_request, new_event) against validate_event."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from supervisord.core.errors import EventError
from supervisord.core.events import new_event, validate_event, validate_request
from supervisord.core.model import Event
from supervisord.journal.intake import journal_text
from supervisord.journal.store import event_doc
from tests.test_events import INVALID, JOURNAL_LINES, NOW, SURROGATES, VALID

# Request lines as a client writes them: every valid and invalid document of test_events
# that is a JSON object, the journal's lines, and the shapes the inline check must refuse.
LINES = [
    *(pytest.param(json.dumps(v[1]), id=f"valid-{v[0]}") for v in VALID),
    *(pytest.param(json.dumps(i[1]), id=f"invalid-{i[0]}") for i in INVALID if i[1] != ["x"]),
    *(pytest.param(p.values[0], id=f"journal-{p.id}") for p in JOURNAL_LINES),
    *(pytest.param(p.values[0], id=f"surrogate-{p.id}") for p in SURROGATES),
    pytest.param('{"name":"complete","type":"job","job":{"id":1},"x":"é"}', id="non-ascii"),
    pytest.param('{"name":"complete","type":"job","job":{"id":1},"op":"ping"}', id="op-ping"),
    pytest.param('{"name":"complete","type":"job","job":{"id":1},"op":null}', id="op-null"),
    pytest.param('{"name":["x"],"type":"job","job":{"id":1}}', id="name-list"),
    pytest.param('{"name":"complete","type":["job"],"job":{"id":1}}', id="type-list"),
    pytest.param('{"name":"complete","type":"job","job":{"id":1},"event_id":{}}', id="id-obj"),
    pytest.param('{"name":"complete","type":"job","job":{"id":1},"time":1e400}', id="inf"),
    pytest.param('{"name":"running","type":"job","job":{"id":7,"n":"s"},"event_id":"a-1"}'),
]


def outcome(make: Any) -> tuple[Any, ...]:
    try:
        ev = make()
    except EventError as exc:
        return ("refused", exc.field, exc.message)
    doc = ev.doc
    return ("event", ev, dict(doc), list(doc), getattr(doc, "head", None))


@pytest.mark.parametrize("line", LINES)
def test_validate_request_is_validate_event(line: str) -> None:
    head = line.rstrip()[:-1]
    fast = outcome(lambda: validate_request(json.loads(line), head, NOW, repr(NOW)))
    assert fast == outcome(lambda: validate_event(json.loads(line), NOW, line))


@pytest.mark.parametrize("line", LINES)
def test_journal_text_of_a_request_reads_back_as_its_document(line: str) -> None:
    try:
        ev = validate_request(json.loads(line), line.rstrip()[:-1], NOW, repr(NOW))
    except EventError:
        return
    got = event_doc(journal_text(ev, 9, "qb-1"))
    want = dict(ev.doc, seq=9, event_id="qb-1")
    assert (got, list(got)) == (want, list(want))


def test_new_event_is_the_dataclass() -> None:
    values = ("complete", "work", 5, None, "w", "h", 1.5, "e-1", {"a": 1})
    made, built = new_event(*values), Event(*values)
    assert made == built and hash(made) == hash(built) and repr(made) == repr(built)
    assert [getattr(made, f.name) for f in dataclasses.fields(Event)] == list(values)
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.name = "failed"  # type: ignore[misc]
