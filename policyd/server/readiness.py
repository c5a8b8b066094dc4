"""Ready means a broker's check would be answered: the daemon asks itself.

`/readyz` and systemd's READY=1 used to mean "a policy is loaded". A daemon
whose every answer failed to encode (a cache TTL out of range), or whose socket
the broker's user cannot open, was then ready while every broker denied
everything. Here readiness is one real CheckAcl over the real listen socket
(an UNSUBSCRIBE, which every policy allows: it reads no rule and is counted
like any other check), and, before that, whether the broker's user may open
that socket at all.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import socket
import stat
import threading
import time
from typing import Callable, Optional

import grpc

from ..v1 import policy_pb2 as pb
from ..v1 import policy_pb2_grpc as pb_grpc
from . import listen

log = logging.getLogger("policyd.readiness")

BROKER_USER = "mosquitto"  # Debian's broker drops to this user before it loads plugins
PROBE = pb.CheckAclRequest(has_username=False, client_id=b"policyd-readiness-probe",
                           topic=b"policyd/readiness", access=pb.ACCESS_UNSUBSCRIBE)


def _can(st: os.stat_result, uid: Optional[int], gids: set[int], bits: tuple[int, int, int]) -> bool:
    """Whether uid/gids get the permission whose owner/group/other bits are `bits`."""
    if uid == 0:
        return True
    if uid is not None and st.st_uid == uid:
        return bool(st.st_mode & bits[0])
    if st.st_gid in gids:
        return bool(st.st_mode & bits[1])
    return bool(st.st_mode & bits[2])


def socket_access_problem(path: str, uid: Optional[int], gids: set[int]) -> Optional[str]:
    """Why uid (None: any member of `gids`) cannot connect to the unix socket at `path`."""
    directory = os.path.dirname(os.path.abspath(path))
    parts = []
    while True:
        parts.append(directory)
        parent = os.path.dirname(directory)
        if parent == directory:
            break
        directory = parent
    for directory in reversed(parts):
        if not _can(os.stat(directory), uid, gids, (stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH)):
            return f"cannot enter the directory {directory}"
    if not _can(os.stat(path), uid, gids, (stat.S_IWUSR, stat.S_IWGRP, stat.S_IWOTH)):
        return f"has no write permission on {path} (connecting to a unix socket needs it)"
    return None


def broker_access_problem(path: str, group: Optional[str]) -> Optional[str]:
    """Whether the broker's user can open the socket: the `mosquitto` user when it exists,
    else any member of `group`; None when it can, or when nobody is known to check."""
    try:
        user = pwd.getpwnam(BROKER_USER)
    except KeyError:
        user = None
    if user is not None:
        who, uid, gids = f"the {BROKER_USER} user", user.pw_uid, set(os.getgrouplist(BROKER_USER, user.pw_gid))
        if group is not None and grp.getgrnam(group).gr_gid not in gids:
            return (f"{who} is not in the group {group!r} of the socket {path}: add it "
                    f"(usermod -aG {group} {BROKER_USER}) or give --socket-group a group it is in")
    elif group is not None:
        who, uid, gids = f"members of the group {group!r}", None, {grp.getgrnam(group).gr_gid}
    else:
        return None
    why = socket_access_problem(path, uid, gids)
    if why is None:
        return None
    return (f"{who} {why}, so the broker could not ask this daemon and would deny every check: "
            f"start policyd with --socket-group {group or BROKER_USER} (and a --socket-mode that lets "
            f"the group write, e.g. 0660), and put the socket in a directory the broker can enter")


class SocketProbe:
    """One CheckAcl over the listen socket, as a broker would send it; the last result
    is kept for `max_age_s` so that a busy /readyz costs one round trip a second."""

    def __init__(self, endpoint: listen.Endpoint, answer_in_process: Callable[[pb.CheckAclRequest], pb.CheckAclResponse],
                 tls: bool = False, max_age_s: float = 1.0, timeout_s: float = 2.0):
        self.endpoint = endpoint
        self.tls = tls
        self.answer_in_process = answer_in_process
        self.max_age_s = max_age_s
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._checked_at = -1e9
        self._problem: Optional[str] = "not checked yet"

    def problem(self) -> Optional[str]:
        """None when a check would be answered now, else why not."""
        with self._lock:
            if time.monotonic() - self._checked_at >= self.max_age_s:
                self._problem = self._ask()
                self._checked_at = time.monotonic()
            return self._problem

    def _ask(self) -> Optional[str]:
        try:
            if self.tls:
                # A link client needs a certificate of the link CA, which the daemon does not hold:
                # the socket is checked for a connection, the answer is encoded in process.
                host = self.endpoint.host if self.endpoint.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
                with socket.create_connection((host, self.endpoint.port), timeout=self.timeout_s):
                    pass
                answer = pb.CheckAclResponse.FromString(self.answer_in_process(PROBE).SerializeToString())
            else:
                # A new connection each time, as a broker (re)starting would make: an open one
                # outlives the socket file being removed or its permissions changed.
                with grpc.insecure_channel(self._target(), options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
                    answer = pb_grpc.PolicyStub(ch).CheckAcl(PROBE, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            return f"a check over {self.endpoint.target} failed: {exc.code().name}: {exc.details()}"
        except (OSError, ValueError) as exc:
            return f"a check over {self.endpoint.target} failed: {exc}"
        if answer.result != pb.RESULT_ALLOW or answer.generation <= 0:
            return f"a check over {self.endpoint.target} was answered wrongly: {answer}"
        return None

    def _target(self) -> str:
        if self.endpoint.is_unix or self.endpoint.host not in ("", "0.0.0.0", "::"):
            return self.endpoint.target
        return f"127.0.0.1:{self.endpoint.port}"  # a wildcard listener answers on loopback

    def close(self) -> None:
        """Nothing stays open between probes; kept for the daemon's stop()."""
