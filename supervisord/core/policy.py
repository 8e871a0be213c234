"""Parsing a callback directory's policy.yaml (SPEC §7.1) into merged per-callback policies."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Final

import yaml

from supervisord.core.errors import ConfigError
from supervisord.core.policyfields import (
    FIELDS,
    INVALID,
    OUTCOMES,
    BreakerPolicy,
    Policy,
    Rate,
    Report,
    is_null,
    line_of,
    shown,
)

__all__ = [
    "DEFAULTS_KEY",
    "DEFAULT_POLICY",
    "OUTCOMES",
    "BreakerPolicy",
    "Policy",
    "PolicySet",
    "Rate",
    "parse_policy",
]

# The top-level key whose fields apply to every callback of the directory.
DEFAULTS_KEY: Final = "defaults"
# Qube's behaviour (§4): one attempt, no caps, no breaker, the global timeout.
DEFAULT_POLICY: Final = Policy()


def _no_files() -> Mapping[str, Policy]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class PolicySet:
    """The policies of one callback directory: ``defaults``, and each keyed callback's merge."""

    defaults: Policy = DEFAULT_POLICY
    # Only the callbacks with a key of their own; every other one gets ``defaults``.
    by_file: Mapping[str, Policy] = field(default_factory=_no_files, hash=False)

    def for_callback(self, file: str) -> Policy:
        """The policy of a callback of this directory, its own keys over ``defaults``."""
        return self.by_file.get(file, self.defaults)

    @property
    def is_default(self) -> bool:
        """True when no callback of the directory is delivered any differently from Qube."""
        return self.defaults.is_default and all(p.is_default for p in self.by_file.values())


def parse_policy(
    text: str, path: str, callbacks: Collection[str]
) -> tuple[PolicySet, list[ConfigError]]:
    """Parse policy.yaml text for the callback files of its callbacks.conf; collect every error.

    An empty file, or one of only comments, is no policy. With errors, the set returned
    holds what did validate; a caller refuses the whole file (exit 78, or a failed reload).
    """
    report = Report(path)
    root = _compose(text, report)
    if root is None:
        return PolicySet(), report.errors
    sections = _sections(root, report, frozenset(callbacks))
    defaults = replace(DEFAULT_POLICY, **sections.pop(DEFAULTS_KEY, {}))
    by_file = {file: replace(defaults, **fields) for file, fields in sections.items()}
    report.errors.sort(key=lambda error: error.line or 0)
    return PolicySet(defaults, MappingProxyType(by_file)), report.errors


def _compose(text: str, report: Report) -> yaml.MappingNode | None:
    """The document's top mapping, or None when there is none (reported unless empty)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = int(mark.line) + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        if problem.startswith("but "):  # "but found another document" needs its context
            problem = f"{getattr(exc, 'context', None)}, {problem}"
        report.errors.append(ConfigError(report.path, line, f"not valid YAML: {problem}"))
        return None
    if root is None or is_null(root):
        return None
    if not isinstance(root, yaml.MappingNode):
        got = shown(root, report)
        report.bad(root, f"expected callback file names (or defaults) as keys, got {got}")
        return None
    return root


def _sections(
    root: yaml.MappingNode, report: Report, callbacks: frozenset[str]
) -> dict[str, dict[str, Any]]:
    """The valid fields set under each top-level key, reporting bad names and values."""
    sections: dict[str, dict[str, Any]] = {}
    first_line: dict[str, int] = {}
    for key_node, value_node in root.value:
        if not isinstance(key_node, yaml.ScalarNode):
            report.bad(
                key_node, f"expected a callback file name as key, got {shown(key_node, report)}"
            )
            continue
        # The key as written, even if YAML would read it as a number: file names are text.
        name = str(key_node.value)
        known = name == DEFAULTS_KEY or name in callbacks
        if name in first_line:
            report.bad(key_node, f"duplicate key {name!r} (first at line {first_line[name]})")
            known = False
        elif not known:
            report.bad(key_node, f"{name!r} is not a callback in callbacks.conf")
        first_line.setdefault(name, line_of(key_node))
        fields = _fields(value_node, name, report)  # checked even when the name is bad
        if known:
            sections[name] = fields
    return sections


def _fields(node: yaml.Node, who: str, report: Report) -> dict[str, Any]:
    """The valid ``key: value`` fields of one callback's (or ``defaults``') mapping."""
    if is_null(node):
        return {}
    if not isinstance(node, yaml.MappingNode):
        report.bad(node, f"expected policy keys for {who}, got {shown(node, report)}")
        return {}
    # Any: each value is the type its checker in FIELDS returns, as ``replace`` expects.
    fields: dict[str, Any] = {}
    seen: set[str] = set()
    for key_node, value_node in node.value:
        key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else ""
        check = FIELDS.get(key)
        if check is None:
            known = ", ".join(FIELDS)
            got = shown(key_node, report)
            report.bad(key_node, f"unknown key {got} for {who} (expected one of: {known})")
        elif key in seen:
            report.bad(key_node, f"duplicate key {key!r} for {who}")
        else:
            seen.add(key)
            value = check(value_node, report)
            if value is not INVALID:
                fields[key] = value
    return fields
