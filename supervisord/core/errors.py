"""The exception hierarchy: every error this package raises on purpose."""

from __future__ import annotations

from collections.abc import Iterable


class QbError(Exception):
    """Base of every error raised on purpose by qbcallbacks."""


class ConfigError(QbError):
    """One problem in a configuration file, reported as ``path:line: reason``."""

    def __init__(self, path: str, line: int | None, reason: str) -> None:
        self.path = path
        self.line = line
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.line is None:
            return f"{self.path}: {self.reason}"
        return f"{self.path}:{self.line}: {self.reason}"


class ConfigErrors(QbError):
    """Every problem found while loading configuration, collected, not just the first."""

    def __init__(self, errors: Iterable[ConfigError]) -> None:
        self.errors = tuple(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


class TriggerError(QbError):
    """A trigger expression that does not parse; ``reason`` says where and why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class EventError(QbError):
    """An event that fails validation; names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class StoreError(QbError):
    """The durable store cannot read or write (disk full, read-only, corrupt)."""
