"""Policy.Authenticate: the daemon's answer at CONNECT in identity mode.

Fails closed: a refusal, a malformed request or a bug all answer deny, with
one rate-limited log line per kind of refusal, counted by kind. Nothing
secret reaches a log: the request carries no password, and client-supplied
text is escaped.
"""

from __future__ import annotations

import logging
from typing import Mapping

from ..server.ratelimit import RateLimitedLog
from ..v1 import policy_pb2 as pb
from .certificate import Refused, identify
from .passwords import verify
from .verify import revoked_identity

log = logging.getLogger("policyd.identity")


class Authenticator:
    def __init__(self, store, counters):
        self.store = store
        self.counters = counters        # service.Counters: keys auth.allow, auth.deny.<kind>, auth.error
        self._refusals = RateLimitedLog(log, interval_s=1.0)

    def authenticate(self, request: pb.AuthenticateRequest, peer: str = "") -> pb.AuthenticateResponse:
        return self.accept(request, peer)[0]

    def accept(self, request: pb.AuthenticateRequest,
               peer: str = "") -> tuple[pb.AuthenticateResponse, Mapping[str, tuple[str, ...]]]:
        """The answer, and the accepted client's certificate attributes as a check of it gets
        them (empty: a password client, or refused)."""
        policy = self.store.current  # one policy for the whole answer
        try:
            if not request.certificate_der and request.has_password:
                return self._password_client(request, policy, peer), {}
            ident = identify(request.certificate_der, policy.identity)
            _check_not_revoked(policy, ident.username)
            _check_client_id(policy, ident.username, request.client_id)
        except Refused as refused:
            self.counters.add(f"auth.deny.{refused.kind}")
            self._refusals.warning(refused.kind, "CONNECT refused: client %s from %s: %s",
                                   _escaped(request.client_id), _peer(request, peer), refused)
            return pb.AuthenticateResponse(result=pb.RESULT_DENY, reason=str(refused),
                                           generation=policy.generation), {}
        except Exception:  # never let a bug become an allow
            self.counters.add("auth.error")
            self._refusals.exception("error", "CONNECT refused: Authenticate failed")
            return pb.AuthenticateResponse(result=pb.RESULT_DENY, reason="internal error",
                                           generation=getattr(policy, "generation", 0)), {}
        self.counters.add("auth.allow")
        log.debug("CONNECT accepted: client %s from %s is %r (serial %x)", _escaped(request.client_id),
                 _peer(request, peer), ident.username, ident.serial)
        return pb.AuthenticateResponse(
            result=pb.RESULT_ALLOW, username=ident.username.encode("utf-8"), generation=policy.generation,
            attributes=[pb.Attribute(name=k, value=v) for k, vs in sorted(ident.attributes.items()) for v in vs],
        ), ident.attributes

    def _password_client(self, request: pb.AuthenticateRequest, policy, peer: str) -> pb.AuthenticateResponse:
        """No certificate, a username and a password: checked against `passwords:`."""
        try:
            username = request.username.decode("utf-8") if request.has_username else ""
        except UnicodeDecodeError:
            username = ""  # no rules name can match; still hashed, like any unknown user
        if not verify(policy.identity.passwords, username, request.password):
            raise Refused("password", "unknown username or wrong password")  # the same for both
        _check_not_revoked(policy, username)
        _check_client_id(policy, username, request.client_id)
        self.counters.add("auth.allow")
        log.debug("CONNECT accepted: client %s from %s is %r (password)", _escaped(request.client_id),
                  _peer(request, peer), username)
        return pb.AuthenticateResponse(result=pb.RESULT_ALLOW, username=username.encode("utf-8"),
                                       generation=policy.generation)



def password_kicks(old, new) -> frozenset[str]:
    """Kicks for a reload: password clients whose `passwords:` entry was removed or
    changed. (Revoked certificates are matched by each broker against the sessions
    it holds: the Watch stream sends it the revocation list.)"""
    before, after = old.identity.passwords, new.identity.passwords
    return frozenset(name for name, stored in before.items() if after.get(name) != stored)


def _check_not_revoked(policy, username: str) -> None:
    refusal = revoked_identity(policy, username)
    if refusal is not None:
        raise refusal


def _check_client_id(policy, username: str, client_id: bytes) -> None:
    spec = policy.identity.spec
    if not spec.client_ids:
        return
    try:
        cid = client_id.decode("utf-8")
    except UnicodeDecodeError:
        cid = None
    why = spec.client_id_problem(username, cid)
    if why:
        raise Refused("client-id", why)


def _peer(request: pb.AuthenticateRequest, peer: str) -> str:
    return _escaped(request.peer_address.encode("utf-8", "replace")) if request.peer_address else peer


def _escaped(value: bytes, limit: int = 128) -> str:
    text = value[:limit].decode("utf-8", "backslashreplace")
    return "'" + "".join(c if c.isprintable() and c != "'" else f"\\x{ord(c):02x}" for c in text) + "'"
