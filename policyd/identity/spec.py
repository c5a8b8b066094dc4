"""The `identity:` and `revoked:` sections of a rules file (docs/identity.md).

    identity:
      source: cn              # cn | san-dns | san-uri | san-email | serial | template
      template: "{O}-{CN}"    # only with source: template
      issuers: [ca.pem]       # optional pin: the certificate must be signed directly by one of these
      check_expiry: true      # refuse certificates outside notBefore..notAfter (daemon's clock)
      client_id: ["%u", "%u:*"]  # optional: the client ids an identity may use (`:` then anything)
    revoked:
      serials: ["0x1f3a", "1f:3a"]   # hex (0x…, or colon-separated) or decimal text
      sha256: ["ab:cd:…"]            # SHA-256 fingerprints of the DER certificate

Read by the rules loader through `read_identity` / `read_revoked`, which
report problems through the loader's reader (file:line:column and key).
Issuer files are read here, once per load, relative to the rules file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Optional

from cryptography import x509

SOURCES = ("cn", "san-dns", "san-uri", "san-email", "serial", "template")
IDENTITY_KEYS = ("source", "template", "issuers", "check_expiry", "client_id")
REVOKED_KEYS = ("serials", "sha256")
# More than this belongs in a new CA, not a list every broker matches and every reload resends.
MAX_REVOCATIONS = 100_000
# Template fields: subject attributes, plus the serial and the first SAN of each kind.
TEMPLATE_FIELDS = ("CN", "O", "OU", "C", "ST", "L", "DC", "serial", "san_dns", "san_uri", "san_email")
_TEMPLATE_FIELD = re.compile(r"\{([A-Za-z_]+)\}")
_ADJACENT_FIELDS = re.compile(r"\}\{")
_PREFIX_FORM = re.compile(r"%u[^%*+#/\x00\s]\*")
_HEX = re.compile(r"^[0-9a-f]+$")


@dataclass(frozen=True)
class IdentitySpec:
    source: str = "cn"
    template: str = ""
    issuers: tuple[x509.Certificate, ...] = ()
    issuer_files: tuple[str, ...] = ()
    check_expiry: bool = True
    # Client id forms bound to an identity ("%u", "%u:*"); empty: any client id.
    client_ids: tuple[str, ...] = ()

    @property
    def client_id_separators(self) -> frozenset[str]:
        """The characters that end the identity in a prefix form (`:` of `%u:*`)."""
        return frozenset(form[2] for form in self.client_ids if form != "%u")

    def client_id_problem(self, username: Optional[str], client_id: Optional[str]) -> Optional[str]:
        """Why this client may not use this client id, or None (always None without a binding).

        Forms are `%u` and `%u<c>*`. An identity holding a separator <c> is refused: otherwise
        `Pump` could use `Pump:1`, the id of identity `Pump:1`. With a binding, a client without
        a usable identity (anonymous) may use no client id: it could squat a device's."""
        if not self.client_ids:
            return None
        if username is None or client_id is None:
            return "a client without an identity cannot hold a bound client id (identity.client_id)"
        clash = sorted(self.client_id_separators.intersection(username))
        if clash:
            return (f"identity {username!r} contains {', '.join(repr(c) for c in clash)}, the separator of an "
                    "identity.client_id prefix form: its client ids would be ambiguous")
        for form in self.client_ids:
            if form == "%u" and client_id == username:
                return None
            if form != "%u" and client_id.startswith(username + form[2]):
                return None
        return f"client id is not one identity {username!r} may use (identity.client_id)"


@dataclass(frozen=True)
class Revocations:
    serials: frozenset[int] = frozenset()
    sha256: frozenset[str] = frozenset()  # lower-case hex, no separators

    def __bool__(self) -> bool:
        return bool(self.serials or self.sha256)

    def revokes(self, serial: int, fingerprint: str) -> str | None:
        """Why a certificate with this serial and fingerprint is revoked, or None."""
        if serial in self.serials:
            return f"serial {serial:x} is revoked"
        if fingerprint in self.sha256:
            return f"certificate sha256 {fingerprint[:16]}… is revoked"
        return None


@dataclass(frozen=True)
class IdentityPolicy:
    """What the compiled policy carries for Authenticate."""

    spec: IdentitySpec = field(default_factory=IdentitySpec)
    revoked: Revocations = field(default_factory=Revocations)
    passwords: dict = field(default_factory=dict)  # username -> passwords.PasswordHash


def parse_serial(text: str) -> int | None:
    """`0x1f3a`, `1F:3A` (hex) or `8000` (decimal) → int; None if neither."""
    t = text.strip().lower()
    if t.startswith("0x"):
        t = t[2:]
    elif ":" not in t and t.isdigit():
        return int(t)
    t = t.replace(":", "")
    return int(t, 16) if t and _HEX.match(t) else None


def parse_fingerprint(text: str) -> str | None:
    t = text.strip().lower().replace(":", "")
    return t if len(t) == 64 and _HEX.match(t) else None


def is_empty(node) -> bool:
    """A section written with nothing under it (YAML null)."""
    return isinstance(getattr(node, "value", None), str) and getattr(node, "tag", "").endswith(":null")


def read_identity(reader, node, key: str) -> IdentitySpec:
    values: dict[str, object] = {}
    if is_empty(node):
        return IdentitySpec()
    for name, knode, vnode in reader.mapping(node, key):
        vkey = f"{key}.{name}"
        if name == "source":
            source = reader.text(vnode, vkey)
            if source is not None and source not in SOURCES:
                reader.error(vnode, vkey, f"unknown source {source!r} (expected {', '.join(SOURCES)})")
            elif source is not None:
                values["source"] = source
        elif name == "template":
            values["template"] = _read_template(reader, vnode, vkey)
        elif name == "issuers":
            files = [f for i, item in reader.sequence(vnode, vkey)
                     if (f := reader.text(item, f"{vkey}[{i}]")) is not None]
            values["issuer_files"] = tuple(files)
            values["issuers"] = _load_issuers(reader, vnode, vkey, files)
        elif name == "check_expiry":
            values["check_expiry"] = _read_bool(reader, vnode, vkey)
        elif name == "client_id":
            values["client_ids"] = _read_client_ids(reader, vnode, vkey)
        else:
            reader.error(knode, vkey, f"unknown key {name!r} (expected {', '.join(IDENTITY_KEYS)})")
    spec = IdentitySpec(**values)  # type: ignore[arg-type]
    if (spec.source == "template") != bool(spec.template):
        reader.error(node, f"{key}.template", "`template` is required with `source: template` and only then")
    return spec


def read_revoked(reader, node, key: str) -> Revocations:
    serials: set[int] = set()
    prints: set[str] = set()
    if is_empty(node):
        return Revocations()
    for name, knode, vnode in reader.mapping(node, key):
        vkey = f"{key}.{name}"
        if name not in REVOKED_KEYS:
            reader.error(knode, vkey, f"unknown key {name!r} (expected {', '.join(REVOKED_KEYS)})")
            continue
        parse, out = (parse_serial, serials) if name == "serials" else (parse_fingerprint, prints)
        for i, item in reader.sequence(vnode, vkey):
            text = reader.text(item, f"{vkey}[{i}]")
            value = parse(text) if text is not None else None
            if value is None and text is not None:
                what = "a serial (0x-prefixed or colon-separated hex, or decimal)" if name == "serials" \
                    else "a SHA-256 fingerprint (64 hex digits, colons allowed)"
                reader.error(item, f"{vkey}[{i}]", f"{text!r} is not {what}")
            elif value is not None:
                out.add(value)  # type: ignore[arg-type]
    if len(serials) + len(prints) > MAX_REVOCATIONS:
        reader.error(node, key, f"{len(serials) + len(prints)} revoked certificates: at most {MAX_REVOCATIONS:,} "
                     "(beyond that, issue the fleet's certificates from a new CA and stop trusting the old one)")
    return Revocations(frozenset(serials), frozenset(prints))


def template_separators(template: str) -> frozenset[str]:
    """The characters a template writes between and around its fields. A field value
    holding one of them is refused at CONNECT, which keeps the mapping one-to-one."""
    return frozenset(_TEMPLATE_FIELD.sub("", template))


def _read_template(reader, node, key: str) -> str:
    template = reader.text(node, key) or ""
    for name in _TEMPLATE_FIELD.findall(template):
        if name not in TEMPLATE_FIELDS:
            reader.error(node, key, f"unknown template field {{{name}}} (expected {', '.join(TEMPLATE_FIELDS)})")
    if template and not _TEMPLATE_FIELD.search(template):
        reader.error(node, key, "a template without any {field} would give every client the same identity")
    if _ADJACENT_FIELDS.search(template):
        reader.error(node, key, "two {field}s must be separated by text (e.g. {O}.{CN}): without a separator "
                     "two certificates could map to the same identity")
    return template


def _read_client_ids(reader, node, key: str) -> tuple[str, ...]:
    """`client_id: "%u"` or a list of forms: `%u` (the identity itself) or `%u<c>*` (the
    identity, one separator character, anything). Nothing else: any other shape lets two
    identities claim one client id."""
    items = [(key, node)] if getattr(node, "id", "") == "scalar" else \
        [(f"{key}[{i}]", item) for i, item in reader.sequence(node, key)]
    forms = []
    for ikey, item in items:
        form = reader.text(item, ikey)
        if form is None:
            continue
        if form == "%u" or _PREFIX_FORM.fullmatch(form):
            forms.append(form)
        else:
            reader.error(item, ikey, f"client id form {form!r}: expected %u, or %u followed by one separator "
                         "character and * (e.g. %u:*); other forms let two identities claim one client id")
    return tuple(forms)


def _read_bool(reader, node, key: str) -> bool:
    text = reader.text(node, key)
    if text in ("true", "false"):
        return text == "true"
    if text is not None:
        reader.error(node, key, "expected true or false")
    return True


def _load_issuers(reader, node, key: str, files: list[str]) -> tuple[x509.Certificate, ...]:
    base = os.path.dirname(os.path.abspath(reader.file)) if reader.file and not reader.file.startswith("<") else "."
    out: list[x509.Certificate] = []
    for name in files:
        path = os.path.join(base, name)
        try:
            with open(path, "rb") as fh:
                certs = x509.load_pem_x509_certificates(fh.read())
        except (OSError, ValueError) as exc:
            reader.error(node, key, f"cannot read issuer certificates from {path}: {exc}")
            continue
        out.extend(certs)
    return tuple(out)
