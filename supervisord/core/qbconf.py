"""The qb.conf line syntax (SPEC §1.1) and its parse into Settings; the keys are in qbkeys."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from supervisord.core.errors import ConfigError, ConfigErrors
from supervisord.core.model import MailSettings, Settings
from supervisord.core.qbkeys import KEYS, MAIL_KEYS, Invalid, defaults

# Where Qube installs itself when QBDIR is not set.
DEFAULT_QBDIR: Final = "/usr/local/pfx/qube"
_VARIABLE: Final = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


@dataclass(frozen=True, slots=True)
class Line:
    """One ``key = value`` line of a qb.conf-style file."""

    lineno: int
    key: str
    value: str


def split_lines(text: str, path: str) -> tuple[list[Line], list[ConfigError]]:
    """Split qb.conf-style text into lines; lines without ``=`` come back as errors."""
    lines: list[Line] = []
    errors: list[ConfigError] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, equals, value = stripped.partition("=")
        if not equals:
            errors.append(ConfigError(path, lineno, f"expected 'name = value', got {stripped!r}"))
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        lines.append(Line(lineno, key.strip(), value))
    return lines, errors


def expand(value: str, env: Mapping[str, str]) -> str:
    """Expand ``$VAR`` and ``${VAR}`` from ``env``; QBDIR defaults, unknown names stay."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name == "QBDIR":
            return env.get("QBDIR") or DEFAULT_QBDIR
        return env.get(name, match.group(0))

    return _VARIABLE.sub(substitute, value)


def parse_qbconf(text: str, path: str, env: Mapping[str, str], default_python: str) -> Settings:
    """Read this daemon's keys from qb.conf text; raise ConfigErrors listing every bad value.

    Besides Qube's keys listed in SPEC §1.1, these keys of ours are read (defaults in brackets):

    - ``supervisor_callback_per_job_order`` [true]: runs of one job start in the order of their
      events (true/false, yes/no, on/off, 1/0);
    - ``supervisor_callback_history_retention`` [2592000]: seconds of run history kept;
    - ``supervisor_callback_python_mode`` [forkserver]: ``forkserver`` starts Python callbacks
      from a preloaded interpreter, ``fresh`` starts a new interpreter for every run;
    - ``supervisor_callback_log_level`` [info]: debug, info, warning, error or critical;
    - ``supervisor_callback_limit_cpu``, ``_limit_nofile``, ``_limit_as``, ``_limit_nproc``
      [unset: inherit]: resource limits set in each callback's process;
    - ``supervisor_callback_queue_limit`` [20000]: queued runs beyond which intake pauses;
    - ``supervisor_event_max_connections`` [4096]: client connections open at once;
    - ``supervisor_callback_background_timeout`` [3600]: seconds a callback's background
      processes may outlive it (SPEC §4);
    - ``supervisor_callback_journal_sync`` [full]: the journal's SQLite synchronous mode; only
      ``full`` keeps the promise that an acknowledged event survives a crash of the machine.

    An empty value (``key =``) counts as if the key were absent: its default applies.
    """
    latest: dict[str, Line] = {}
    for entry in split_lines(text, path)[0]:  # lines without '=' belong to other Qube parts
        latest[entry.key.lower()] = entry
    qbdir = env.get("QBDIR") or DEFAULT_QBDIR
    values = defaults(qbdir, default_python)
    mail: dict[str, Any] = {}
    errors: list[ConfigError] = []
    for table, target in ((KEYS, values), (MAIL_KEYS, mail)):
        for key, (field, convert, expands) in table.items():
            line = latest.get(key)
            if line is None or line.value == "":
                continue
            raw = expand(line.value, env) if expands else line.value
            try:
                target[field] = convert(raw)
            except Invalid as bad:
                reason = f"{key}: expected {bad.expected}, got {line.value!r}"
                errors.append(ConfigError(path, line.lineno, reason))
    role = latest.get("supervisor_callback_role")
    if values.get("journal", "sqlite") == "sqlite" and values.get("role", "all") != "all" and role:
        reason = (
            f"supervisor_callback_role = {values['role']} needs a journal other members share:"
            " set supervisor_callback_journal to a PostgreSQL connection string (SPEC §8)"
        )
        errors.append(ConfigError(path, role.lineno, reason))
    if errors:
        raise ConfigErrors(sorted(errors, key=lambda error: error.line or 0))
    return Settings(path=path, mail=MailSettings(**mail), **values)
