"""Parsing of ``.qcb`` files: Qube callback-language codes, one per line (SPEC §4)."""

from __future__ import annotations

from typing import Final

from supervisord.core.errors import ConfigError, ConfigErrors
from supervisord.core.model import QcbCode

# The verbs Qube's callback language applies to a job, a work item or a subjob.
VERBS: Final = (
    "unblock",
    "block",
    "fail",
    "kill",
    "migrate",
    "preempt",
    "interrupt",
    "suspend",
    "resume",
    "retry",
    "requeue",
    "complete",
    "remove",
)
# code -> (action, scope, mail)
CODES: Final[dict[str, tuple[str | None, str, str | None]]] = {
    **{f"{verb}-self": (verb, "job", None) for verb in VERBS},
    **{f"{verb}-work-self": (verb, "work", None) for verb in VERBS},
    **{f"{verb}-subjob-self": (verb, "subjob", None) for verb in VERBS},
    "mail-status": (None, "job", "mail-status"),
    "mail-report-status": (None, "job", "mail-report-status"),
    "mail-subjob-status": (None, "subjob", "mail-subjob-status"),
}


def parse_qcb(text: str, path: str) -> tuple[QcbCode, ...]:
    """Parse a .qcb file; raise ConfigErrors naming every unknown code with its line."""
    codes: list[QcbCode] = []
    errors: list[ConfigError] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        written = raw.strip()
        if not written or written.startswith("#"):
            continue
        known = CODES.get(written.lower())
        if known is None:
            errors.append(ConfigError(path, lineno, f"unknown .qcb code {written!r}"))
            continue
        action, scope, mail = known
        codes.append(QcbCode(lineno, written, action, scope, mail))
    if errors:
        raise ConfigErrors(errors)
    return tuple(codes)
