"""Talking to a running daemon: finding its socket and sending requests — the public API for
job submission clients, ``from supervisord.client import Client``.

It may import the core only (and the standard library), so that a submission client pulls in
nothing of the daemon.
"""

from supervisord.client.connection import Client, ProtocolError, Unreachable
from supervisord.client.locate import find_socket

__all__ = ["Client", "ProtocolError", "Unreachable", "find_socket"]
