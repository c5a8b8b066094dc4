"""Who a client certificate says the client is — or why it may not connect.

A pure function of the DER bytes, the `identity:` / `revoked:` sections and
the time. Every refusal carries a reason meant for the daemon's log; the
identity it returns is always safe as one topic level (no `+ # /`, NUL or
control characters, valid UTF-8) because the broker will use it as username.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtensionOID, NameOID

from .spec import IdentityPolicy

MAX_IDENTITY_BYTES = 256
_UNSAFE = frozenset("+#/\x00")
_SUBJECT_OIDS = {
    "CN": NameOID.COMMON_NAME, "O": NameOID.ORGANIZATION_NAME, "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "C": NameOID.COUNTRY_NAME, "ST": NameOID.STATE_OR_PROVINCE_NAME, "L": NameOID.LOCALITY_NAME,
    "DC": NameOID.DOMAIN_COMPONENT,
}
_SAN_KINDS = {"san_dns": x509.DNSName, "san_uri": x509.UniformResourceIdentifier,
              "san_email": x509.RFC822Name}
_FIELD = re.compile(r"\{([A-Za-z_]+)\}")


class Refused(Exception):
    """The certificate cannot identify a client; str() is the reason, `kind` a
    short fixed word for counting and log rate limiting (never client text)."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind


@dataclass(frozen=True)
class CertIdentity:
    username: str
    serial: int
    fingerprint: str                               # SHA-256 of the DER, lower-case hex
    attributes: dict[str, tuple[str, ...]] = field(default_factory=dict)


def identify(der: bytes, policy: IdentityPolicy, now: dt.datetime | None = None) -> CertIdentity:
    """Map a certificate to an identity; raises Refused with the reason."""
    if not der:
        raise Refused("no-certificate", "no client certificate (the listener needs require_certificate true)")
    fingerprint = hashlib.sha256(der).hexdigest()
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise Refused("unreadable", f"unreadable certificate: {exc}") from None
    serial = cert.serial_number
    why = policy.revoked.revokes(serial, fingerprint)
    if why:
        raise Refused("revoked", why)
    _check_issuer(cert, policy)
    if policy.spec.check_expiry:
        _check_validity(cert, now or dt.datetime.now(dt.timezone.utc))
    values = _values(cert)
    username = _safe_identity(_pick(policy.spec.source, policy.spec.template, values), policy.spec.source)
    attributes = {k: v for k, v in values.items() if k != "serial" and v}
    return CertIdentity(username, serial, fingerprint, attributes)


def _check_issuer(cert: x509.Certificate, policy: IdentityPolicy) -> None:
    issuers = policy.spec.issuers
    if not issuers:
        return
    for ca in issuers:
        try:
            cert.verify_directly_issued_by(ca)
            return
        except (InvalidSignature, ValueError, TypeError):  # not this one: try the next
            continue
    raise Refused("issuer", f"issued by {cert.issuer.rfc4514_string()!r}, which is not a pinned issuer")


def _check_validity(cert: x509.Certificate, now: dt.datetime) -> None:
    if now < cert.not_valid_before_utc:
        raise Refused("not-yet-valid", f"certificate not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S}Z")
    if now > cert.not_valid_after_utc:
        raise Refused("expired", f"certificate expired {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S}Z")


def _values(cert: x509.Certificate) -> dict[str, tuple[str, ...]]:
    """Subject attributes, SANs and the serial as text; undecodable text refuses."""
    out: dict[str, tuple[str, ...]] = {}
    try:
        for name, oid in _SUBJECT_OIDS.items():
            out[name] = tuple(_text(a.value) for a in cert.subject.get_attributes_for_oid(oid))
        sans = _san(cert)
        for name, kind in _SAN_KINDS.items():
            out[name] = tuple(_text(v) for v in sans.get_values_for_type(kind)) if sans else ()
    except (ValueError, UnicodeError) as exc:
        raise Refused("bad-text", f"certificate subject or SAN is not valid text: {exc}") from None
    out["serial"] = (f"{cert.serial_number:x}",)
    return out


def _san(cert: x509.Certificate):
    try:
        return cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    except x509.ExtensionNotFound:
        return None


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")  # strict: invalid UTF-8 refuses
    return str(value)


def _pick(source: str, template: str, values: dict[str, tuple[str, ...]]) -> str:
    if source == "template":
        return _FIELD.sub(lambda m: _single(m.group(1), values), template)
    key = {"cn": "CN", "serial": "serial"}.get(source, source.replace("-", "_"))
    return _single(key, values)


def _single(key: str, values: dict[str, tuple[str, ...]]) -> str:
    found = values.get(key, ())
    label = key.replace("_", " ").upper() if key.startswith("san") else key
    if not found:
        raise Refused("missing", f"certificate has no {label}")
    if len(found) > 1:
        raise Refused("ambiguous", f"certificate has {len(found)} {label} values; which one is the identity is ambiguous")
    return found[0]


def _safe_identity(name: str, source: str) -> str:
    if not name:
        raise Refused("unsafe-identity", f"empty identity from {source}")
    bad = sorted(set(name) & _UNSAFE)
    if bad:
        raise Refused("unsafe-identity", f"identity {_shown(name)} contains {', '.join(repr(c) for c in bad)}, "
                      "never allowed in an identity (it would widen topic access)")
    if any(not c.isprintable() for c in name):
        raise Refused("unsafe-identity", f"identity {_shown(name)} contains control characters")
    if len(name.encode("utf-8")) > MAX_IDENTITY_BYTES:
        raise Refused("unsafe-identity", f"identity longer than {MAX_IDENTITY_BYTES} bytes")
    return name


def _shown(name: str) -> str:
    return repr(name[:64].encode("unicode_escape").decode("ascii"))
