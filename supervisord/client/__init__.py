"""The public API for job submission clients: ``from supervisord.client import Client``.

``Client`` sends events until the daemon acknowledges them (resending the same event,
same ``event_id``, after a lost reply or a restart), spools them to disk when the daemon
stays away, and makes the other socket calls. ``Connection`` is the low-level single
connection the command line uses. Only the core and the standard library are imported,
so that a submission client pulls in nothing of the daemon.
"""

from supervisord.client.acks import (
    Ack,
    BatchRejected,
    FlushReport,
    Rejected,
    SpoolError,
    Undelivered,
)
from supervisord.client.api import Client
from supervisord.client.connection import Connection, ProtocolError, Unreachable
from supervisord.client.docs import event
from supervisord.client.locate import find_socket

__all__ = [
    "Ack",
    "BatchRejected",
    "Client",
    "Connection",
    "FlushReport",
    "ProtocolError",
    "Rejected",
    "SpoolError",
    "Undelivered",
    "Unreachable",
    "event",
    "find_socket",
]
