"""Each callback directory's policy.yaml (SPEC §7.1), read beside its callbacks.conf."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from supervisord.core.errors import ConfigError
from supervisord.core.model import Callback, Settings
from supervisord.core.policy import DEFAULT_POLICY, Policy, PolicySet, parse_policy
from supervisord.daemon.load import Loaded, LoadFailed, load_callbacks

POLICY_FILE = "policy.yaml"


def _empty() -> Mapping[str, PolicySet]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Policies:
    """The policy sets of the callback directories that have a policy.yaml."""

    by_dir: Mapping[str, PolicySet] = field(default_factory=_empty)

    def of(self, cb: Callback) -> Policy:
        """The policy of one callback: its own keys over its directory's ``defaults``."""
        policies = self.by_dir.get(cb.dir)
        return DEFAULT_POLICY if policies is None else policies.for_callback(cb.file)

    @property
    def is_default(self) -> bool:
        """No callback is delivered any differently from Qube (§4): the fast path."""
        return all(p.is_default for p in self.by_dir.values())


def load_policies(callbacks: Iterable[Callback]) -> tuple[Policies, list[ConfigError]]:
    """Read policy.yaml in each directory that holds callbacks; every problem as an error."""
    files: dict[str, set[str]] = {}
    for cb in callbacks:
        files.setdefault(cb.dir, set()).add(cb.file)
    found: dict[str, PolicySet] = {}
    errors: list[ConfigError] = []
    for directory, names in files.items():
        path = os.path.join(directory, POLICY_FILE)
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError) as exc:
            errors.append(ConfigError(path, None, f"cannot read {POLICY_FILE}: {exc}"))
            continue
        policies, problems = parse_policy(text, path, names)
        errors += problems
        if not problems and not policies.is_default:
            found[directory] = policies
    return Policies(MappingProxyType(found)), errors


def load_config(settings: Settings) -> tuple[Loaded, Policies]:
    """Every callbacks.conf and every policy.yaml of the callback path; every problem of both
    at once (``LoadFailed``, with what did load, for `check`)."""
    try:
        loaded = load_callbacks(settings)
    except LoadFailed as exc:
        _, problems = load_policies(exc.partial.callbacks)
        raise LoadFailed([*exc.errors, *problems], exc.partial) from None
    policies, problems = load_policies(loaded.callbacks)
    if problems:
        raise LoadFailed(problems, loaded)
    return loaded, policies
