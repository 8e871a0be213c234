"""Tests of the callbacks.conf parser."""

from __future__ import annotations

import pytest

from supervisord.core.callbacks_conf import Entry, parse_callbacks_conf
from supervisord.core.model import And, Term

SPEC_EXAMPLE = """\
# filename = triggers
logFailuresToDB.py = failed-job-self
mail-status.qcb    = done-job-self
checkWork.pl       = done-work-self-*
submitted.py       = submit-job-self
"""


def test_spec_example() -> None:
    entries, errors = parse_callbacks_conf(SPEC_EXAMPLE, "cb/callbacks.conf")
    assert errors == []
    assert [(e.file, e.line, e.language, e.trigger_text) for e in entries] == [
        ("logFailuresToDB.py", 2, "python", "failed-job-self"),
        ("mail-status.qcb", 3, "qube", "done-job-self"),
        ("checkWork.pl", 4, "perl", "done-work-self-*"),
        ("submitted.py", 5, "python", "submit-job-self"),
    ]
    assert entries[2].trigger == Term("done", "work", "self", "*")


def test_same_file_twice_and_quotes() -> None:
    text = 'a.py = complete-job-self\na.py = "failed-job-self && failed-job-parent"\n'
    entries, errors = parse_callbacks_conf(text, "c")
    assert errors == []
    assert entries[1] == Entry(
        "a.py",
        "failed-job-self && failed-job-parent",
        2,
        "python",
        And((Term("failed", "job", "self", None), Term("failed", "job", "parent", None))),
    )
    assert [e.line for e in entries] == [1, 2]


BAD = [
    ("no equals", "a.py failed-job-self", "expected 'name = value', got 'a.py failed-job-self'"),
    (
        "unknown extension",
        "x.sh = done-job-self",
        "unknown callback extension '.sh' for 'x.sh' (expected .py, .pl or .qcb)",
    ),
    ("no extension", "x = done-job-self", "unknown callback extension '(none)' for 'x'"),
    ("upper extension", "x.PY = done-job-self", "unknown callback extension '.PY'"),
    ("empty file", "= done-job-self", "empty callback file name"),
    ("bare extension", ".py = done-job-self", "expected a file name in the same directory"),
    ("subdirectory", "sub/x.py = done-job-self", "expected a file name in the same directory"),
    ("empty trigger", "x.py =", "empty trigger for 'x.py'"),
    ("empty quoted trigger", 'x.py = ""', "empty trigger for 'x.py'"),
    ("bad trigger", "x.py = complete-jb-self", "unknown event type 'jb' in 'complete-jb-self'"),
    ("dangling and", "x.py = complete-job-self &&", "expected a term after '&&'"),
    (
        "job dependency",
        "x.py = link-complete-job-220",
        "'link-complete-job-220' is a Qube job dependency, not a callback trigger",
    ),
    (
        "job dependency list",
        "x.py = link-complete-job-220,link-done-job-221",
        "'link-complete-job-220,link-done-job-221' is a Qube job dependency, not a callback",
    ),
    ("bare job id", "x.py = 220", "'220' is a Qube job dependency, not a callback trigger"),
]


@pytest.mark.parametrize(("text", "reason"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_line(text: str, reason: str) -> None:
    entries, errors = parse_callbacks_conf("# header\n" + text + "\n", "cb/callbacks.conf")
    assert entries == []
    (error,) = errors
    assert str(error).startswith(f"cb/callbacks.conf:2: {reason}")


def test_good_lines_kept_and_every_error_reported_in_order() -> None:
    text = (
        "a.py = done-job-self\nb.sh = done-job-self\nno equals\nc.pl = oops\nd.qcb = done-job-self"
    )
    entries, errors = parse_callbacks_conf(text, "c.conf")
    assert [e.file for e in entries] == ["a.py", "d.qcb"]
    assert [e.line for e in errors] == [2, 3, 4]
