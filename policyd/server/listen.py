"""Where the daemon listens: unix sockets with safe permissions, loopback TCP."""

from __future__ import annotations

import grp
import ipaddress
import os
import socket
import stat
from dataclasses import dataclass
from typing import Optional


class ListenError(ValueError):
    pass


@dataclass(frozen=True)
class Endpoint:
    """A parsed gRPC target: a unix socket path, or host and port."""

    target: str                 # as gRPC wants it
    unix_path: Optional[str] = None
    host: Optional[str] = None
    port: Optional[int] = None

    @property
    def is_unix(self) -> bool:
        return self.unix_path is not None


def parse(address: str) -> Endpoint:
    if address.startswith("unix:"):
        path = address[len("unix:"):]
        if path.startswith("//"):
            path = path[2:]
        if not path.startswith("/"):
            path = os.path.abspath(path)
        return Endpoint(f"unix:{path}", unix_path=path)
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ListenError(f"{address!r} is neither unix:/path/to.sock nor HOST:PORT")
    host = host.strip("[]")
    return Endpoint(address, host=host, port=int(port))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


RUN_DIR = "/run/policyd"


def admin_default(listen: Endpoint, state_dir: Optional[str] = None) -> Endpoint:
    """The admin socket, always a unix socket (never reachable from another host): next to a
    unix listen socket; with a TCP listen, policyd-admin.sock in the state directory, or
    /run/policyd/policyd-PORT-admin.sock (one per daemon on the host)."""
    if listen.is_unix:
        base, ext = os.path.splitext(listen.unix_path)
        return parse(f"unix:{base}-admin{ext or '.sock'}")
    if state_dir:
        return parse(f"unix:{os.path.join(state_dir, 'policyd-admin.sock')}")
    return parse(f"unix:{RUN_DIR}/policyd-{listen.port}-admin.sock")


def prepare_unix_path(path: str) -> None:
    """Make the parent directory and clear a stale socket (never a live one or a file)."""
    parent = os.path.dirname(path)
    os.makedirs(parent, mode=0o755, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ListenError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(0.5)
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody answers: a leftover from a previous run
        return
    finally:
        probe.close()
    raise ListenError(f"{path} is in use by another running daemon")


def secure_unix_socket(path: str, mode: int, group: Optional[str]) -> None:
    """Apply owner group and mode so that exactly the intended users connect."""
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise ListenError(f"unknown group {group!r} for {path}") from None
        os.chown(path, -1, gid)
    os.chmod(path, mode)
