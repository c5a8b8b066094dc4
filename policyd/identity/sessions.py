"""Which certificate each identity last authenticated with (daemon memory).

The shim only knows usernames, so revoking a certificate on a reload kicks
the usernames that authenticated with it; the daemon remembers, per
username, the serial and fingerprint of its last successful Authenticate,
and the certificate attributes that CheckAcl passes to the rules.
Bounded: the least recently authenticated entries are forgotten first
(a forgotten one is merely not kicked; its next CONNECT is still checked).
"""

from __future__ import annotations

import collections
import threading
from typing import Mapping

from .certificate import CertIdentity
from .spec import Revocations

MAX_SESSIONS = 1_000_000


class SessionRegistry:
    def __init__(self, limit: int = MAX_SESSIONS):
        self._limit = limit
        self._lock = threading.Lock()
        self._by_username: collections.OrderedDict[str, CertIdentity] = collections.OrderedDict()

    def remember(self, ident: CertIdentity) -> None:
        with self._lock:
            self._by_username[ident.username] = ident
            self._by_username.move_to_end(ident.username)
            while len(self._by_username) > self._limit:
                self._by_username.popitem(last=False)

    def attributes(self, username: str | bytes | None) -> Mapping[str, tuple[str, ...]]:
        if not self._by_username or username is None:
            return {}
        if isinstance(username, bytes):
            try:
                username = username.decode("utf-8")
            except UnicodeDecodeError:
                return {}
        ident = self._by_username.get(username)
        return ident.attributes if ident is not None else {}

    def revoked_usernames(self, revoked: Revocations) -> frozenset[str]:
        """Usernames whose last certificate `revoked` now revokes (they are forgotten too)."""
        if not revoked:
            return frozenset()
        with self._lock:
            names = [name for name, ident in self._by_username.items()
                     if revoked.revokes(ident.serial, ident.fingerprint)]
            for name in names:
                del self._by_username[name]
        return frozenset(names)

    def __len__(self) -> int:
        return len(self._by_username)
