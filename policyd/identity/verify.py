"""What an ACL check's provenance establishes about the client (stateless).

Every uncached check carries what the broker verified about the client: its
certificate (DER), or that policyd verified its password at CONNECT, or
neither. From that alone, and the policy in force, the daemon works out the
certificate attributes the rules may match, or why the connection must end.
Nothing is remembered between checks, so any daemon gives the same answer,
also right after a restart (docs/identity.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

from ..v1 import policy_pb2 as pb
from .certificate import Refused, identify


@dataclass(frozen=True)
class CheckedClient:
    """attributes: for the engine's Request. refusal: why this connection must not continue, or None."""

    attributes: Mapping[str, tuple[str, ...]]
    refusal: Optional[Refused] = None


NO_CERTIFICATE = CheckedClient({})


def revoked_identity(policy, username: str) -> Optional[Refused]:
    """Why an identity revoked as a device may not be connected at all, or None."""
    if username in policy.revoked_identities:
        return Refused("revoked-device", "the identity is revoked (policyd device revoke)")
    return None


def checked_client(request: pb.CheckAclRequest, policy) -> CheckedClient:
    """The client behind a CheckAcl request, as far as the request proves it."""
    provenance = request.provenance
    # A live connection of a revoked device (the broker let it CONNECT: no CONNECT hook with
    # use_identity_as_username) ends at its first check. Not a retained message's publisher.
    if policy.revoked_identities and request.has_username and provenance != pb.PROVENANCE_UNKNOWN:
        refusal = revoked_identity(policy, request.username.decode("utf-8", "replace"))
        if refusal is not None:
            return CheckedClient({}, refusal)
    if provenance == pb.PROVENANCE_CERTIFICATE:
        return _certificate_client(request, policy)
    if provenance == pb.PROVENANCE_PASSWORD:
        name = request.username.decode("utf-8", "replace") if request.has_username else ""
        if name not in policy.identity.passwords:
            return CheckedClient({}, Refused("password", "password entry no longer in the policy"))
        return NO_CERTIFICATE
    # PROVENANCE_UNKNOWN (the publisher of a retained message, not connected) is decided
    # by its identity's rules alone, as a client without a certificate: applying every
    # `certificates` deny rule instead withheld every offline publisher's retained
    # messages in any fleet with a quarantine rule.
    return NO_CERTIFICATE


def _certificate_client(request: pb.CheckAclRequest, policy) -> CheckedClient:
    broker_mode = request.identity_mode == pb.IDENTITY_MODE_BROKER
    try:
        ident = identify(request.certificate_der, policy.identity, source="cn" if broker_mode else None)
    except Refused as refused:
        return CheckedClient({}, refused)
    if not request.has_username or request.username != ident.username.encode("utf-8"):
        who = "Mosquitto's use_identity_as_username" if broker_mode else "policyd's identity mapping"
        return CheckedClient({}, Refused("mismatch", f"username does not match the certificate under {who}"))
    return CheckedClient(ident.attributes)
