"""The listening Unix socket: bind safely, set mode and group, decide who may connect."""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import pwd
import socket
import stat

from supervisord.core.errors import ConfigError
from supervisord.core.model import Settings

log = logging.getLogger(__name__)


def bind(settings: Settings) -> socket.socket:
    """Bind the intake socket; a stale socket file is removed, any other file is an error."""
    path = settings.event_socket
    where = f"{settings.path}: supervisor_event_socket"
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None:
        if not stat.S_ISSOCK(st.st_mode):
            raise ConfigError(where, None, f"{path} exists and is not a socket; not removing it")
        if _is_live(path):
            raise ConfigError(where, None, f"another daemon is already listening on {path}")
        log.info("removing stale socket path=%s", path)
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, settings.event_socket_mode)
        if settings.event_socket_group:
            os.chown(path, -1, _gid(settings.event_socket_group, where))
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise ConfigError(where, None, f"cannot listen on {path}: {exc.strerror}") from exc
    return sock


def _is_live(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def _gid(group: str, where: str) -> int:
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(where, None, f"unknown group {group!r}") from None


def allowed_uids(settings: Settings) -> tuple[frozenset[int], list[str]]:
    """Root, the daemon's own uid and every user of supervisor_event_allow_users."""
    uids = {0, os.getuid()}
    unknown = []
    for user in settings.event_allow_users:
        if user.isdigit():
            uids.add(int(user))
            continue
        try:
            uids.add(pwd.getpwnam(user).pw_uid)
        except KeyError:
            unknown.append(user)
    return frozenset(uids), unknown


def unlink_if_ours(path: str, inode: int | None) -> None:
    """Remove the socket file at shutdown, only if it is still the one we created."""
    if inode is None:
        return
    with contextlib.suppress(OSError):
        if os.lstat(path).st_ino == inode:
            os.unlink(path)
