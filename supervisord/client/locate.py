"""Finding qb.conf and the daemon's socket as every client command does (SPEC §5)."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Final

from supervisord.core.errors import ConfigError, ConfigErrors, QbError
from supervisord.core.model import Settings
from supervisord.core.qbconf import parse_qbconf

DEFAULT_QBDIR: Final = "/usr/local/pfx/qube"  # Qube's own install prefix (SPEC §1.1)
ETC_QBCONF: Final = "/etc/qb.conf"  # where every Qube component looks first


def find_qbconf(
    args_config: str | None, env: Mapping[str, str], etc_path: str = ETC_QBCONF
) -> str | None:
    """``--config``, else ``$QB_CONF``, else ``/etc/qb.conf`` if it exists, else
    ``$QBDIR/etc/qb.conf`` if it exists, else None (SPEC §5)."""
    if args_config:
        return args_config
    if env.get("QB_CONF"):
        return env["QB_CONF"]
    qbdir_conf = os.path.join(env.get("QBDIR") or DEFAULT_QBDIR, "etc", "qb.conf")
    for candidate in (etc_path, qbdir_conf):
        if os.path.isfile(candidate):
            return candidate
    return None


def read_settings(qbconf: str, env: Mapping[str, str]) -> Settings:
    """qb.conf read as the daemon reads it; raises ConfigErrors."""
    try:
        with open(qbconf, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError as exc:
        reason = f"cannot read qb.conf: {exc.strerror}"
        raise ConfigErrors([ConfigError(qbconf, None, reason)]) from exc
    return parse_qbconf(text, qbconf, env, default_python=sys.executable)


def find_socket(
    args_socket: str | None, qbconf: str | None, env: Mapping[str, str]
) -> tuple[str, str]:
    """The socket path and how it was found, in words that follow "socket path".

    Raises ConfigErrors when the qb.conf it has to read is unreadable or invalid.
    """
    if args_socket:
        return args_socket, "given by --socket"
    if qbconf is not None:
        return read_settings(qbconf, env).event_socket, f"from supervisor_event_socket in {qbconf}"
    path = os.path.join(env.get("QBDIR") or DEFAULT_QBDIR, "run", "callbacks.sock")
    if not env.get("QBDIR") and not os.path.exists(path):
        found = _checkout_socket(env)
        if found is not None:
            return found
    return path, "is the default $QBDIR/run/callbacks.sock (no qb.conf found)"


def _checkout_socket(env: Mapping[str, str]) -> tuple[str, str] | None:
    """The socket of `make run` in the source checkout this package runs from, if it is live.

    Only consulted after every place SPEC §5 names came up empty, so that a new user's
    `.venv/bin/qbsupervisor emit ...` in a second terminal reaches the daemon `make run` started.
    """
    checkout = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    conf = os.path.join(checkout, "etc", "qb.conf")
    if not os.path.isfile(os.path.join(checkout, "pyproject.toml")) or not os.path.isfile(conf):
        return None
    try:
        path = read_settings(conf, {**env, "QBDIR": checkout}).event_socket
    except QbError:
        return None
    if not os.path.exists(path):
        return None
    return path, f"from {conf} with QBDIR={checkout} (the source checkout `make run` serves)"
