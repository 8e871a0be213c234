"""Parsing of a callbacks.conf (SPEC §1.2): ``filename = trigger`` lines into entries."""

from __future__ import annotations

from dataclasses import dataclass

from supervisord.core.errors import ConfigError, TriggerError
from supervisord.core.model import LANGUAGE_BY_EXTENSION, Expr
from supervisord.core.qbconf import Line, split_lines
from supervisord.core.triggers import parse_trigger


@dataclass(frozen=True, slots=True)
class Entry:
    """One valid line of a callbacks.conf, before its file is looked at."""

    file: str
    trigger_text: str
    line: int
    language: str
    trigger: Expr


def parse_callbacks_conf(text: str, path: str) -> tuple[list[Entry], list[ConfigError]]:
    """Parse callbacks.conf text; return the good entries and an error for every bad line."""
    lines, errors = split_lines(text, path)
    entries: list[Entry] = []
    for line in lines:
        entry = _entry(line)
        if isinstance(entry, Entry):
            entries.append(entry)
        else:
            errors.append(ConfigError(path, line.lineno, entry))
    errors.sort(key=lambda error: error.line or 0)
    return entries, errors


def _entry(line: Line) -> Entry | str:
    """The entry for one ``filename = trigger`` line, or why there is none."""
    file, text = line.key, line.value
    if not file:
        return "empty callback file name"
    language = LANGUAGE_BY_EXTENSION.get(_extension(file))
    if language is None:
        return (
            f"unknown callback extension {_extension(file) or '(none)'!r} for {file!r}"
            " (expected .py, .pl or .qcb)"
        )
    if "/" in file or file in LANGUAGE_BY_EXTENSION:
        return f"expected a file name in the same directory, got {file!r}"
    if not text:
        return f"empty trigger for {file!r}"
    try:
        return Entry(file, text, line.lineno, language, parse_trigger(text))
    except TriggerError as bad:
        return bad.reason


def _extension(file: str) -> str:
    _stem, dot, extension = file.rpartition(".")
    return f".{extension}" if dot else ""
