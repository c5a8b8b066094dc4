"""The `identity:` and `revoked:` sections of a rules file (docs/identity.md).

    identity:
      source: cn              # cn | san-dns | san-uri | san-email | serial | template
      template: "{O}-{CN}"    # only with source: template
      issuers: [ca.pem]       # optional pin: the certificate must be signed directly by one of these
      check_expiry: true      # refuse certificates outside notBefore..notAfter (daemon's clock)
      client_id: ["%u", "%u-*"]  # optional: the client ids an identity may use (a `*` ends a prefix)
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

from cryptography import x509

SOURCES = ("cn", "san-dns", "san-uri", "san-email", "serial", "template")
IDENTITY_KEYS = ("source", "template", "issuers", "check_expiry", "client_id")
REVOKED_KEYS = ("serials", "sha256")
# Template fields: subject attributes, plus the serial and the first SAN of each kind.
TEMPLATE_FIELDS = ("CN", "O", "OU", "C", "ST", "L", "DC", "serial", "san_dns", "san_uri", "san_email")
_TEMPLATE_FIELD = re.compile(r"\{([A-Za-z_]+)\}")
_ADJACENT_FIELDS = re.compile(r"\}\{")
_HEX = re.compile(r"^[0-9a-f]+$")


@dataclass(frozen=True)
class IdentitySpec:
    source: str = "cn"
    template: str = ""
    issuers: tuple[x509.Certificate, ...] = ()
    issuer_files: tuple[str, ...] = ()
    check_expiry: bool = True
    # Client id forms bound to an identity ("%u", "%u-*"); empty: any client id.
    client_ids: tuple[str, ...] = ()

    def client_id_bound(self, username: str, client_id: str) -> bool:
        """Whether `client_id` is one this identity may use (always, without a binding).
        The username is a safe identity (no `*`, `%` is literal in it)."""
        if not self.client_ids:
            return True
        for form in self.client_ids:
            if form.endswith("*"):
                if client_id.startswith(form[:-1].replace("%u", username)):
                    return True
            elif client_id == form.replace("%u", username):
                return True
        return False


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
    """`client_id: "%u"` or a list of such forms; each names %u once, `*` only at the end."""
    items = [(key, node)] if getattr(node, "id", "") == "scalar" else \
        [(f"{key}[{i}]", item) for i, item in reader.sequence(node, key)]
    forms = []
    for ikey, item in items:
        form = reader.text(item, ikey)
        if form is None:
            continue
        if form.count("%u") != 1:
            reader.error(item, ikey, f"client id form {form!r} must contain %u exactly once")
        elif "*" in form[:-1]:
            reader.error(item, ikey, f"client id form {form!r}: `*` may only end the form (a prefix)")
        elif any(c in form for c in "+#/\x00"):
            reader.error(item, ikey, f"client id form {form!r} contains a character no client id may hold")
        else:
            forms.append(form)
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
