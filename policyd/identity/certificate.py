"""Who a client certificate says the client is — or why it may not connect.

A pure function of the DER bytes, the `identity:` / `revoked:` sections and
the time. Every refusal carries a reason meant for the daemon's log; the
identity it returns is always safe (engine.model.identity_problem) because
the broker uses it as username.

Called at CONNECT (Authenticate) and again for every uncached ACL check that
carries the certificate, so nothing about a session lives in the daemon: any
daemon answers any check the same way, also after a restart. Parsing is
cached by the DER bytes (bounded); the policy-dependent part is cheap.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import re
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtensionOID, NameOID

from ..engine.model import identity_problem
from .spec import IdentityPolicy, template_separators

# Parsed certificates kept (by DER bytes): a fleet's live certificates, bounded.
PARSED_CERTIFICATES_CACHED = 8192
_SUBJECT_OIDS = {
    "CN": NameOID.COMMON_NAME, "O": NameOID.ORGANIZATION_NAME, "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "C": NameOID.COUNTRY_NAME, "ST": NameOID.STATE_OR_PROVINCE_NAME, "L": NameOID.LOCALITY_NAME,
    "DC": NameOID.DOMAIN_COMPONENT,
}
_SUBJECT_NAMES = {oid: name for name, oid in _SUBJECT_OIDS.items()}
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


@dataclass(frozen=True)
class CertFacts:
    """What a certificate says, whatever the policy: parsed once per DER."""

    cert: x509.Certificate
    serial: int
    fingerprint: str                               # SHA-256 of the DER, lower-case hex
    values: dict[str, tuple[str, ...]]             # subject fields, SANs, serial as text


def identify(der: bytes, policy: IdentityPolicy, now: dt.datetime | None = None,
             source: str | None = None) -> CertIdentity:
    """Map a certificate to an identity; raises Refused with the reason.

    `source` overrides the policy's mapping: "cn" is what Mosquitto itself uses
    with `use_identity_as_username true` (broker mode), where revocation, the
    issuer pin and expiry still apply."""
    facts = read_certificate(der)
    why = policy.revoked.revokes(facts.serial, facts.fingerprint)
    if why:
        raise Refused("revoked", why)
    if policy.spec.issuers and not _issued_by_pinned(der, policy.spec.issuers):
        raise Refused("issuer", f"issued by {facts.cert.issuer.rfc4514_string()!r}, which is not a pinned issuer")
    if policy.spec.check_expiry:
        _check_validity(facts.cert, now or dt.datetime.now(dt.timezone.utc))
    source = source or policy.spec.source
    template = policy.spec.template if source == "template" else ""
    username = _safe_identity(_pick(source, template, facts.values), source)
    attributes = {k: v for k, v in facts.values.items() if k != "serial" and v}
    return CertIdentity(username, facts.serial, facts.fingerprint, attributes)


@functools.lru_cache(maxsize=PARSED_CERTIFICATES_CACHED)
def read_certificate(der: bytes) -> CertFacts:
    """Parse a certificate; raises Refused when it cannot identify anyone."""
    if not der:
        raise Refused("no-certificate", "no client certificate (the listener needs require_certificate true)")
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise Refused("unreadable", f"unreadable certificate: {exc}") from None
    return CertFacts(cert, cert.serial_number, hashlib.sha256(der).hexdigest(), _values(cert))


@functools.lru_cache(maxsize=PARSED_CERTIFICATES_CACHED)
def _issued_by_pinned(der: bytes, issuers: tuple[x509.Certificate, ...]) -> bool:
    cert = read_certificate(der).cert
    for ca in issuers:
        try:
            cert.verify_directly_issued_by(ca)
            return True
        except (InvalidSignature, ValueError, TypeError):  # not this one: try the next
            continue
    return False


def _check_validity(cert: x509.Certificate, now: dt.datetime) -> None:
    if now < cert.not_valid_before_utc:
        raise Refused("not-yet-valid", f"certificate not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S}Z")
    if now > cert.not_valid_after_utc:
        raise Refused("expired", f"certificate expired {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S}Z")


def _values(cert: x509.Certificate) -> dict[str, tuple[str, ...]]:
    """Subject attributes, SANs and the serial as text; undecodable text refuses."""
    out: dict[str, tuple[str, ...]] = {}
    try:
        # One pass over the subject, each value in the order written (as get_attributes_for_oid
        # gives them): one call per field name walked the whole subject seven times.
        subject: dict[str, list[str]] = {}
        for attribute in cert.subject:
            name = _SUBJECT_NAMES.get(attribute.oid)
            if name is not None:
                subject.setdefault(name, []).append(_text(attribute.value))
        for name in _SUBJECT_OIDS:
            out[name] = tuple(subject.get(name, ()))
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
        separators = template_separators(template)
        return _FIELD.sub(lambda m: _unambiguous(m.group(1), values, separators), template)
    key = {"cn": "CN", "serial": "serial"}.get(source, source.replace("-", "_"))
    return _single(key, values)


def _unambiguous(key: str, values: dict[str, tuple[str, ...]], separators: frozenset[str]) -> str:
    """A template field's value; refused when it holds a character the template uses
    between fields, since then two certificates could give one identity
    (O=acme,CN=labs-x and O=acme-labs,CN=x under {O}-{CN})."""
    value = _single(key, values)
    clash = sorted(separators.intersection(value))
    if clash:
        raise Refused("ambiguous", f"certificate {key} contains {', '.join(repr(c) for c in clash)}, which the "
                      "identity template uses as a separator: the identity would be ambiguous")
    return value


def _single(key: str, values: dict[str, tuple[str, ...]]) -> str:
    found = values.get(key, ())
    label = key.replace("_", " ").upper() if key.startswith("san") else key
    if not found:
        raise Refused("missing", f"certificate has no {label}")
    if len(found) > 1:
        raise Refused("ambiguous", f"certificate has {len(found)} {label} values; which one is the identity is ambiguous")
    return found[0]


def _safe_identity(name: str, source: str) -> str:
    why = identity_problem(name)
    if why:
        raise Refused("unsafe-identity", f"{why} (from {source}; it would widen topic access)")
    return name
