"""systemd integration by hand: sd_notify datagrams and inherited listening sockets."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from typing import Final

log = logging.getLogger(__name__)

# sd_listen_fds(3): inherited sockets start at fd 3.
SD_LISTEN_FDS_START: Final = 3


class Notifier:
    """Sends sd_notify(3) messages to $NOTIFY_SOCKET; does nothing when it is not set."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._address = env.get("NOTIFY_SOCKET") or None
        self._sock: socket.socket | None = None
        if self._address:
            if self._address.startswith("@"):  # abstract namespace
                self._address = "\0" + self._address[1:]
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *fields: str) -> None:
        if self._sock is None or self._address is None:
            return
        try:
            self._sock.sendto("\n".join(fields).encode(), self._address)
        except OSError as exc:  # systemd gone or its queue full: never fatal
            log.warning("sd_notify failed error=%s", exc)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Half of WATCHDOG_USEC when the watchdog is meant for this process, else None."""
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(int(usec) / 2e6, 0.01)
    except ValueError:
        return None


def listen_fds(env: Mapping[str, str]) -> list[socket.socket]:
    """Sockets passed by systemd socket activation (LISTEN_FDS/LISTEN_PID), if for us."""
    pid, count = env.get("LISTEN_PID"), env.get("LISTEN_FDS")
    if not count or (pid and pid != str(os.getpid())):
        return []
    socks = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count)):
        os.set_inheritable(fd, False)
        socks.append(socket.socket(fileno=fd))
    return socks
