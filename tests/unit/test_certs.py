"""Tests for policyd.certs: issuing the CA, server and client certificates."""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import pwd
import select
import shutil
import socket
import ssl
import stat
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from policyd import certs
from policyd.certs import CertError, IssuedPair

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl binary not installed")


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def ext(cert: x509.Certificate, cls):
    return cert.extensions.get_extension_for_class(cls)


def cn_of(cert: x509.Certificate) -> str:
    (attr,) = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return attr.value


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def openssl_verify(ca: Path, leaf: Path, purpose: str | None = None) -> subprocess.CompletedProcess:
    cmd = [OPENSSL, "verify", "-CAfile", str(ca)]
    if purpose:
        cmd += ["-purpose", purpose]
    cmd.append(str(leaf))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


@pytest.fixture
def pki(tmp_path: Path):
    """A CA, a server and a client certificate in one directory."""
    d = tmp_path / "certs"
    ca = certs.issue_ca(d)
    server = certs.issue_server(d)
    client = certs.issue_client(d, cn="Device123")
    return d, ca, server, client


def make_cli() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="policyd")
    sub = parser.add_subparsers()
    certs.add_subparser(sub)
    return parser


def run_cli(argv: list[str]) -> int:
    args = make_cli().parse_args(argv)
    return args.func(args)


# --------------------------------------------------------------------------
# CA
# --------------------------------------------------------------------------


def test_issue_ca_writes_a_proper_root(tmp_path: Path):
    before = dt.datetime.now(dt.timezone.utc)
    pair = certs.issue_ca(tmp_path / "pki", cn="Test CA", days=100)
    assert isinstance(pair, IssuedPair)
    assert pair.cert_path == tmp_path / "pki" / "ca.pem"
    assert pair.key_path == tmp_path / "pki" / "ca.key"

    ca = certs.load_certificate(pair.cert_path)
    assert cn_of(ca) == "Test CA"
    assert ca.subject == ca.issuer
    ca.verify_directly_issued_by(ca)  # self-signed

    bc = ext(ca, x509.BasicConstraints)
    assert bc.critical and bc.value.ca is True and bc.value.path_length == 0
    ku = ext(ca, x509.KeyUsage)
    assert ku.value.key_cert_sign and ku.value.crl_sign
    assert not ku.value.digital_signature
    ski = ext(ca, x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(ca.public_key())

    # ECDSA P-256 key by default, SHA-256 signature
    key = serialization.load_pem_private_key(pair.key_path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    assert isinstance(ca.signature_hash_algorithm, hashes.SHA256)
    # PKCS#8, unencrypted
    assert pair.key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")

    # serial: random, positive, at most 159 bits; IssuedPair matches the cert
    assert 0 < ca.serial_number < 2**159
    assert pair.serial == ca.serial_number
    assert pair.sha256_fingerprint == ca.fingerprint(hashes.SHA256()).hex()
    assert pair.sha256_fingerprint == pair.sha256_fingerprint.lower()
    assert ":" not in pair.sha256_fingerprint and len(pair.sha256_fingerprint) == 64
    assert pair.not_after == ca.not_valid_after_utc

    # validity: backdated 5 minutes for clock skew, `days` long
    skew = before - ca.not_valid_before_utc
    assert dt.timedelta(minutes=4) < skew <= dt.timedelta(minutes=5, seconds=2)
    life = ca.not_valid_after_utc - before
    assert dt.timedelta(days=100) - dt.timedelta(seconds=5) < life <= dt.timedelta(days=100, seconds=5)

    assert mode_of(pair.key_path) == 0o600
    assert mode_of(pair.cert_path) == 0o644


@needs_openssl
def test_fingerprint_matches_openssl(tmp_path: Path):
    pair = certs.issue_ca(tmp_path)
    out = subprocess.run(
        [OPENSSL, "x509", "-noout", "-fingerprint", "-sha256", "-in", str(pair.cert_path)],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout
    fp = out.strip().split("=", 1)[1].replace(":", "").lower()
    assert fp == pair.sha256_fingerprint


def test_serials_are_random(tmp_path: Path):
    certs.issue_ca(tmp_path)
    serials = {certs.issue_client(tmp_path, cn=f"d{i}").serial for i in range(8)}
    assert len(serials) == 8
    # 159 random bits: all eight below 2**150 would happen with p = 2**-72
    assert max(s.bit_length() for s in serials) > 150


# --------------------------------------------------------------------------
# server and client leaves
# --------------------------------------------------------------------------


def test_server_certificate(pki):
    d, ca_pair, server_pair, _ = pki
    ca = certs.load_certificate(ca_pair.cert_path)
    srv = certs.load_certificate(server_pair.cert_path)
    assert server_pair.cert_path == d / "server.pem"
    assert server_pair.key_path == d / "server.key"

    srv.verify_directly_issued_by(ca)
    assert srv.issuer == ca.subject
    assert cn_of(srv) == "localhost"

    san = ext(srv, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }
    # "127.0.0.1" must not have been written as a DNS name
    assert "127.0.0.1" not in san.get_values_for_type(x509.DNSName)

    assert list(ext(srv, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    ku = ext(srv, x509.KeyUsage).value
    assert ku.digital_signature and not ku.key_cert_sign
    bc = ext(srv, x509.BasicConstraints)
    assert bc.value.ca is False
    aki = ext(srv, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ext(ca, x509.SubjectKeyIdentifier).value.digest
    assert ext(srv, x509.SubjectKeyIdentifier).value == x509.SubjectKeyIdentifier.from_public_key(
        srv.public_key()
    )
    assert isinstance(srv.signature_hash_algorithm, hashes.SHA256)
    # backdated 5 minutes for clock skew, like the CA
    skew = dt.datetime.now(dt.timezone.utc) - srv.not_valid_before_utc
    assert dt.timedelta(minutes=4) < skew < dt.timedelta(minutes=6)
    life = srv.not_valid_after_utc - dt.datetime.now(dt.timezone.utc)
    assert dt.timedelta(days=824) < life <= dt.timedelta(days=825)
    assert 0 < srv.serial_number < 2**159
    assert srv.serial_number != ca.serial_number

    # key pair matches
    key = serialization.load_pem_private_key(server_pair.key_path.read_bytes(), password=None)
    assert key.public_key().public_numbers() == srv.public_key().public_numbers()

    assert mode_of(server_pair.key_path) == 0o600
    assert mode_of(server_pair.cert_path) == 0o644


def test_server_custom_cn_and_sans(tmp_path: Path):
    certs.issue_ca(tmp_path)
    pair = certs.issue_server(
        tmp_path, cn="broker.example", sans=["mqtt.example", "10.1.2.3", "fe80::1"], name="broker"
    )
    assert pair.cert_path.name == "broker.pem"
    srv = certs.load_certificate(pair.cert_path)
    san = ext(srv, x509.SubjectAlternativeName).value
    # the CN is added: clients ignore the CN once a SAN is present
    assert san.get_values_for_type(x509.DNSName) == ["broker.example", "mqtt.example"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.1.2.3"),
        ipaddress.ip_address("fe80::1"),
    ]


@pytest.mark.parametrize("bad", ["", "has space", "bad_\u00e9.example", "a..b"])
def test_server_rejects_bad_sans(tmp_path: Path, bad: str):
    certs.issue_ca(tmp_path)
    with pytest.raises(CertError):
        certs.issue_server(tmp_path, sans=[bad])
    assert not (tmp_path / "server.key").exists()


def test_client_certificate(pki):
    d, ca_pair, _, client_pair = pki
    ca = certs.load_certificate(ca_pair.cert_path)
    cli = certs.load_certificate(client_pair.cert_path)
    assert client_pair.cert_path == d / "Device123.pem"
    assert client_pair.key_path == d / "Device123.key"
    cli.verify_directly_issued_by(ca)
    assert cn_of(cli) == "Device123"
    assert list(ext(cli, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert ext(cli, x509.BasicConstraints).value.ca is False
    assert ext(cli, x509.KeyUsage).value.digital_signature
    aki = ext(cli, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ext(ca, x509.SubjectKeyIdentifier).value.digest
    ext(cli, x509.SubjectKeyIdentifier)
    with pytest.raises(x509.ExtensionNotFound):
        ext(cli, x509.SubjectAlternativeName)
    assert mode_of(client_pair.key_path) == 0o600
    assert mode_of(client_pair.cert_path) == 0o644


def test_client_explicit_name_and_separate_ca_dir(tmp_path: Path):
    ca_dir, out = tmp_path / "ca", tmp_path / "devices"
    ca_pair = certs.issue_ca(ca_dir)
    pair = certs.issue_client(out, ca_dir=ca_dir, cn="Device 7", name="dev7")
    assert pair.cert_path == out / "dev7.pem" and pair.key_path == out / "dev7.key"
    assert not (out / "ca.pem").exists()
    cli = certs.load_certificate(pair.cert_path)
    assert cn_of(cli) == "Device 7"
    cli.verify_directly_issued_by(certs.load_certificate(ca_pair.cert_path))


def test_leaf_does_not_outlive_ca(tmp_path: Path):
    ca = certs.issue_ca(tmp_path, days=10)
    pair = certs.issue_client(tmp_path, cn="d", days=825)
    assert pair.not_after == ca.not_after
    short = certs.issue_client(tmp_path, cn="e", days=3)
    assert short.not_after < ca.not_after


@needs_openssl
def test_openssl_verifies_chain_and_purpose(pki):
    d, ca_pair, server_pair, client_pair = pki
    for leaf, purpose in ((server_pair.cert_path, "sslserver"), (client_pair.cert_path, "sslclient")):
        r = openssl_verify(ca_pair.cert_path, leaf, purpose)
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"{leaf}: OK" in r.stdout
    # and the EKUs really restrict the purpose
    r = openssl_verify(ca_pair.cert_path, client_pair.cert_path, "sslserver")
    assert r.returncode != 0
    r = openssl_verify(ca_pair.cert_path, server_pair.cert_path, "sslclient")
    assert r.returncode != 0


@needs_openssl
def test_openssl_rejects_leaf_from_other_ca(tmp_path: Path):
    certs.issue_ca(tmp_path / "a")
    certs.issue_ca(tmp_path / "b")
    pair = certs.issue_client(tmp_path / "b", cn="dev")
    r = openssl_verify(tmp_path / "a" / "ca.pem", pair.cert_path)
    assert r.returncode != 0
    with pytest.raises(Exception):
        certs.load_certificate(pair.cert_path).verify_directly_issued_by(
            certs.load_certificate(tmp_path / "a" / "ca.pem")
        )


def test_ca_cannot_sign_more_cas(tmp_path: Path):
    pair = certs.issue_ca(tmp_path)
    ca = certs.load_certificate(pair.cert_path)
    # pathlen 0: only leaves below this CA
    assert ext(ca, x509.BasicConstraints).value.path_length == 0


# --------------------------------------------------------------------------
# RSA variant
# --------------------------------------------------------------------------


def test_rsa_variant(tmp_path: Path):
    ca_pair = certs.issue_ca(tmp_path, key_type="rsa")
    srv_pair = certs.issue_server(tmp_path, key_type="rsa")
    cli_pair = certs.issue_client(tmp_path, cn="OldDevice", key_type="rsa")
    ca = certs.load_certificate(ca_pair.cert_path)
    for pair in (ca_pair, srv_pair, cli_pair):
        key = serialization.load_pem_private_key(pair.key_path.read_bytes(), password=None)
        assert isinstance(key, rsa.RSAPrivateKey)
        assert key.key_size == 2048
        cert = certs.load_certificate(pair.cert_path)
        assert isinstance(cert.public_key(), rsa.RSAPublicKey)
        assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
        cert.verify_directly_issued_by(ca)
        assert mode_of(pair.key_path) == 0o600
    srv_ku = ext(certs.load_certificate(srv_pair.cert_path), x509.KeyUsage).value
    assert srv_ku.digital_signature and srv_ku.key_encipherment
    if OPENSSL:
        for leaf in (srv_pair.cert_path, cli_pair.cert_path):
            r = openssl_verify(ca_pair.cert_path, leaf)
            assert r.returncode == 0, r.stdout + r.stderr


def test_mixed_key_types(tmp_path: Path):
    """An RSA device certificate signed by the (default) EC CA."""
    ca_pair = certs.issue_ca(tmp_path)
    pair = certs.issue_client(tmp_path, cn="OldDevice", key_type="rsa")
    cert = certs.load_certificate(pair.cert_path)
    assert isinstance(cert.public_key(), rsa.RSAPublicKey)
    cert.verify_directly_issued_by(certs.load_certificate(ca_pair.cert_path))


def test_unknown_key_type(tmp_path: Path):
    with pytest.raises(CertError, match="key type"):
        certs.issue_ca(tmp_path, key_type="dsa")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------
# overwrite protection, missing CA, file modes, atomic writes
# --------------------------------------------------------------------------


def test_not_overwritten_without_force(pki):
    d, ca_pair, server_pair, client_pair = pki
    snapshot = {p: p.read_bytes() for p in d.iterdir()}

    with pytest.raises(CertError) as ei:
        certs.issue_ca(d)
    assert str(d / "ca.pem") in str(ei.value) or str(d / "ca.key") in str(ei.value)
    with pytest.raises(CertError, match="server"):
        certs.issue_server(d)
    with pytest.raises(CertError) as ei:
        certs.issue_client(d, cn="Device123")
    assert "Device123" in str(ei.value) and "already exists" in str(ei.value)
    assert {p: p.read_bytes() for p in d.iterdir()} == snapshot

    # a lone existing key also blocks (no half pair gets written)
    (d / "Device123.pem").unlink()
    with pytest.raises(CertError, match="Device123.key"):
        certs.issue_client(d, cn="Device123")
    assert not (d / "Device123.pem").exists()

    new = certs.issue_client(d, cn="Device123", force=True)
    assert new.serial != client_pair.serial
    assert (d / "Device123.key").read_bytes() != snapshot[d / "Device123.key"]
    assert mode_of(new.key_path) == 0o600 and mode_of(new.cert_path) == 0o644

    new_ca = certs.issue_ca(d, force=True)
    assert new_ca.serial != ca_pair.serial


def test_file_appearing_after_the_check_is_not_clobbered(tmp_path: Path, monkeypatch):
    """If the certificate shows up between the up-front check and the write
    (a concurrent run), it is kept and the freshly written key is removed."""
    certs.issue_ca(tmp_path)
    (tmp_path / "dev.pem").write_bytes(b"someone else's")
    monkeypatch.setattr(certs, "_check_not_existing", lambda paths, force: None)
    with pytest.raises(CertError, match="dev.pem"):
        certs.issue_client(tmp_path, cn="dev")
    assert (tmp_path / "dev.pem").read_bytes() == b"someone else's"
    assert not (tmp_path / "dev.key").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.key", "ca.pem", "dev.pem"]


def test_missing_ca_says_what_to_do(tmp_path: Path):
    with pytest.raises(CertError, match="policyd certs ca"):
        certs.issue_server(tmp_path)
    with pytest.raises(CertError, match="policyd certs ca"):
        certs.issue_client(tmp_path, cn="dev", ca_dir=tmp_path / "nowhere")
    assert not (tmp_path / "server.key").exists()
    assert not (tmp_path / "dev.key").exists()


def test_mismatched_ca_key_refused(tmp_path: Path):
    certs.issue_ca(tmp_path / "a")
    certs.issue_ca(tmp_path / "b")
    shutil.copy(tmp_path / "b" / "ca.key", tmp_path / "a" / "ca.key")
    with pytest.raises(CertError, match="does not match"):
        certs.issue_client(tmp_path / "a", cn="dev")


def test_modes_do_not_depend_on_umask(tmp_path: Path):
    old = os.umask(0)
    try:
        certs.issue_ca(tmp_path)
        pair = certs.issue_client(tmp_path, cn="dev")
    finally:
        os.umask(old)
    for p in (tmp_path / "ca.key", pair.key_path):
        assert mode_of(p) == 0o600
    for p in (tmp_path / "ca.pem", pair.cert_path):
        assert mode_of(p) == 0o644


def test_keys_are_created_private_and_exclusive(tmp_path: Path, monkeypatch):
    """Every file the module creates starts life as O_EXCL, mode 0600, in the
    target directory, and is moved into place (no temp files left over)."""
    certs.issue_ca(tmp_path)
    created: list[tuple[str, int, int]] = []
    real_open = os.open

    def spy_open(path, flags, mode=0o777, *a, **kw):
        if flags & os.O_CREAT and str(path).startswith(str(tmp_path)):
            created.append((str(path), flags, mode))
        return real_open(path, flags, mode, *a, **kw)

    monkeypatch.setattr(os, "open", spy_open)
    pair = certs.issue_client(tmp_path, cn="dev")
    monkeypatch.undo()

    assert len(created) == 2  # key and certificate
    for path, flags, mode in created:
        assert Path(path).parent == tmp_path
        assert Path(path).name not in ("dev.key", "dev.pem")  # a temp file, renamed later
        assert flags & os.O_EXCL
        assert mode & 0o077 == 0, oct(mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.key", "ca.pem", "dev.key", "dev.pem"]
    assert mode_of(pair.key_path) == 0o600


def test_failed_write_leaves_nothing_behind(tmp_path: Path, monkeypatch):
    certs.issue_ca(tmp_path)

    def broken_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(CertError, match="dev.key"):
        certs.issue_client(tmp_path, cn="dev")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.key", "ca.pem"]


def test_owner_chowns_key_and_cert(tmp_path: Path):
    if os.geteuid() != 0:
        pytest.skip("chown needs root")
    try:
        pw = pwd.getpwnam("mosquitto")
    except KeyError:
        pytest.skip("no mosquitto user")
    certs.issue_ca(tmp_path)
    pair = certs.issue_server(tmp_path, owner="mosquitto")
    for p in (pair.key_path, pair.cert_path):
        st = p.stat()
        assert (st.st_uid, st.st_gid) == (pw.pw_uid, pw.pw_gid)
    assert mode_of(pair.key_path) == 0o600
    # the CA key stays with us
    assert (tmp_path / "ca.key").stat().st_uid == os.geteuid()


def test_unknown_owner_refused_before_writing(tmp_path: Path):
    certs.issue_ca(tmp_path)
    with pytest.raises(CertError, match="no-such-user-xyz"):
        certs.issue_server(tmp_path, owner="no-such-user-xyz")
    with pytest.raises(CertError, match="no-such-user-xyz"):
        certs.issue_client(tmp_path, cn="dev", owner="no-such-user-xyz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.key", "ca.pem"]


@pytest.mark.parametrize("days", [0, -1])
def test_bad_days(tmp_path: Path, days: int):
    with pytest.raises(CertError, match="days"):
        certs.issue_ca(tmp_path, days=days)


# --------------------------------------------------------------------------
# hostile common names
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cn",
    [
        "",
        "x" * 65,
        "dev+1",
        "dev#",
        "#",
        "+",
        "site/dev1",
        "dev\x00evil",
        "dev\nuser admin",
        "$SYS",  # the broker's own topics
        ".hidden",  # not a safe file name
        "..",
    ],
)
def test_hostile_client_cn_refused(tmp_path: Path, cn: str):
    certs.issue_ca(tmp_path)
    with pytest.raises(CertError):
        certs.issue_client(tmp_path, cn=cn)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.key", "ca.pem"]


def test_cn_length_limit_is_64(tmp_path: Path):
    certs.issue_ca(tmp_path)
    pair = certs.issue_client(tmp_path, cn="d" * 64)
    assert cn_of(certs.load_certificate(pair.cert_path)) == "d" * 64


@pytest.mark.parametrize("name", ["a/b", ".x", "", "x\x00"])
def test_unsafe_explicit_name_refused(tmp_path: Path, name: str):
    certs.issue_ca(tmp_path)
    with pytest.raises(CertError):
        certs.issue_client(tmp_path, cn="dev", name=name)


def test_name_ca_cannot_clobber_the_ca(tmp_path: Path):
    certs.issue_ca(tmp_path)
    with pytest.raises(CertError, match="ca"):
        certs.issue_client(tmp_path, cn="ca", force=True)
    with pytest.raises(CertError, match="ca"):
        certs.issue_server(tmp_path, name="ca", force=True)
    ca = certs.load_certificate(tmp_path / "ca.pem")
    assert ext(ca, x509.BasicConstraints).value.ca


def test_allow_unsafe_cn_escape_hatch(tmp_path: Path):
    certs.issue_ca(tmp_path)
    pair = certs.issue_client(tmp_path, cn="dev+#", allow_unsafe_cn=True)
    assert pair.cert_path.name == "dev+#.pem"
    assert cn_of(certs.load_certificate(pair.cert_path)) == "dev+#"

    # a CN that is also an unsafe file name additionally needs an explicit name
    with pytest.raises(CertError, match="name"):
        certs.issue_client(tmp_path, cn="a/b", allow_unsafe_cn=True)
    pair = certs.issue_client(tmp_path, cn="a/b", allow_unsafe_cn=True, name="slash")
    assert pair.cert_path == tmp_path / "slash.pem"
    assert cn_of(certs.load_certificate(pair.cert_path)) == "a/b"

    # length is never negotiable (X.509 ub-common-name)
    with pytest.raises(CertError):
        certs.issue_client(tmp_path, cn="x" * 65, allow_unsafe_cn=True, name="long")


# --------------------------------------------------------------------------
# load_certificate / describe
# --------------------------------------------------------------------------


def test_describe(pki):
    d, ca_pair, server_pair, client_pair = pki
    info = certs.describe(certs.load_certificate(client_pair.cert_path))
    assert info["subject_cn"] == ["Device123"]
    assert info["serial"] == client_pair.serial
    assert info["sha256"] == client_pair.sha256_fingerprint
    assert info["issuer"] == "CN=mosquitto-policyd CA"
    assert dt.datetime.fromisoformat(info["not_after"]) == client_pair.not_after
    assert dt.datetime.fromisoformat(info["not_before"]) < dt.datetime.fromisoformat(info["not_after"])
    assert info["is_ca"] is False
    srv = certs.describe(certs.load_certificate(server_pair.cert_path))
    assert set(srv["sans"]) == {"localhost", "127.0.0.1", "::1"}
    assert certs.describe(certs.load_certificate(ca_pair.cert_path))["is_ca"] is True


def test_load_certificate_errors(tmp_path: Path):
    with pytest.raises(CertError):
        certs.load_certificate(tmp_path / "missing.pem")
    (tmp_path / "junk.pem").write_text("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    with pytest.raises(CertError):
        certs.load_certificate(tmp_path / "junk.pem")


# --------------------------------------------------------------------------
# CLI glue
# --------------------------------------------------------------------------


def test_cli_ca_server_client(tmp_path: Path, capsys):
    d = tmp_path / "out"
    assert run_cli(["certs", "ca", "--dir", str(d), "--cn", "CLI CA", "--days", "30"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2
    assert any(str(d / "ca.pem") in line for line in out)
    assert any(str(d / "ca.key") in line for line in out)
    assert cn_of(certs.load_certificate(d / "ca.pem")) == "CLI CA"

    assert run_cli([
        "certs", "server", "--dir", str(d), "--cn", "broker.test",
        "--san", "broker.test", "--san", "192.0.2.1", "--key-type", "rsa",
    ]) == 0
    srv = certs.load_certificate(d / "server.pem")
    san = ext(srv, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("192.0.2.1")]
    assert san.get_values_for_type(x509.DNSName) == ["broker.test"]
    assert isinstance(srv.public_key(), rsa.RSAPublicKey)
    assert len(capsys.readouterr().out.splitlines()) == 2

    assert run_cli(["certs", "client", "--dir", str(d), "--cn", "Device9"]) == 0
    assert (d / "Device9.pem").exists() and (d / "Device9.key").exists()
    capsys.readouterr()

    # existing file: exit code 2, one line on stderr
    assert run_cli(["certs", "client", "--dir", str(d), "--cn", "Device9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("policyd certs: error: ")
    assert err.count("\n") == 1 and "Device9" in err
    assert run_cli(["certs", "client", "--dir", str(d), "--cn", "Device9", "--force"]) == 0


def test_cli_cn_file(tmp_path: Path, capsys):
    d = tmp_path / "out"
    assert run_cli(["certs", "ca", "--dir", str(d)]) == 0
    cn_file = tmp_path / "devices.txt"
    cn_file.write_text("# fleet\n\nsensor-1\n  sensor-2  \n# sensor-x\nsensor-3\n")
    capsys.readouterr()
    assert run_cli(["certs", "client", "--dir", str(d), "--cn-file", str(cn_file)]) == 0
    out = capsys.readouterr().out
    assert "issued 1/3" in out and "issued 2/3" in out and "issued 3/3" in out
    assert sum(1 for line in out.splitlines() if line.startswith("wrote ")) == 6
    ca = certs.load_certificate(d / "ca.pem")
    for cn in ("sensor-1", "sensor-2", "sensor-3"):
        cert = certs.load_certificate(d / f"{cn}.pem")
        assert cn_of(cert) == cn
        cert.verify_directly_issued_by(ca)
        assert mode_of(d / f"{cn}.key") == 0o600
    assert not (d / "sensor-x.pem").exists()
    assert not list(d.glob("#*"))


def test_cli_cn_file_bad_line_issues_nothing(tmp_path: Path, capsys):
    d = tmp_path / "out"
    certs.issue_ca(d)
    cn_file = tmp_path / "devices.txt"
    cn_file.write_text("good-1\ngood-2\nbad/one\n")
    assert run_cli(["certs", "client", "--dir", str(d), "--cn-file", str(cn_file)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("policyd certs: error: ") and "bad/one" in err
    assert sorted(p.name for p in d.iterdir()) == ["ca.key", "ca.pem"]

    cn_file.write_text("dup\ndup\n")
    assert run_cli(["certs", "client", "--dir", str(d), "--cn-file", str(cn_file)]) == 2
    assert "duplicate" in capsys.readouterr().err
    assert sorted(p.name for p in d.iterdir()) == ["ca.key", "ca.pem"]


def test_cli_cn_file_is_incremental_and_says_where(tmp_path: Path, capsys):
    d = tmp_path / "out"
    certs.issue_ca(d)
    cn_file = tmp_path / "devices.txt"
    cn_file.write_text("dev-1\ndev-2\n")
    assert run_cli(["certs", "client", "--dir", str(d), "--cn-file", str(cn_file)]) == 0
    keys = {cn: (d / f"{cn}.key").read_bytes() for cn in ("dev-1", "dev-2")}
    capsys.readouterr()
    # devices added to the list: a re-run issues the new ones and keeps the rest (no re-keying)
    cn_file.write_text("dev-1\ndev-2\n# added later\ndev-3\n")
    assert run_cli(["certs", "client", "--dir", str(d), "--cn-file", str(cn_file)]) == 0
    out = capsys.readouterr().out
    assert "1 issued, 2 already present (kept)" in out and "dev-3.pem" in out and "dev-1.pem" not in out
    assert {cn: (d / f"{cn}.key").read_bytes() for cn in ("dev-1", "dev-2")} == keys
    # half a pair is not silently skipped
    (d / "dev-2.pem").unlink()
    assert run_cli(["certs", "client", "--dir", str(d), "--cn-file", str(cn_file)]) == 2
    assert f"{cn_file}:2: " in capsys.readouterr().err
    # a bad name names its line, and the message names no Python API
    cn_file.write_text("dev-1\n\n# comment\nbad+one\n")
    assert run_cli(["certs", "client", "--dir", str(d), "--cn-file", str(cn_file)]) == 2
    err = capsys.readouterr().err
    assert f"{cn_file}:4: client common name refused" in err
    assert "=True" not in err and "allow_unsafe_cn" not in err
    assert run_cli(["certs", "client", "--dir", str(d), "--cn", "dev-1"]) == 2
    err = capsys.readouterr().err
    assert "--force replaces it" in err and "force=True" not in err


def test_cli_sign_csr_keeps_the_key_on_the_device(tmp_path: Path, capsys):
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.x509.oid import NameOID as Oid

    d = tmp_path / "out"
    certs.issue_ca(d)

    def csr(cn_values, key=None, sign_key=None):
        key = key or ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(Oid.COMMON_NAME, v) for v in cn_values])
        request = x509.CertificateSigningRequestBuilder().subject_name(name).sign(sign_key or key, hashes.SHA256())
        path = tmp_path / f"{len(list(tmp_path.iterdir()))}.csr"
        path.write_bytes(request.public_bytes(ser.Encoding.PEM))
        return path, key

    path, key = csr(["Device500"])
    assert run_cli(["certs", "sign", "--dir", str(d), str(path)]) == 0
    cert = certs.load_certificate(d / "Device500.pem")
    assert cn_of(cert) == "Device500" and not (d / "Device500.key").exists()
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    cert.verify_directly_issued_by(certs.load_certificate(d / "ca.pem"))
    assert ext(cert, x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH])
    assert not ext(cert, x509.BasicConstraints).value.ca
    capsys.readouterr()
    assert run_cli(["certs", "sign", "--dir", str(d), str(path)]) == 2  # exists
    for cns, message in ((["bad/cn"], "common name refused"), (["a", "b"], "exactly one common name"),
                         ([], "exactly one common name")):
        path, _ = csr(cns)
        assert run_cli(["certs", "sign", "--dir", str(d), str(path)]) == 2
        assert message in capsys.readouterr().err
    forged, _ = csr(["Forged"], key=ec.generate_private_key(ec.SECP256R1()))
    request = x509.load_pem_x509_csr(forged.read_bytes())
    # a request whose signature does not match its key
    other = ec.generate_private_key(ec.SECP256R1())
    tampered = x509.CertificateSigningRequestBuilder().subject_name(request.subject).sign(other, hashes.SHA256())
    blob = bytearray(tampered.public_bytes(ser.Encoding.DER))
    blob[-5] ^= 0xFF
    forged.write_bytes(bytes(blob))
    assert run_cli(["certs", "sign", "--dir", str(d), str(forged)]) == 2
    err = capsys.readouterr().err
    assert "signature does not verify" in err or "not a certificate request" in err
    assert not (d / "Forged.pem").exists()


def test_cli_missing_ca(tmp_path: Path, capsys):
    assert run_cli(["certs", "server", "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "policyd certs ca" in err and err.startswith("policyd certs: error: ")


def test_cli_arguments():
    parser = make_cli()
    args = parser.parse_args(["certs", "client", "--cn", "x"])
    assert args.dir == "./certs" and args.days == 825 and args.key_type == "ec"
    assert parser.parse_args(["certs", "ca"]).days == 3650
    with pytest.raises(SystemExit):  # --cn and --cn-file are exclusive, one required
        parser.parse_args(["certs", "client"])
    with pytest.raises(SystemExit):
        parser.parse_args(["certs", "client", "--cn", "a", "--cn-file", "f"])
    with pytest.raises(SystemExit):
        parser.parse_args(["certs", "ca", "--key-type", "dsa"])


# --------------------------------------------------------------------------
# real TLS handshakes against `openssl s_server -Verify 1`
# --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s_server(pki):
    """openssl s_server requiring a client certificate signed by our CA.

    ``-verify_return_error`` matters: without it s_server only *logs* a
    client certificate verification failure and carries on with the session.
    """
    if OPENSSL is None:
        pytest.skip("openssl binary not installed")
    d, ca, server, _ = pki
    port = _free_port()
    proc = subprocess.Popen(
        [
            OPENSSL, "s_server", "-accept", f"127.0.0.1:{port}",
            "-cert", str(server.cert_path), "-key", str(server.key_path),
            "-CAfile", str(ca.cert_path), "-Verify", "1", "-verify_return_error", "-www",
        ],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        # wait for "ACCEPT" (bounded)
        deadline = time.monotonic() + 10
        buf = b""
        while b"ACCEPT" not in buf:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"s_server did not start: {buf!r}")
            r, _, _ = select.select([proc.stdout], [], [], 0.2)
            if r:
                buf += os.read(proc.stdout.fileno(), 4096)
        yield port, d
    finally:
        proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()


def _https_get(port: int, ca: Path, cert: Path, key: Path, server_hostname: str) -> bytes:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_hostname) as tls:
            tls.sendall(b"GET / HTTP/1.0\r\n\r\n")
            data = b""
            while True:
                chunk = tls.recv(65536)
                if not chunk:
                    break
                data += chunk
            return data


@pytest.mark.parametrize("server_hostname", ["localhost", "127.0.0.1"])
def test_tls_handshake_with_client_cert(s_server, server_hostname):
    port, d = s_server
    # the client checks the server's chain *and* host name (DNS and IP SANs)
    data = _https_get(port, d / "ca.pem", d / "Device123.pem", d / "Device123.key", server_hostname)
    assert data.startswith(b"HTTP/1.0 200 ok"), data[:200]
    # s_server -www echoes the peer certificate it verified
    assert b"Device123" in data


def test_tls_client_cert_from_other_ca_rejected(s_server, tmp_path: Path):
    port, d = s_server
    other = tmp_path / "other"
    certs.issue_ca(other, cn="Rogue CA")
    certs.issue_client(other, cn="Device123")  # same CN, wrong issuer
    with pytest.raises((ssl.SSLError, ConnectionError)) as ei:
        data = _https_get(port, d / "ca.pem", other / "Device123.pem", other / "Device123.key", "localhost")
        # never reached if rejected; make an accidental success fail loudly
        pytest.fail(f"server accepted a foreign client certificate: {data[:120]!r}")
    if isinstance(ei.value, ssl.SSLError):
        assert "UNKNOWN_CA" in str(ei.value).upper(), ei.value


def test_tls_server_cert_checked_by_client(s_server, tmp_path: Path):
    """A client trusting a different CA refuses our server (the chain check is real)."""
    port, d = s_server
    other = tmp_path / "other"
    certs.issue_ca(other)
    with pytest.raises(ssl.SSLCertVerificationError):
        _https_get(port, other / "ca.pem", d / "Device123.pem", d / "Device123.key", "localhost")
    # and a host name not in the SANs is refused too
    with pytest.raises(ssl.SSLCertVerificationError):
        _https_get(port, d / "ca.pem", d / "Device123.pem", d / "Device123.key", "elsewhere.example")


def test_tls_handshake_rsa(tmp_path: Path):
    """RSA server + RSA client under an RSA CA, via a Python ssl server thread."""
    import threading

    d = tmp_path
    certs.issue_ca(d, key_type="rsa")
    certs.issue_server(d, key_type="rsa")
    certs.issue_client(d, cn="OldDevice", key_type="rsa")

    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(str(d / "server.pem"), str(d / "server.key"))
    sctx.load_verify_locations(str(d / "ca.pem"))
    sctx.verify_mode = ssl.CERT_REQUIRED
    result: dict = {}

    lsock = socket.create_server(("127.0.0.1", 0))
    lsock.settimeout(10)
    port = lsock.getsockname()[1]

    def serve():
        try:
            conn, _ = lsock.accept()
            conn.settimeout(10)
            with sctx.wrap_socket(conn, server_side=True) as tls:
                peer = tls.getpeercert()
                result["peer_cn"] = dict(x[0] for x in peer["subject"])["commonName"]
                tls.sendall(b"hello " + result["peer_cn"].encode())
        except Exception as exc:  # reported to the main thread
            result["error"] = exc

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        cctx = ssl.create_default_context(cafile=str(d / "ca.pem"))
        cctx.load_cert_chain(str(d / "OldDevice.pem"), str(d / "OldDevice.key"))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with cctx.wrap_socket(raw, server_hostname="localhost") as tls:
                assert tls.recv(100) == b"hello OldDevice"
        t.join(timeout=10)
    finally:
        lsock.close()
    assert "error" not in result, result.get("error")
    assert result["peer_cn"] == "OldDevice"
