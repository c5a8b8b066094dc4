"""Telling systemd how the daemon is doing (`Type=notify`), without libsystemd.

With `Type=notify` systemd counts the service as started only once it says
READY=1 — after the policy is loaded and the sockets listen — so units ordered
after it (mosquitto, through the drop-in) start when answers are available, and
`systemctl reload` waits instead of signalling a process that is still starting.
The protocol is one datagram per message to $NOTIFY_SOCKET; outside systemd
that variable is unset and every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("policyd.systemd")


def notify(*fields: str) -> bool:
    """Send "KEY=value" fields; True when a service manager was told."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(fields).encode())
        return True
    except OSError as exc:  # never fatal: systemd then times the start out and says so
        log.warning("cannot notify systemd at %s: %s", os.environ.get("NOTIFY_SOCKET"), exc)
        return False
