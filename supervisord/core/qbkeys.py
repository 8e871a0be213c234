"""This daemon's qb.conf keys (SPEC §1.1): each key's Settings field, converter and default."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

# Qube's bit values for supervisor_language_flags.
LANGUAGE_BITS: Final = {
    "qube": 1,
    "perl": 2,
    "python": 4,
    "post": 8,
    "mail": 16,
    "dependency": 32,
    "auto_wrangling": 64,
}
LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")
_TRUE: Final = frozenset({"true", "yes", "on", "1"})
_FALSE: Final = frozenset({"false", "no", "off", "0"})


class Invalid(Exception):
    """A value that does not convert; carries what was expected."""

    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


def _number(minimum: float, inclusive: bool, what: str) -> Callable[[str], float]:
    def convert(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not math.isfinite(number) or number < minimum or (number == minimum and not inclusive):
            raise Invalid(what)
        return number

    return convert


def _integer(minimum: int, maximum: int, what: str) -> Callable[[str], int]:
    def convert(value: str) -> int:
        if not re.fullmatch(r"[0-9]+", value) or not minimum <= int(value) <= maximum:
            raise Invalid(what)
        return int(value)

    return convert


def _choice(choices: Mapping[str, str], what: str) -> Callable[[str], str]:
    def convert(value: str) -> str:
        if value.lower() not in choices:
            raise Invalid(what)
        return choices[value.lower()]

    return convert


def _boolean(value: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise Invalid("true or false (yes/no, on/off, 1/0)")


def _octal_mode(value: str) -> int:
    digits = value.lower().removeprefix("0o")
    if not re.fullmatch(r"[0-7]{1,4}", digits) or int(digits, 8) > 0o777:
        raise Invalid("an octal file mode such as 0660")
    return int(digits, 8)


def parse_language_flags(value: str) -> frozenset[str]:
    """Qube's language flags: names separated by commas or spaces, or a decimal mask."""
    if value.isdigit():
        mask = int(value)
        if mask >= 2 ** len(LANGUAGE_BITS):
            raise Invalid("flag names or a decimal mask of at most 127")
        return frozenset(name for name, bit in LANGUAGE_BITS.items() if mask & bit)
    names = frozenset(word.lower() for word in re.split(r"[,\s]+", value) if word)
    if not names <= LANGUAGE_BITS.keys():
        raise Invalid(f"flag names ({', '.join(LANGUAGE_BITS)}) or a decimal mask")
    return names


def _words(value: str) -> tuple[str, ...]:
    return tuple(word.strip() for word in value.split(",") if word.strip())


def _directories(value: str) -> tuple[str, ...]:
    directories = _words(value)
    if not directories:
        raise Invalid("a comma-separated list of directories")
    return directories


def _text(value: str) -> str:
    return value


def _journal(value: str) -> str:
    """`sqlite`, or a PostgreSQL connection string (a URL or libpq's key=value words)."""
    text = value.strip()
    if text == "sqlite" or text.startswith(("postgresql://", "postgres://")) or "=" in text:
        return text
    raise Invalid("sqlite or a PostgreSQL connection string (postgresql://user@host/db)")


_SECONDS: Final = _number(0, False, "seconds (a number > 0)")
_SECONDS_OR_ZERO: Final = _number(0, True, "seconds (a number >= 0)")
_CONNECTION_TYPES: Final = {
    "plain": "plain",
    "ssl": "ssl",
    "tls": "starttls",
    "starttls": "starttls",
}

# key -> (Settings or MailSettings field, converter, expand $VARs first). Paths expand.
KEYS: Final[dict[str, tuple[str, Callable[[str], Any], bool]]] = {
    "supervisor_universal_callback_path": ("callback_path", _directories, True),
    "supervisor_language_flags": ("language_flags", parse_language_flags, False),
    "supervisor_logpath": ("logpath", _text, True),
    "supervisor_event_socket": ("event_socket", _text, True),
    "supervisor_event_socket_mode": ("event_socket_mode", _octal_mode, False),
    "supervisor_event_socket_group": ("event_socket_group", _text, False),
    "supervisor_event_allow_users": ("event_allow_users", _words, False),
    "supervisor_callback_state_dir": ("state_dir", _text, True),
    "supervisor_callback_timeout": ("callback_timeout", _SECONDS, False),
    "supervisor_callback_kill_grace": ("kill_grace", _SECONDS_OR_ZERO, False),
    "supervisor_callback_output_limit": (
        "output_limit",
        _integer(0, 2**62, "bytes (an integer >= 0)"),
        False,
    ),
    "supervisor_callback_concurrency": (
        "concurrency",
        _integer(1, 1_000_000, "a whole number of callbacks >= 1"),
        False,
    ),
    "supervisor_callback_job_retention": ("job_retention", _SECONDS_OR_ZERO, False),
    "supervisor_callback_user": ("callback_user", _text, False),
    "supervisor_callback_python": ("callback_python", _text, True),
    "supervisor_callback_perl": ("callback_perl", _text, True),
    "supervisor_callback_per_job_order": ("per_job_order", _boolean, False),
    "supervisor_callback_history_retention": ("history_retention", _SECONDS_OR_ZERO, False),
    "supervisor_callback_python_mode": (
        "python_mode",
        _choice({"forkserver": "forkserver", "fresh": "fresh"}, "forkserver or fresh"),
        False,
    ),
    "supervisor_callback_journal_sync": (
        "journal_sync",
        _choice({"full": "full", "normal": "normal", "off": "off"}, "full, normal or off"),
        False,
    ),
    "supervisor_callback_limit_cpu": ("limit_cpu", _integer(1, 2**62, "CPU seconds (>= 1)"), False),
    "supervisor_callback_limit_nofile": (
        "limit_nofile",
        _integer(8, 2**30, "a number of open files (>= 8)"),
        False,
    ),
    "supervisor_callback_limit_as": (
        "limit_as",
        _integer(1 << 20, 2**62, "bytes of address space (>= 1048576)"),
        False,
    ),
    "supervisor_callback_limit_nproc": (
        "limit_nproc",
        _integer(1, 2**30, "a number of processes (>= 1)"),
        False,
    ),
    "supervisor_callback_queue_limit": (
        "queue_limit",
        _integer(1, 10_000_000, "a number of queued runs (>= 1)"),
        False,
    ),
    "supervisor_event_max_connections": (
        "event_max_connections",
        _integer(1, 10_000_000, "a number of connections (>= 1)"),
        False,
    ),
    "supervisor_callback_background_timeout": ("background_timeout", _SECONDS, False),
    "supervisor_callback_journal": ("journal", _journal, False),
    "supervisor_callback_member": ("member", _text, False),
    "supervisor_callback_role": (
        "role",
        _choice({r: r for r in ("all", "executor", "intake")}, "all, executor or intake"),
        False,
    ),
    "supervisor_callback_lease": ("lease", _SECONDS, False),
    "supervisor_callback_log_level": (
        "log_level",
        _choice({level: level for level in LOG_LEVELS}, f"a log level ({', '.join(LOG_LEVELS)})"),
        False,
    ),
}
MAIL_KEYS: Final[dict[str, tuple[str, Callable[[str], Any], bool]]] = {
    "mail_host": ("host", _text, False),
    "mail_port": ("port", _integer(1, 65535, "a port number (1-65535)"), False),
    "mail_from": ("from_", _text, False),
    "mail_domain": ("domain", _text, False),
    "mail_administrator": ("administrator", _text, False),
    "mail_connection_type": (
        "connection_type",
        _choice(_CONNECTION_TYPES, "plain, ssl or tls"),
        False,
    ),
    "mail_user": ("user", _text, False),
    "mail_password": ("password", _text, False),
    "mail_job_status_format": ("job_status_format", _text, True),
    "mail_subjob_status_format": ("subjob_status_format", _text, True),
    "mail_work_status_format": ("work_status_format", _text, True),
}


def defaults(qbdir: str, default_python: str) -> dict[str, Any]:
    return {
        "qbdir": qbdir,
        "callback_path": (f"{qbdir}/callback",),
        "language_flags": frozenset(LANGUAGE_BITS),
        "logpath": f"{qbdir}/logs",
        "event_socket": f"{qbdir}/run/callbacks.sock",
        "event_socket_mode": 0o660,
        "event_socket_group": None,
        "event_allow_users": (),
        "state_dir": f"{qbdir}/state",
        "callback_timeout": 600.0,
        "kill_grace": 5.0,
        "output_limit": 1048576,
        "concurrency": 64,
        "job_retention": 86400.0,
        "callback_user": None,
        "callback_python": default_python,
        "callback_perl": "perl",
        "per_job_order": True,
        "history_retention": 2592000.0,
        "python_mode": "forkserver",
        "log_level": "info",
        "journal_sync": "full",
        "event_max_connections": 4096,
        "background_timeout": 3600.0,
    }
