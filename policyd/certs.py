"""Issue the CA, broker and per-device client certificates for a Mosquitto
TLS listener that identifies clients by certificate (``require_certificate
true`` + ``use_identity_as_username true``: the client certificate's Common
Name becomes the MQTT username, i.e. the device id used by ACLs).

This replaces the usual series of ``openssl genrsa`` / ``req`` / ``x509``
commands with one call (or one ``policyd certs ...`` command) each, done with
the ``cryptography`` library -- no ``openssl`` binary is executed here.

Files written (PEM)::

    ca.pem / ca.key              issue_ca()      -- self-signed root, pathlen 0
    server.pem / server.key      issue_server()  -- EKU serverAuth, SANs
    <name>.pem / <name>.key      issue_client()  -- EKU clientAuth, CN = device id

Private keys are unencrypted PKCS#8, mode 0600, written atomically (created
0600 with O_EXCL in the target directory, fsync'ed, then linked/renamed into
place) so they are never readable by others, not even for a moment.
Certificates are mode 0644.  Existing files are never replaced unless
``force=True``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import ipaddress
import os
import pwd
import re
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .engine.model import identity_problem
from .fileio import TempFileError, write_atomically

__all__ = [
    "CertError",
    "IssuedPair",
    "KEY_TYPES",
    "issue_ca",
    "issue_server",
    "issue_client",
    "load_certificate",
    "describe",
    "add_subparser",
]

#: Supported ``key_type`` values: ECDSA P-256 (default) or RSA 2048 (for old
#: device TLS stacks that cannot do ECDSA).
KEY_TYPES = ("ec", "rsa")
RSA_KEY_BITS = 2048

#: X.509 upper bound for commonName (RFC 5280 ub-common-name), in characters.
CN_MAX_LEN = 64

#: Characters refused in a client CN unless ``allow_unsafe_cn=True``.  With
#: ``use_identity_as_username`` the CN is the MQTT username and is substituted
#: for ``%u`` in ACL patterns: ``+`` and ``#`` would turn into topic wildcards,
#: ``/`` would add topic levels, NUL truncates the name in C code.

CLOCK_SKEW = _dt.timedelta(minutes=5)
SERIAL_BITS = 159

DEFAULT_CA_CN = "mosquitto-policyd CA"
DEFAULT_CA_DAYS = 3650
DEFAULT_LEAF_DAYS = 825
DEFAULT_SERVER_CN = "localhost"
DEFAULT_SERVER_SANS = ("localhost", "127.0.0.1", "::1")
DEFAULT_DIR = "./certs"

CA_CERT_NAME = "ca.pem"
CA_KEY_NAME = "ca.key"

_CERT_MODE = 0o644
_KEY_MODE = 0o600
_HOSTNAME_RE = re.compile(
    r"^(\*\.)?([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)"
    r"(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?$"
)


class CertError(Exception):
    """A certificate could not be issued or loaded (message is user-facing)."""


@dataclass(frozen=True)
class IssuedPair:
    """What was written by one ``issue_*`` call."""

    cert_path: Path
    key_path: Path
    serial: int
    sha256_fingerprint: str  # lowercase hex, no colons
    not_after: _dt.datetime  # timezone-aware, UTC


@dataclass(frozen=True)
class _Owner:
    name: str
    uid: int
    gid: int


@dataclass(frozen=True)
class _CA:
    cert: x509.Certificate
    key: Any


# --------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------


def _check_days(days: int) -> int:
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise CertError(f"days must be a positive integer, got {days!r}")
    return days


def _check_key_type(key_type: str) -> str:
    if key_type not in KEY_TYPES:
        raise CertError(
            f"unknown key type {key_type!r} (expected one of: {', '.join(KEY_TYPES)})"
        )
    return key_type


def _check_cn_length(cn: str, what: str) -> None:
    if not isinstance(cn, str) or cn == "":
        raise CertError(f"{what} common name must not be empty")
    if len(cn) > CN_MAX_LEN:
        raise CertError(
            f"{what} common name is {len(cn)} characters; X.509 allows at most "
            f"{CN_MAX_LEN}: {cn[:20]!r}..."
        )


def _check_client_cn(cn: str, *, allow_unsafe_cn: bool) -> None:
    _check_cn_length(cn, "client")
    if allow_unsafe_cn:
        return
    why = identity_problem(cn)
    if why:
        raise CertError(
            f"client common name refused: {why}; as an MQTT username (use_identity_as_username) "
            "it would widen topic access in ACL patterns "
            "(--allow-unsafe-cn exists to test hostile identities, never for devices)"
        )


def _file_name_problem(name: str) -> str | None:
    if not isinstance(name, str) or name == "":
        return "it is empty"
    if "/" in name or "\x00" in name:
        return "it contains '/' or NUL"
    if name.startswith("."):
        return "it starts with '.'"
    if len(os.fsencode(name)) > 250:
        return "it is too long"
    return None


def _check_name(name: str) -> str:
    problem = _file_name_problem(name)
    if problem:
        raise CertError(f"file name {name!r} is not safe: {problem}")
    return name


def _resolve_owner(owner: str | None) -> _Owner | None:
    if owner is None:
        return None
    try:
        pw = pwd.getpwnam(owner)
    except KeyError:
        pw = None
        if owner.isdigit():
            try:
                pw = pwd.getpwuid(int(owner))
            except KeyError:
                pw = None
    if pw is None:
        raise CertError(f"unknown user {owner!r} (--owner)")
    return _Owner(pw.pw_name, pw.pw_uid, pw.pw_gid)


def _ip_or_none(value: str):
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def _san_entries(sans: Sequence[str], cn: str) -> list[x509.GeneralName]:
    if isinstance(sans, str):  # a bare string would be iterated per character
        sans = [sans]
    wanted: list[str] = [s.strip() for s in sans]
    # Clients ignore the CN when a SAN extension is present, so a server CN
    # that is a host name or an address is always added to the SANs too.
    if (_ip_or_none(cn) is not None or _HOSTNAME_RE.match(cn)) and cn not in wanted:
        wanted.insert(0, cn)
    out: list[x509.GeneralName] = []
    seen: set[Any] = set()
    for s in wanted:
        if not s:
            raise CertError("empty subject alternative name")
        ip = _ip_or_none(s)
        if ip is not None:
            key: Any = ip
            entry: x509.GeneralName = x509.IPAddress(ip)
        else:
            if not s.isascii() or not _HOSTNAME_RE.match(s):
                raise CertError(
                    f"subject alternative name {s!r} is neither an IP address nor "
                    "a valid DNS name (use the A-label/punycode form for IDNs)"
                )
            key = s.lower()
            entry = x509.DNSName(s)
        if key in seen:
            continue
        seen.add(key)
        out.append(entry)
    if not out:
        raise CertError("a server certificate needs at least one subject alternative name")
    return out


# --------------------------------------------------------------------------
# key / cert building
# --------------------------------------------------------------------------


def _generate_key(key_type: str):
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
    return ec.generate_private_key(ec.SECP256R1())


def _sign_hash(key) -> hashes.HashAlgorithm | None:
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        return None
    return hashes.SHA256()


def _random_serial() -> int:
    while True:
        serial = secrets.randbits(SERIAL_BITS)
        if serial:
            return serial


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ku(**bits: bool) -> x509.KeyUsage:
    fields = dict(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    fields.update(bits)
    return x509.KeyUsage(**fields)


def _key_pem(key) -> bytes:
    return key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )


def _spki(public_key) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _load_ca(ca_dir: Path) -> _CA:
    cert_path = ca_dir / CA_CERT_NAME
    key_path = ca_dir / CA_KEY_NAME
    missing = [str(p) for p in (cert_path, key_path) if not p.exists()]
    if missing:
        raise CertError(
            f"no CA found in {ca_dir} (missing {', '.join(missing)}); "
            "run `policyd certs ca` first"
        )
    cert = load_certificate(cert_path)
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except TypeError as exc:
        raise CertError(f"CA key {key_path} is encrypted; an unencrypted key is required") from exc
    except (ValueError, OSError) as exc:
        raise CertError(f"cannot load CA key {key_path}: {exc}") from exc
    if _spki(key.public_key()) != _spki(cert.public_key()):
        raise CertError(f"CA key {key_path} does not match CA certificate {cert_path}")
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise CertError(f"{cert_path} is not a CA certificate (basicConstraints CA:true missing)")
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        if not ku.key_cert_sign:
            raise CertError(f"{cert_path} is not allowed to sign certificates (no keyCertSign)")
    except x509.ExtensionNotFound:
        pass
    if cert.not_valid_after_utc <= _now():
        raise CertError(f"CA certificate {cert_path} expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    return _CA(cert, key)


def _aki_from_ca(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key())


def _build_leaf(
    *,
    ca: _CA,
    public_key,
    cn: str,
    days: int,
    eku: x509.ObjectIdentifier,
    ku: x509.KeyUsage,
    sans: list[x509.GeneralName] | None,
) -> x509.Certificate:
    now = _now()
    not_before = now - CLOCK_SKEW
    # A leaf must not outlive its issuer: clamp to the CA's notAfter.
    not_after = min(now + _dt.timedelta(days=days), ca.cert.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(_random_serial())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(ku, critical=True)
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(_aki_from_ca(ca.cert), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca.key, _sign_hash(ca.key))


# --------------------------------------------------------------------------
# file writing
# --------------------------------------------------------------------------


def _atomic_write(
    path: Path, data: bytes, *, mode: int, overwrite: bool, owner: _Owner | None
) -> None:
    """Write ``data`` to ``path`` atomically (policyd/fileio.py), chowned to
    ``owner`` on the open temporary file; ``overwrite=False`` refuses to replace."""

    def take_ownership(fd: int) -> None:
        if owner is not None:
            try:
                os.fchown(fd, owner.uid, owner.gid)
            except OSError as exc:
                raise CertError(
                    f"cannot change owner of {path} to {owner.name}: {exc.strerror or exc}"
                ) from exc

    try:
        write_atomically(path, data, mode=mode, overwrite=overwrite, before_write=take_ownership)
    except FileExistsError:
        raise CertError(f"{path} already exists (--force replaces it)") from None
    except TempFileError as exc:
        raise CertError(f"cannot create {exc.filename}: {exc.strerror or exc}") from exc
    except OSError as exc:
        raise CertError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _prepare_dir(out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
    except OSError as exc:
        raise CertError(f"cannot create directory {out_dir}: {exc.strerror or exc}") from exc
    if not out_dir.is_dir():
        raise CertError(f"{out_dir} is not a directory")
    return out_dir


def _check_not_existing(paths: Sequence[Path], force: bool) -> None:
    if force:
        return
    for p in paths:
        if os.path.lexists(p):
            raise CertError(f"{p} already exists (--force replaces it)")


def _write_pair(
    cert: x509.Certificate,
    key,
    cert_path: Path,
    key_path: Path,
    *,
    force: bool,
    owner: _Owner | None,
) -> IssuedPair:
    _atomic_write(key_path, _key_pem(key), mode=_KEY_MODE, overwrite=force, owner=owner)
    try:
        _atomic_write(
            cert_path,
            cert.public_bytes(serialization.Encoding.PEM),
            mode=_CERT_MODE,
            overwrite=force,
            owner=owner,
        )
    except CertError:
        if not force:  # don't leave an orphan key we just created
            try:
                os.unlink(key_path)
            except OSError:
                pass
        raise
    return IssuedPair(
        cert_path=cert_path,
        key_path=key_path,
        serial=cert.serial_number,
        sha256_fingerprint=cert.fingerprint(hashes.SHA256()).hex(),
        not_after=cert.not_valid_after_utc,
    )


# --------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------


def issue_ca(
    out_dir: Path,
    *,
    cn: str = DEFAULT_CA_CN,
    days: int = DEFAULT_CA_DAYS,
    force: bool = False,
    key_type: str = "ec",
) -> IssuedPair:
    """Create a self-signed root CA: ``<out_dir>/ca.pem`` and ``ca.key``.

    basicConstraints CA:true, pathlen 0 (critical); keyUsage keyCertSign +
    cRLSign (critical); subjectKeyIdentifier.
    """
    _check_cn_length(cn, "CA")
    _check_days(days)
    _check_key_type(key_type)
    out_dir = _prepare_dir(out_dir)
    cert_path, key_path = out_dir / CA_CERT_NAME, out_dir / CA_KEY_NAME
    _check_not_existing([cert_path, key_path], force)

    key = _generate_key(key_type)
    now = _now()
    name = _name(cn)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(_random_serial())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + _dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ku(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, _sign_hash(key))
    )
    return _write_pair(cert, key, cert_path, key_path, force=force, owner=None)


def issue_server(
    out_dir: Path,
    *,
    ca_dir: Path | None = None,
    cn: str = DEFAULT_SERVER_CN,
    sans: Sequence[str] = DEFAULT_SERVER_SANS,
    days: int = DEFAULT_LEAF_DAYS,
    name: str = "server",
    force: bool = False,
    owner: str | None = None,
    key_type: str = "ec",
) -> IssuedPair:
    """Issue the broker certificate ``<out_dir>/<name>.pem`` / ``.key``.

    SAN entries that parse as IP addresses become iPAddress names, the rest
    dNSName; the CN is added to the SANs when it is a host name or an address
    (TLS clients ignore the CN once a SAN is present).  EKU serverAuth.
    keyUsage digitalSignature, plus keyEncipherment for RSA keys (RFC 5480
    does not allow keyEncipherment on EC keys).  ``owner`` (e.g.
    ``"mosquitto"``) chowns key and certificate to that user and its primary
    group: the broker reads its key after dropping privileges.
    """
    _check_cn_length(cn, "server")
    _check_days(days)
    _check_key_type(key_type)
    _check_name(name)
    san_entries = _san_entries(sans, cn)
    return _issue_leaf(out_dir, ca_dir, name=name, owner=owner, force=force, key_type=key_type,
                       cn=cn, days=days, eku=ExtendedKeyUsageOID.SERVER_AUTH, sans=san_entries)


def issue_client(
    out_dir: Path,
    *,
    ca_dir: Path | None = None,
    cn: str,
    days: int = DEFAULT_LEAF_DAYS,
    name: str | None = None,
    force: bool = False,
    owner: str | None = None,
    key_type: str = "ec",
    allow_unsafe_cn: bool = False,
) -> IssuedPair:
    """Issue a device certificate whose CN is the device id (= MQTT username
    under ``use_identity_as_username``): ``<out_dir>/<name>.pem`` / ``.key``,
    ``name`` defaulting to the CN.  EKU clientAuth, keyUsage digitalSignature.

    The CN must be 1..64 characters.  ``+``, ``#``, ``/``, NUL and control
    characters are refused because the username is substituted for ``%u`` in
    ACL topic patterns.  ``allow_unsafe_cn=True`` lifts that check -- it exists
    only so tests can mint hostile identities; never use it for real devices.
    A CN that is not a safe file name (contains ``/`` or NUL, or starts with
    ``.``) additionally needs an explicit ``name``.
    """
    _check_client_cn(cn, allow_unsafe_cn=allow_unsafe_cn)
    _check_days(days)
    _check_key_type(key_type)
    if name is None:
        problem = _file_name_problem(cn)
        if problem:
            raise CertError(
                f"common name {cn!r} cannot be used as a file name ({problem}); "
                "pass an explicit name (--name)"
            )
        name = cn
    else:
        _check_name(name)
    return _issue_leaf(out_dir, ca_dir, name=name, owner=owner, force=force, key_type=key_type,
                       cn=cn, days=days, eku=ExtendedKeyUsageOID.CLIENT_AUTH, sans=None)


def _issue_leaf(out_dir, ca_dir, *, name: str, owner: str | None, force: bool, key_type: str,
                cn: str, days: int, eku: x509.ObjectIdentifier,
                sans: list[x509.GeneralName] | None) -> IssuedPair:
    """Checks that need the file system, then key, certificate and files."""
    who = _resolve_owner(owner)
    out_dir = _prepare_dir(out_dir)
    ca_dir = Path(ca_dir) if ca_dir is not None else out_dir
    _check_reserved(name, out_dir, ca_dir)
    cert_path, key_path = out_dir / f"{name}.pem", out_dir / f"{name}.key"
    _check_not_existing([cert_path, key_path], force)
    ca = _load_ca(ca_dir)

    key = _generate_key(key_type)
    # keyEncipherment only for RSA: RFC 5480 forbids it on EC keys.
    is_server = eku == ExtendedKeyUsageOID.SERVER_AUTH
    ku = _ku(digital_signature=True, key_encipherment=is_server and isinstance(key, rsa.RSAPrivateKey))
    cert = _build_leaf(ca=ca, public_key=key.public_key(), cn=cn, days=days, eku=eku, ku=ku, sans=sans)
    return _write_pair(cert, key, cert_path, key_path, force=force, owner=who)


def sign_csr(
    out_dir: Path,
    csr_data: bytes,
    *,
    ca_dir: Path | None = None,
    days: int = DEFAULT_LEAF_DAYS,
    force: bool = False,
    owner: str | None = None,
    allow_unsafe_cn: bool = False,
) -> Path:
    """Sign a device's certificate request (PEM or DER): the key stays on the device.
    The CSR's signature must verify, its subject must hold exactly one CN (checked like
    any client CN) and its key must be EC P-256/P-384 or RSA 2048+. Nothing else it asks
    for is copied: the certificate gets the same extensions as `certs client` issues.
    Returns the path of `<out_dir>/<cn>.pem`."""
    try:
        csr = (x509.load_pem_x509_csr(csr_data) if b"-----BEGIN" in csr_data
               else x509.load_der_x509_csr(csr_data))
    except ValueError as exc:
        raise CertError(f"not a certificate request (PEM or DER): {exc}") from None
    if not csr.is_signature_valid:
        raise CertError("the request's signature does not verify (it was not made with its own key)")
    cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1 or not isinstance(cns[0].value, str):
        raise CertError(f"the request's subject must hold exactly one common name (it has {len(cns)})")
    cn = cns[0].value
    _check_client_cn(cn, allow_unsafe_cn=allow_unsafe_cn)
    problem = _file_name_problem(cn)
    if problem:
        raise CertError(f"common name {cn!r} cannot be used as a file name ({problem})")
    public_key = csr.public_key()
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if public_key.curve.name not in ("secp256r1", "secp384r1"):
            raise CertError(f"EC key on {public_key.curve.name}: use P-256 or P-384")
    elif isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < 2048:
            raise CertError(f"RSA key of {public_key.key_size} bits: use 2048 or more")
    else:
        raise CertError("the request's key must be EC (P-256, P-384) or RSA (2048+)")
    _check_days(days)
    who = _resolve_owner(owner)
    out_dir = _prepare_dir(out_dir)
    ca_dir = Path(ca_dir) if ca_dir is not None else out_dir
    _check_reserved(cn, out_dir, ca_dir)
    cert_path = out_dir / f"{cn}.pem"
    _check_not_existing([cert_path], force)
    ca = _load_ca(ca_dir)
    cert = _build_leaf(ca=ca, public_key=public_key, cn=cn, days=days, eku=ExtendedKeyUsageOID.CLIENT_AUTH,
                       ku=_ku(digital_signature=True, key_encipherment=False), sans=None)
    _atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=_CERT_MODE, overwrite=force,
                  owner=who)
    return cert_path


def _check_reserved(name: str, out_dir: Path, ca_dir: Path) -> None:
    if name == "ca" and _same_dir(out_dir, ca_dir):
        raise CertError(
            f"name 'ca' would overwrite the CA files in {ca_dir}; choose another name"
        )


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def load_certificate(path: Path) -> x509.Certificate:
    """Load the first certificate of a PEM (or DER) file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CertError(f"cannot read certificate {path}: {exc.strerror or exc}") from exc
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise CertError(f"{path} is not a valid certificate: {exc}") from exc


def describe(cert: x509.Certificate) -> dict[str, Any]:
    """A JSON-friendly summary of a certificate."""
    cns = [
        a.value if isinstance(a.value, str) else a.value.decode("utf-8", "replace")
        for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    ]
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = [str(v) for v in san.get_values_for_type(x509.DNSName)] + [
            str(v) for v in san.get_values_for_type(x509.IPAddress)
        ]
    except x509.ExtensionNotFound:
        sans = []
    try:
        eku = [
            getattr(o, "_name", None) or o.dotted_string
            for o in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        ]
    except x509.ExtensionNotFound:
        eku = []
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    return {
        "subject_cn": cns,
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": cert.serial_number,
        "serial_hex": format(cert.serial_number, "x"),
        "sha256": cert.fingerprint(hashes.SHA256()).hex(),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "sans": sans,
        "eku": eku,
        "is_ca": is_ca,
    }


# --------------------------------------------------------------------------
# CLI glue: `policyd certs {ca,server,client}`
# --------------------------------------------------------------------------

_PROG = "policyd certs"


def _err(msg: str) -> int:
    one_line = " ".join(str(msg).split())
    print(f"{_PROG}: error: {one_line}", file=sys.stderr)
    return 2


def _print_written(pair: IssuedPair, what: str) -> None:
    print(f"wrote {pair.key_path} (private key, mode 0600)")
    print(
        f"wrote {pair.cert_path} ({what} certificate, serial {pair.serial:x}, "
        f"expires {pair.not_after:%Y-%m-%d}, sha256 {pair.sha256_fingerprint})"
    )


def _cmd_ca(args: argparse.Namespace) -> int:
    try:
        pair = issue_ca(
            Path(args.dir), cn=args.cn, days=args.days, force=args.force, key_type=args.key_type
        )
    except CertError as exc:
        return _err(str(exc))
    _print_written(pair, "CA")
    return 0


def _cmd_server(args: argparse.Namespace) -> int:
    sans = args.san if args.san else DEFAULT_SERVER_SANS
    try:
        pair = issue_server(
            Path(args.dir),
            ca_dir=Path(args.ca_dir) if args.ca_dir else None,
            cn=args.cn,
            sans=sans,
            days=args.days,
            force=args.force,
            owner=args.owner,
            key_type=args.key_type,
        )
    except CertError as exc:
        return _err(str(exc))
    _print_written(pair, "server")
    return 0


def _read_cn_file(path: str) -> list[tuple[int, str]]:
    """(line number, CN) for each device of a --cn-file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CertError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise CertError(f"{path}: not valid UTF-8 at byte {exc.start}") from exc
    cns: list[tuple[int, str]] = []
    seen: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line in seen:
            raise CertError(f"{path}:{lineno}: duplicate common name {line!r} (first on line {seen[line]})")
        seen[line] = lineno
        cns.append((lineno, line))
    if not cns:
        raise CertError(f"{path}: no common names in it")
    return cns


def _cmd_client(args: argparse.Namespace) -> int:
    out_dir = Path(args.dir)
    ca_dir = Path(args.ca_dir) if args.ca_dir else None
    common = dict(
        ca_dir=ca_dir, days=args.days, force=args.force, owner=args.owner,
        key_type=args.key_type, allow_unsafe_cn=args.allow_unsafe_cn,
    )
    try:
        if args.cn_file is None:
            pair = issue_client(out_dir, cn=args.cn, name=args.name, **common)
            _print_written(pair, f"client CN={args.cn!r}")
            return 0

        if args.name is not None:
            raise CertError("--name cannot be combined with --cn-file")
        cns = _read_cn_file(args.cn_file)
        # Validate the whole batch before writing anything, so a bad line
        # near the end does not leave a half-issued set.
        _resolve_owner(args.owner)
        _check_days(args.days)
        todo = []
        for lineno, cn in cns:
            where = f"{args.cn_file}:{lineno}"
            try:
                _check_client_cn(cn, allow_unsafe_cn=args.allow_unsafe_cn)
                problem = _file_name_problem(cn)
                if problem:
                    raise CertError(f"common name {cn!r} cannot be used as a file name ({problem})")
                if cn == "ca":
                    _check_reserved(cn, out_dir, ca_dir if ca_dir is not None else out_dir)
            except CertError as exc:
                raise CertError(f"{where}: {exc}") from None
            present = [p for p in (out_dir / f"{cn}.pem", out_dir / f"{cn}.key") if os.path.lexists(p)]
            if len(present) == 2 and not args.force:
                continue  # issued on an earlier run: re-running after adding devices issues the new ones
            if present and not args.force:
                raise CertError(f"{where}: {present[0]} exists without its pair: remove it, or --force "
                                "re-issues this device")
            todo.append(cn)
        _load_ca(ca_dir if ca_dir is not None else out_dir)
        for i, cn in enumerate(todo, 1):
            pair = issue_client(out_dir, cn=cn, **common)
            _print_written(pair, f"client CN={cn!r}")
            print(f"issued {i}/{len(todo)}")
        print(f"{args.cn_file}: {len(todo)} issued, {len(cns) - len(todo)} already present (kept)")
    except CertError as exc:
        return _err(str(exc))
    return 0


def _cmd_sign(args: argparse.Namespace) -> int:
    try:
        data = sys.stdin.buffer.read() if args.csr == "-" else Path(args.csr).read_bytes()
    except OSError as exc:
        return _err(f"{args.csr}: cannot read: {exc.strerror or exc}")
    try:
        path = sign_csr(Path(args.dir), data, ca_dir=Path(args.ca_dir) if args.ca_dir else None,
                        days=args.days, force=args.force, owner=args.owner, allow_unsafe_cn=args.allow_unsafe_cn)
    except CertError as exc:
        return _err(f"{args.csr}: {exc}")
    cert = load_certificate(path)
    print(f"wrote {path} (client certificate, serial {cert.serial_number:x}, expires "
          f"{cert.not_valid_after_utc:%Y-%m-%d}, sha256 {cert.fingerprint(hashes.SHA256()).hex()})")
    return 0


def _add_common(p: argparse.ArgumentParser, *, days: int, leaf: bool) -> None:
    p.add_argument(
        "--dir", default=DEFAULT_DIR, metavar="DIR",
        help="directory to write the files to (created if missing; default: %(default)s)",
    )
    if leaf:
        p.add_argument(
            "--ca-dir", default=None, metavar="DIR",
            help="directory holding ca.pem and ca.key (default: same as --dir)",
        )
    p.add_argument(
        "--days", type=int, default=days, metavar="N",
        help="validity in days (default: %(default)s)" + (
            "; never beyond the CA's own expiry" if leaf else ""
        ),
    )
    p.add_argument(
        "--key-type", choices=KEY_TYPES, default="ec",
        help="ec = ECDSA P-256 (default); rsa = RSA 2048 for device TLS stacks without ECDSA",
    )
    p.add_argument(
        "--force", action="store_true",
        help="overwrite existing files (default: refuse)",
    )
    if leaf:
        p.add_argument(
            "--owner", default=None, metavar="USER",
            help="chown key and certificate to USER and its primary group "
            "(e.g. mosquitto: the broker reads its key after dropping privileges)",
        )


def add_subparser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``certs`` (with ``ca``, ``server``, ``client``) on an
    ``argparse`` sub-parsers object; each leaf sets ``func(args) -> int``."""
    certs = subparsers.add_parser(
        "certs",
        help="issue the CA, broker and per-device client TLS certificates",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Issue the TLS certificates for a Mosquitto listener with\n"
            "require_certificate true and use_identity_as_username true: a CA, the\n"
            "broker's server certificate and one client certificate per device whose\n"
            "Common Name is the device id (the MQTT username).  Keys are written\n"
            "unencrypted with mode 0600, certificates 0644; existing files are kept\n"
            "unless --force."
        ),
        epilog=(
            "typical use:\n"
            "  policyd certs ca\n"
            "  policyd certs server --cn broker.example --owner mosquitto\n"
            "  policyd certs client --cn Device123\n"
            "  policyd certs client --cn-file devices.txt\n"
        "  policyd certs sign Device124.csr\n"
            "\n"
            "mosquitto.conf:\n"
            "  cafile   ./certs/ca.pem\n"
            "  certfile ./certs/server.pem\n"
            "  keyfile  ./certs/server.key\n"
            "  require_certificate true\n"
            "  use_identity_as_username true"
        ),
    )
    certs.set_defaults(func=lambda args: (certs.print_help(sys.stderr), 2)[1])
    sub = certs.add_subparsers(title="commands", metavar="{ca,server,client,sign}")

    p_ca = sub.add_parser(
        "ca",
        help="create the certificate authority (ca.pem, ca.key)",
        description="Create a self-signed CA (ca.pem, ca.key) that signs the server "
        "and client certificates; mosquitto.conf: cafile <dir>/ca.pem. "
        "Keep ca.key off the broker if you can.",
    )
    p_ca.add_argument("--cn", default=DEFAULT_CA_CN, help="CA common name (default: %(default)s)")
    _add_common(p_ca, days=DEFAULT_CA_DAYS, leaf=False)
    p_ca.set_defaults(func=_cmd_ca)

    p_srv = sub.add_parser(
        "server",
        help="issue the broker certificate (server.pem, server.key)",
        description="Issue the broker's certificate (server.pem, server.key) signed by "
        "the CA; mosquitto.conf: certfile <dir>/server.pem, keyfile <dir>/server.key. "
        "Clients check the host name they connect to against the SANs.",
    )
    p_srv.add_argument(
        "--cn", default=DEFAULT_SERVER_CN,
        help="server common name (default: %(default)s); added to the SANs when it is a "
        "host name or address",
    )
    p_srv.add_argument(
        "--san", action="append", default=None, metavar="NAME",
        help="subject alternative name, repeatable; IP addresses become iPAddress "
        "entries, anything else dNSName (default: localhost, 127.0.0.1, ::1)",
    )
    _add_common(p_srv, days=DEFAULT_LEAF_DAYS, leaf=True)
    p_srv.set_defaults(func=_cmd_server)

    p_cli = sub.add_parser(
        "client",
        help="issue device certificates (<cn>.pem, <cn>.key)",
        description="Issue a client certificate whose Common Name is the device id; with "
        "use_identity_as_username the CN becomes the MQTT username (%u in ACLs). "
        "CNs are limited to 64 characters and may not contain '+', '#', '/' or "
        "control characters.",
    )
    who = p_cli.add_mutually_exclusive_group(required=True)
    who.add_argument("--cn", help="device id to put in the certificate's Common Name")
    who.add_argument(
        "--cn-file", metavar="FILE",
        help="issue one certificate per line of FILE (blank lines and lines starting "
        "with # are skipped); devices whose .pem and .key exist are kept (re-run it after "
        "adding devices), --force re-issues them all; the whole file is validated first",
    )
    p_cli.add_argument(
        "--name", default=None,
        help="file base name (default: the CN); only with --cn",
    )
    p_cli.add_argument(
        "--allow-unsafe-cn", action="store_true",
        help="TESTING ONLY: accept '+', '#', '/', NUL and control characters in the CN "
        "(to mint hostile identities for tests)",
    )
    _add_common(p_cli, days=DEFAULT_LEAF_DAYS, leaf=True)
    p_cli.set_defaults(func=_cmd_client)

    p_sign = sub.add_parser(
        "sign",
        help="sign a device's certificate request (<cn>.pem); its key never leaves the device",
        description="Sign a certificate signing request made on the device (e.g. `openssl req -new "
        "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout dev.key -subj /CN=Device123`). "
        "The request must verify with its own key and name exactly one safe CN; the certificate "
        "gets the same extensions as `certs client` (clientAuth), nothing else the request asks for.",
    )
    p_sign.add_argument("csr", metavar="CSR", help="the request, PEM or DER; - reads standard input")
    p_sign.add_argument(
        "--allow-unsafe-cn", action="store_true",
        help="TESTING ONLY: accept '+', '#', '/', NUL and control characters in the CN",
    )
    _add_common(p_sign, days=DEFAULT_LEAF_DAYS, leaf=True)
    p_sign.set_defaults(func=_cmd_sign)
    return certs
