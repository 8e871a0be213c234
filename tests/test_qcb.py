"""Tests of the .qcb code parser."""

from __future__ import annotations

import pytest

from supervisord.core.errors import ConfigErrors
from supervisord.core.model import QcbCode
from supervisord.core.qcb import VERBS, parse_qcb

CODES = [
    ("unblock-self", QcbCode(1, "unblock-self", "unblock", "job", None)),
    ("kill-work-self", QcbCode(1, "kill-work-self", "kill", "work", None)),
    ("retry-subjob-self", QcbCode(1, "retry-subjob-self", "retry", "subjob", None)),
    ("mail-status", QcbCode(1, "mail-status", None, "job", "mail-status")),
    ("mail-report-status", QcbCode(1, "mail-report-status", None, "job", "mail-report-status")),
    ("mail-subjob-status", QcbCode(1, "mail-subjob-status", None, "subjob", "mail-subjob-status")),
    ("  Block-Self  ", QcbCode(1, "Block-Self", "block", "job", None)),
]


@pytest.mark.parametrize(("text", "code"), CODES, ids=[c[0].strip() for c in CODES])
def test_code(text: str, code: QcbCode) -> None:
    assert parse_qcb(text, "x.qcb") == (code,)


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_in_every_scope(verb: str) -> None:
    text = f"{verb}-self\n{verb}-work-self\n{verb}-subjob-self\n"
    codes = parse_qcb(text, "x.qcb")
    assert [(c.line, c.action, c.scope, c.mail) for c in codes] == [
        (1, verb, "job", None),
        (2, verb, "work", None),
        (3, verb, "subjob", None),
    ]


def test_comments_blank_lines_and_order() -> None:
    text = "# mail the owner\n\nmail-status\n   # then unblock\nunblock-work-self\n"
    assert [(c.line, c.text) for c in parse_qcb(text, "x.qcb")] == [
        (3, "mail-status"),
        (5, "unblock-work-self"),
    ]


def test_empty_file_has_no_codes() -> None:
    assert parse_qcb("", "x.qcb") == ()


def test_every_unknown_code_reported() -> None:
    text = "unblock-self\nfrobnicate-self\nunblock-job-self\nmail-status\nkill\n"
    with pytest.raises(ConfigErrors) as caught:
        parse_qcb(text, "cb/x.qcb")
    assert [str(e) for e in caught.value.errors] == [
        "cb/x.qcb:2: unknown .qcb code 'frobnicate-self'",
        "cb/x.qcb:3: unknown .qcb code 'unblock-job-self'",
        "cb/x.qcb:5: unknown .qcb code 'kill'",
    ]
