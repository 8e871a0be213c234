"""Tests of the qb.conf line syntax, $VAR expansion and the keys this daemon reads."""

from __future__ import annotations

from typing import Any

import pytest

from supervisord.core.errors import ConfigErrors
from supervisord.core.model import MailSettings
from supervisord.core.qbconf import Line, expand, parse_qbconf, split_lines

ENV = {"QBDIR": "/opt/qube", "HOME": "/home/qb", "SITE": "farm1"}
PY = "/usr/bin/python3"


def settings(text: str, env: dict[str, str] | None = None) -> Any:
    return parse_qbconf(text, "qb.conf", ENV if env is None else env, PY)


SPLITS = [
    ("plain", "a = b", [Line(1, "a", "b")]),
    ("no spaces", "a=b", [Line(1, "a", "b")]),
    ("first equals", "a = b = c", [Line(1, "a", "b = c")]),
    ("quotes removed", 'a = "b c"', [Line(1, "a", "b c")]),
    ("one pair only", 'a = ""b""', [Line(1, "a", '"b"')]),
    ("lone quote kept", 'a = "', [Line(1, "a", '"')]),
    ("inner quotes kept", 'a = x "y"', [Line(1, "a", 'x "y"')]),
    ("comments and blanks", "# c\n\n   # d\n  \na = 1", [Line(5, "a", "1")]),
    ("key case kept", "Supervisor_X = 1", [Line(1, "Supervisor_X", "1")]),
    ("empty value", "a =", [Line(1, "a", "")]),
    ("crlf", "a = 1\r\nb = 2\r\n", [Line(1, "a", "1"), Line(2, "b", "2")]),
    (
        "file name key",
        "Mail-Status.qcb = done-job-self",
        [Line(1, "Mail-Status.qcb", "done-job-self")],
    ),
]


@pytest.mark.parametrize(("text", "lines"), [s[1:] for s in SPLITS], ids=[s[0] for s in SPLITS])
def test_split_lines(text: str, lines: list[Line]) -> None:
    assert split_lines(text, "f") == (lines, [])


def test_split_lines_reports_lines_without_equals() -> None:
    lines, errors = split_lines("a = 1\njust words\nb = 2\n", "dir/callbacks.conf")
    assert lines == [Line(1, "a", "1"), Line(3, "b", "2")]
    assert [str(e) for e in errors] == [
        "dir/callbacks.conf:2: expected 'name = value', got 'just words'"
    ]


EXPANSIONS = [
    ("plain", "/a/b", ENV, "/a/b"),
    ("dollar", "$QBDIR/callback", ENV, "/opt/qube/callback"),
    ("braces", "${QBDIR}x", ENV, "/opt/qubex"),
    ("other variable", "$HOME/cb,${SITE}", ENV, "/home/qb/cb,farm1"),
    ("unknown kept", "$NOPE/${NOPE2}/x", ENV, "$NOPE/${NOPE2}/x"),
    ("qbdir default", "$QBDIR/callback", {}, "/usr/local/pfx/qube/callback"),
    ("empty qbdir uses default", "$QBDIR", {"QBDIR": ""}, "/usr/local/pfx/qube"),
    ("lone dollar", "a$ b$", ENV, "a$ b$"),
]


@pytest.mark.parametrize(
    ("value", "env", "expected"), [e[1:] for e in EXPANSIONS], ids=[e[0] for e in EXPANSIONS]
)
def test_expand(value: str, env: dict[str, str], expected: str) -> None:
    assert expand(value, env) == expected


def test_defaults() -> None:
    s = settings("")
    assert s.path == "qb.conf"
    assert s.qbdir == "/opt/qube"
    assert s.callback_path == ("/opt/qube/callback",)
    assert s.language_flags == frozenset(
        {"qube", "perl", "python", "post", "mail", "dependency", "auto_wrangling"}
    )
    assert s.logpath == "/opt/qube/logs"
    assert s.event_socket == "/opt/qube/run/callbacks.sock"
    assert s.event_socket_mode == 0o660
    assert s.event_socket_group is None
    assert s.event_allow_users == ()
    assert s.state_dir == "/opt/qube/state"
    assert (s.callback_timeout, s.kill_grace) == (600, 5)
    assert (s.output_limit, s.concurrency, s.job_retention) == (1048576, 64, 86400)
    assert s.callback_user is None
    assert (s.callback_python, s.callback_perl) == (PY, "perl")
    assert s.per_job_order is True
    assert s.history_retention == 2592000
    assert (s.python_mode, s.log_level) == ("forkserver", "info")
    assert (s.journal, s.member, s.role, s.lease) == ("sqlite", "", "all", 10.0)
    assert s.mail == MailSettings()


def test_default_qbdir_without_environment() -> None:
    s = settings("", env={})
    assert s.qbdir == "/usr/local/pfx/qube"
    assert s.callback_path == ("/usr/local/pfx/qube/callback",)


VALUES = [
    (
        "callback path list",
        "supervisor_universal_callback_path = $QBDIR/a , ${HOME}/b,,/c",
        "callback_path",
        ("/opt/qube/a", "/home/qb/b", "/c"),
    ),
    ("quoted path", 'supervisor_logpath = "/var/log/qube"', "logpath", "/var/log/qube"),
    ("key case", "SUPERVISOR_LOGPATH = /x", "logpath", "/x"),
    ("last wins", "supervisor_logpath = /x\nsupervisor_logpath = /y", "logpath", "/y"),
    ("empty is default", "supervisor_logpath =", "logpath", "/opt/qube/logs"),
    ("socket", "supervisor_event_socket = /tmp/s.sock", "event_socket", "/tmp/s.sock"),
    ("mode", "supervisor_event_socket_mode = 0600", "event_socket_mode", 0o600),
    ("mode no zero", "supervisor_event_socket_mode = 666", "event_socket_mode", 0o666),
    ("group", "supervisor_event_socket_group = qube", "event_socket_group", "qube"),
    (
        "allow users",
        "supervisor_event_allow_users = alice, 1001",
        "event_allow_users",
        ("alice", "1001"),
    ),
    ("state dir", "supervisor_callback_state_dir = $QBDIR/st", "state_dir", "/opt/qube/st"),
    ("timeout", "supervisor_callback_timeout = 1.5", "callback_timeout", 1.5),
    ("grace zero", "supervisor_callback_kill_grace = 0", "kill_grace", 0),
    ("output limit", "supervisor_callback_output_limit = 10", "output_limit", 10),
    ("concurrency", "supervisor_callback_concurrency = 2", "concurrency", 2),
    ("retention", "supervisor_callback_job_retention = 60", "job_retention", 60),
    ("user", "supervisor_callback_user = render", "callback_user", "render"),
    (
        "python",
        "supervisor_callback_python = $QBDIR/bin/python",
        "callback_python",
        "/opt/qube/bin/python",
    ),
    ("perl", "supervisor_callback_perl = /usr/bin/perl", "callback_perl", "/usr/bin/perl"),
    ("order off", "supervisor_callback_per_job_order = Off", "per_job_order", False),
    ("order no", "supervisor_callback_per_job_order = no", "per_job_order", False),
    ("order 1", "supervisor_callback_per_job_order = 1", "per_job_order", True),
    ("history", "supervisor_callback_history_retention = 3600", "history_retention", 3600),
    ("fresh", "supervisor_callback_python_mode = FRESH", "python_mode", "fresh"),
    ("log level", "supervisor_callback_log_level = Debug", "log_level", "debug"),
    ("flags names", "supervisor_language_flags = qube,perl", "language_flags", {"qube", "perl"}),
    (
        "flags spaces",
        "supervisor_language_flags = Qube Python, mail",
        "language_flags",
        {"qube", "python", "mail"},
    ),
    ("flags mask", "supervisor_language_flags = 21", "language_flags", {"qube", "python", "mail"}),
    ("flags zero", "supervisor_language_flags = 0", "language_flags", set()),
    ("unknown key ignored", "worker_flags = x\nsupervisor_logpath = /z", "logpath", "/z"),
    (
        "journal url",
        "supervisor_callback_journal = postgresql://qb@db/cb",
        "journal",
        "postgresql://qb@db/cb",
    ),
    (
        "journal words",
        "supervisor_callback_journal = host=db dbname=cb",
        "journal",
        "host=db dbname=cb",
    ),
    ("member", "supervisor_callback_member = render2", "member", "render2"),
    (
        "role",
        "supervisor_callback_journal = postgres://d\nsupervisor_callback_role = Executor",
        "role",
        "executor",
    ),
    ("lease", "supervisor_callback_lease = 2.5", "lease", 2.5),
    ("line without equals ignored", "some qube thing\nsupervisor_logpath = /z", "logpath", "/z"),
]


@pytest.mark.parametrize(
    ("text", "field", "expected"), [v[1:] for v in VALUES], ids=[v[0] for v in VALUES]
)
def test_values(text: str, field: str, expected: Any) -> None:
    assert getattr(settings(text), field) == expected


MAIL = [
    ("host", "mail_host = smtp.example.com", "host", "smtp.example.com"),
    ("port", "mail_port = 2525", "port", 2525),
    ("from", "mail_from = qube@example.com", "from_", "qube@example.com"),
    ("domain", "mail_domain = example.com", "domain", "example.com"),
    ("administrator", "mail_administrator = root", "administrator", "root"),
    ("type empty", "mail_connection_type =", "connection_type", "plain"),
    ("type plain", "mail_connection_type = plain", "connection_type", "plain"),
    ("type ssl", "mail_connection_type = SSL", "connection_type", "ssl"),
    ("type tls", "mail_connection_type = tls", "connection_type", "starttls"),
    ("type starttls", "mail_connection_type = starttls", "connection_type", "starttls"),
    ("user", "mail_user = u", "user", "u"),
    ("password not expanded", "mail_password = p$HOME", "password", "p$HOME"),
    ("job format", "mail_job_status_format = $QBDIR/m.txt", "job_status_format", "/opt/qube/m.txt"),
    ("subjob format", "mail_subjob_status_format = /s", "subjob_status_format", "/s"),
    ("work format", "mail_work_status_format = /w", "work_status_format", "/w"),
]


@pytest.mark.parametrize(
    ("text", "field", "expected"), [m[1:] for m in MAIL], ids=[m[0] for m in MAIL]
)
def test_mail(text: str, field: str, expected: Any) -> None:
    assert getattr(settings(text).mail, field) == expected


BAD = [
    (
        "timeout word",
        "supervisor_callback_timeout = ten",
        "supervisor_callback_timeout: expected seconds (a number > 0), got 'ten'",
    ),
    ("timeout zero", "supervisor_callback_timeout = 0", "expected seconds (a number > 0), got '0'"),
    ("timeout inf", "supervisor_callback_timeout = inf", "got 'inf'"),
    ("grace negative", "supervisor_callback_kill_grace = -1", "expected seconds (a number >= 0)"),
    ("limit float", "supervisor_callback_output_limit = 1.5", "expected bytes (an integer >= 0)"),
    ("concurrency zero", "supervisor_callback_concurrency = 0", "supervisor_callback_concurrency:"),
    (
        "retention word",
        "supervisor_callback_job_retention = day",
        "supervisor_callback_job_retention:",
    ),
    (
        "history word",
        "supervisor_callback_history_retention = x",
        "supervisor_callback_history_retention:",
    ),
    ("mode decimal", "supervisor_event_socket_mode = 0980", "expected an octal file mode"),
    ("mode too big", "supervisor_event_socket_mode = 01777", "expected an octal file mode"),
    ("order maybe", "supervisor_callback_per_job_order = maybe", "expected true or false"),
    ("python mode", "supervisor_callback_python_mode = spawn", "expected forkserver or fresh"),
    ("log level", "supervisor_callback_log_level = loud", "expected a log level"),
    ("flags name", "supervisor_language_flags = qube,ruby", "expected flag names (qube, perl"),
    ("flags mask", "supervisor_language_flags = 128", "decimal mask of at most 127"),
    ("path empty list", "supervisor_universal_callback_path = ,", "a comma-separated list"),
    ("mail port", "mail_port = smtp", "mail_port: expected a port number (1-65535), got 'smtp'"),
    ("mail type", "mail_connection_type = ssh", "mail_connection_type: expected plain, ssl or tls"),
    (
        "journal",
        "supervisor_callback_journal = mysql",
        "expected sqlite or a PostgreSQL connection",
    ),
    ("role", "supervisor_callback_role = worker", "expected all, executor or intake"),
    ("lease", "supervisor_callback_lease = 0", "supervisor_callback_lease: expected seconds"),
    (
        "role on sqlite",
        "supervisor_callback_role = intake",
        "supervisor_callback_role = intake needs a journal other members share",
    ),
]


@pytest.mark.parametrize(("text", "reason"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_value(text: str, reason: str) -> None:
    with pytest.raises(ConfigErrors) as caught:
        settings("# qb.conf\n" + text)
    (error,) = caught.value.errors
    assert (error.path, error.line) == ("qb.conf", 2)
    assert reason in error.reason
    assert str(error).startswith("qb.conf:2: ")


def test_all_errors_collected_in_line_order() -> None:
    text = "\n".join(
        [
            "supervisor_callback_timeout = 1",
            "supervisor_callback_python_mode = nope",
            "supervisor_callback_timeout = ten",
            "mail_port = x",
            "supervisor_callback_concurrency = -2",
        ]
    )
    with pytest.raises(ConfigErrors) as caught:
        settings(text)
    assert [e.line for e in caught.value.errors] == [2, 3, 4, 5]
    assert str(caught.value).splitlines()[1] == (
        "qb.conf:3: supervisor_callback_timeout: expected seconds (a number > 0), got 'ten'"
    )


def test_bad_value_overridden_later_is_fine() -> None:
    text = "supervisor_callback_timeout = ten\nsupervisor_callback_timeout = 30"
    assert settings(text).callback_timeout == 30
