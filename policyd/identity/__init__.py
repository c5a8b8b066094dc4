"""Certificate identity at CONNECT: mapping, revocation, sessions (docs/identity.md)."""

from .certificate import CertIdentity, Refused, identify
from .spec import IdentityPolicy, IdentitySpec, Revocations, read_identity, read_revoked

__all__ = ["CertIdentity", "IdentityPolicy", "IdentitySpec", "Refused", "Revocations", "identify",
           "read_identity", "read_revoked"]
