"""Certificate → identity mapping, revocation and the rules-file sections (policyd.identity)."""

from __future__ import annotations

import datetime as dt
import hashlib
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from policyd.engine import PolicyLoadError, compile_policy, parse_text
from policyd.identity import IdentityPolicy, IdentitySpec, Refused, Revocations, identify
from policyd.identity.authenticate import Authenticator
from policyd.identity.authenticate import password_kicks
from policyd.identity.verify import checked_client
from policyd.identity.spec import parse_fingerprint, parse_serial
from policyd.v1 import policy_pb2 as pb

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.timezone.utc)
CA_KEY = ec.generate_private_key(ec.SECP256R1())
CA_NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test CA")])
CA = (x509.CertificateBuilder().subject_name(CA_NAME).issuer_name(CA_NAME)
      .public_key(CA_KEY.public_key()).serial_number(1)
      .not_valid_before(NOW - dt.timedelta(days=365)).not_valid_after(NOW + dt.timedelta(days=365))
      .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
      .sign(CA_KEY, hashes.SHA256()))


def cert_der(*subject: tuple, sans: tuple = (), serial: int = 0x1F3A, days=(-1, 30), key=CA_KEY) -> bytes:
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(oid, v) for oid, v in subject]))
               .issuer_name(CA_NAME).public_key(ec.generate_private_key(ec.SECP256R1()).public_key())
               .serial_number(serial)
               .not_valid_before(NOW + dt.timedelta(days=days[0]))
               .not_valid_after(NOW + dt.timedelta(days=days[1])))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


CN = NameOID.COMMON_NAME
OU = NameOID.ORGANIZATIONAL_UNIT_NAME
DEFAULT = IdentityPolicy()


def ident(der: bytes, policy: IdentityPolicy = DEFAULT):
    return identify(der, policy, NOW)


def refusal(der: bytes, policy: IdentityPolicy = DEFAULT) -> str:
    with pytest.raises(Refused) as info:
        ident(der, policy)
    return str(info.value)


def source(name: str, template: str = "") -> IdentityPolicy:
    return IdentityPolicy(IdentitySpec(source=name, template=template))


# --- mapping ---------------------------------------------------------------

def test_cn_is_the_default_identity_and_attributes_are_collected():
    got = ident(cert_der((CN, "Device123"), (OU, "sensors"), (OU, "eu"),
                         sans=(x509.DNSName("d123.example"),)))
    assert got.username == "Device123"
    assert got.serial == 0x1F3A
    assert got.attributes["OU"] == ("sensors", "eu")
    assert got.attributes["san_dns"] == ("d123.example",)
    assert "serial" not in got.attributes


def test_subject_fields_are_read_in_one_pass_as_each_field_alone_would_read_them():
    """Every field name's values in the order written, across multi-valued RDNs, with fields
    policyd does not map left out: what one get_attributes_for_oid per field gives."""
    from policyd.identity import certificate

    name = x509.Name([
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "acme"),
                                        x509.NameAttribute(OU, "eu")]),
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.EMAIL_ADDRESS, "x@example.org")]),
        x509.RelativeDistinguishedName([x509.NameAttribute(OU, "sensors")]),
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "org"),
                                        x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "example")]),
        x509.RelativeDistinguishedName([x509.NameAttribute(CN, "Device9")]),
    ])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(CA_NAME)
            .public_key(ec.generate_private_key(ec.SECP256R1()).public_key()).serial_number(9)
            .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=1))
            .sign(CA_KEY, hashes.SHA256()))
    values = certificate._values(cert)
    for field, oid in certificate._SUBJECT_OIDS.items():
        assert values[field] == tuple(a.value for a in cert.subject.get_attributes_for_oid(oid)), field
    assert values["OU"] == ("eu", "sensors") and values["C"] == ()
    assert "x@example.org" not in {v for vs in values.values() for v in vs}


@pytest.mark.parametrize("name, general, expected", [
    ("san-dns", x509.DNSName("d1.example"), "d1.example"),
    ("san-email", x509.RFC822Name("d1@example.org"), "d1@example.org"),
    ("san-uri", x509.UniformResourceIdentifier("urn:device:d1"), "urn:device:d1"),
])
def test_san_sources(name, general, expected):
    assert ident(cert_der((CN, "ignored"), sans=(general,)), source(name)).username == expected


def test_san_uri_with_a_slash_is_refused_like_any_unsafe_identity():
    der = cert_der((CN, "x"), sans=(x509.UniformResourceIdentifier("https://example/d1"),))
    assert "contains '/'" in refusal(der, source("san-uri"))


def test_serial_source_is_lower_case_hex():
    assert ident(cert_der((CN, "x"), serial=0xABC123), source("serial")).username == "abc123"


def test_template_source_combines_fields():
    der = cert_der((CN, "D1"), (NameOID.ORGANIZATION_NAME, "Acme"))
    assert ident(der, source("template", "{O}-{CN}")).username == "Acme-D1"
    assert "no OU" in refusal(der, source("template", "{OU}-{CN}"))


@pytest.mark.parametrize("subject, why", [
    (((CN, "#"),), "contains '#'"),
    (((CN, "+"),), "contains '+'"),
    (((CN, "a/b"),), "contains '/'"),
    (((CN, "a\x00b"),), "contains '\\x00'"),
    (((CN, "a\nb"),), "control characters"),
    (((CN, "$SYS"),), "starts with '$'"),
    (((CN, "$CONTROL"),), "starts with '$'"),
    (((OU, "only-ou"),), "certificate has no CN"),
    (((CN, "one"), (CN, "two")), "2 CN values"),
    (((CN, "x" * 64), (OU, "y")), None),  # 64 is fine
])
def test_unusable_identities_are_refused(subject, why):
    der = cert_der(*subject)
    if why is None:
        assert ident(der).username == "x" * 64
    else:
        assert why in refusal(der)


def test_missing_and_ambiguous_sans_are_refused():
    assert "no SAN DNS" in refusal(cert_der((CN, "x")), source("san-dns"))
    two = cert_der((CN, "x"), sans=(x509.DNSName("a.example"), x509.DNSName("b.example")))
    assert "2 SAN DNS values" in refusal(two, source("san-dns"))


def test_invalid_utf8_in_the_subject_is_refused():
    der = cert_der((CN, "ZZZZ"), (OU, "WWWW"))
    bad = der.replace(b"ZZZZ", b"\xff\xfe\xff\xfe")
    assert bad != der
    assert "not valid text" in refusal(bad) or "unreadable" in refusal(bad)


def test_no_certificate_and_garbage_are_refused():
    assert "no client certificate" in refusal(b"")
    assert "unreadable certificate" in refusal(b"\x30\x03\x02\x01\x01")


# --- validity, issuer, revocation -------------------------------------------

def test_expired_and_not_yet_valid_are_refused_unless_the_check_is_off():
    expired = cert_der((CN, "old"), days=(-30, -1))
    assert "expired" in refusal(expired)
    assert "not valid before" in refusal(cert_der((CN, "new"), days=(2, 30)))
    lenient = IdentityPolicy(IdentitySpec(check_expiry=False))
    assert ident(expired, lenient).username == "old"


def test_issuer_pin_accepts_only_certificates_signed_by_a_pinned_ca():
    pinned = IdentityPolicy(IdentitySpec(issuers=(CA,)))
    assert ident(cert_der((CN, "ok")), pinned).username == "ok"
    forged = cert_der((CN, "forged"), key=ec.generate_private_key(ec.SECP256R1()))  # same issuer name
    assert "not a pinned issuer" in refusal(forged, pinned)


def test_revocation_by_serial_and_by_fingerprint():
    der = cert_der((CN, "D1"), serial=0xBEEF)
    fingerprint = hashlib.sha256(der).hexdigest()
    assert "serial beef is revoked" in refusal(der, IdentityPolicy(revoked=Revocations(serials=frozenset({0xBEEF}))))
    assert "is revoked" in refusal(der, IdentityPolicy(revoked=Revocations(sha256=frozenset({fingerprint}))))
    assert ident(der, IdentityPolicy(revoked=Revocations(serials=frozenset({0xBEEE})))).username == "D1"


# --- rules-file sections ------------------------------------------------------

def test_identity_and_revoked_sections_are_loaded():
    fp = "AB:" * 31 + "AB"
    policy = compile_policy(parse_text(f"""\
identity:
  source: template
  template: "{{OU}}-{{CN}}"
  check_expiry: false
revoked:
  serials: ["0x1f3a", "1F:3B", "8000"]
  sha256: ["{fp}"]
users: {{}}
""".encode()))
    assert policy.identity.spec.source == "template"
    assert policy.identity.spec.check_expiry is False
    assert policy.identity.revoked.serials == {0x1F3A, 0x1F3B, 8000}
    assert policy.identity.revoked.sha256 == {"ab" * 32}


def test_a_file_without_the_sections_keeps_cn_and_no_revocations():
    policy = compile_policy(parse_text(b"users: {}\n"))
    assert policy.identity == IdentityPolicy()


@pytest.mark.parametrize("text, message", [
    ("identity:\n  source: ou\n", "unknown source 'ou'"),
    ("identity:\n  source: template\n", "`template` is required"),
    ("identity:\n  source: template\n  template: fixed\n", "without any {field}"),
    ("identity:\n  source: template\n  template: '{CN}-{password}'\n", "unknown template field {password}"),
    ("identity:\n  issuers: [/nonexistent/ca.pem]\n", "cannot read issuer certificates"),
    ("identity:\n  check_expiry: maybe\n", "expected true or false"),
    ("revoked:\n  serials: [zz]\n", "is not a serial"),
    ("revoked:\n  sha256: [abcd]\n", "is not a SHA-256 fingerprint"),
    ("revoked:\n  crl: x\n", "unknown key 'crl'"),
])
def test_bad_sections_are_reported_with_location(text, message):
    with pytest.raises(PolicyLoadError) as info:
        parse_text(text.encode(), "rules.yaml")
    shown = [str(p) for p in info.value.problems]
    assert any(message in s and s.startswith("rules.yaml:") for s in shown), shown


def test_serial_and_fingerprint_parsing():
    assert parse_serial("0x1F3a") == parse_serial("1f:3a") == 0x1F3A
    assert parse_serial("123") == 123
    assert parse_serial("xyz") is None and parse_serial("") is None
    assert parse_fingerprint("00" * 32) == "00" * 32
    assert parse_fingerprint("00" * 31) is None


# --- sessions and the Authenticate answer --------------------------------------

def _check(policy, der: bytes, username: bytes, mode=pb.IDENTITY_MODE_BROKER, provenance=pb.PROVENANCE_CERTIFICATE):
    return checked_client(pb.CheckAclRequest(has_username=True, username=username, client_id=b"c",
                                             topic=b"t", access=pb.ACCESS_WRITE, provenance=provenance,
                                             certificate_der=der, identity_mode=mode), policy)


def _policy(rules: bytes):
    return compile_policy(parse_text(rules))


def test_each_check_derives_attributes_from_the_certificate_it_carries():
    # Two certificates with one CN: each check gets its own certificate's attributes, whatever
    # connected last (nothing is remembered between checks, so a restart changes nothing).
    policy = _policy(b"users: {}\nidentity:\n  check_expiry: false\n")
    guest = cert_der((CN, "D1"), (OU, "guests"), serial=1)
    ops = cert_der((CN, "D1"), (OU, "ops"), serial=2)
    assert _check(policy, ops, b"D1").attributes["OU"] == ("ops",)
    assert _check(policy, guest, b"D1").attributes["OU"] == ("guests",)


def test_a_check_whose_certificate_is_revoked_or_does_not_name_the_user_ends_the_connection():
    policy = _policy(b'users: {}\nidentity:\n  check_expiry: false\nrevoked:\n  serials: ["0x77"]\n')
    revoked = _check(policy, cert_der((CN, "D1"), serial=0x77), b"D1")
    assert revoked.refusal.kind == "revoked"
    other = _check(policy, cert_der((CN, "D1"), serial=0x78), b"admin")
    assert other.refusal.kind == "mismatch"
    two_cns = _check(policy, cert_der((CN, "Victim"), (CN, "Intruder")), b"Victim")
    assert two_cns.refusal.kind == "ambiguous"
    dollar = _check(policy, cert_der((CN, "$SYS")), b"$SYS")
    assert dollar.refusal.kind == "unsafe-identity"
    ok = _check(policy, cert_der((CN, "D1"), serial=0x78), b"D1")
    assert ok.refusal is None


def test_identity_mode_checks_compare_with_the_policys_mapping():
    policy = _policy(b"users: {}\nidentity:\n  source: san-dns\n  check_expiry: false\n")
    der = cert_der((CN, "cn-name"), sans=(x509.DNSName("dev.example"),))
    assert _check(policy, der, b"dev.example", mode=pb.IDENTITY_MODE_DAEMON).refusal is None
    assert _check(policy, der, b"cn-name", mode=pb.IDENTITY_MODE_DAEMON).refusal.kind == "mismatch"
    assert _check(policy, der, b"cn-name").refusal is None  # broker mode: Mosquitto's CN


def test_checks_without_a_certificate():
    good = hash_password(b"pw", iterations=1000)
    policy = _policy(f'passwords:\n  alice: "{good}"\n'.encode())
    assert _check(policy, b"", b"alice", provenance=pb.PROVENANCE_PASSWORD).refusal is None
    assert _check(policy, b"", b"bob", provenance=pb.PROVENANCE_PASSWORD).refusal.kind == "password"
    assert _check(policy, b"", b"bob", provenance=pb.PROVENANCE_BROKER).attributes == {}
    assert _check(policy, b"", b"bob", provenance=pb.PROVENANCE_UNKNOWN).attributes == {}


def test_certificate_parsing_is_cached_and_bounded():
    from policyd.identity import certificate
    der = cert_der((CN, "cached"))
    certificate.read_certificate(der)
    before = certificate.read_certificate.cache_info().hits
    certificate.read_certificate(der)
    assert certificate.read_certificate.cache_info().hits == before + 1
    assert certificate.read_certificate.cache_info().maxsize == certificate.PARSED_CERTIFICATES_CACHED


class _Store:
    def __init__(self, policy):
        self.current = policy


class _Counters:
    def __init__(self):
        self.keys: list[str] = []
        self._lock = threading.Lock()

    def add(self, key):
        with self._lock:
            self.keys.append(key)


def _authenticator(rules: bytes = b"users: {}\n"):
    policy = compile_policy(parse_text(rules)).with_generation(7)
    counters = _Counters()
    return Authenticator(_Store(policy), counters), counters


def test_authenticate_allows_with_identity_and_attributes():
    auth, counters = _authenticator()
    der = cert_der((CN, "D1"), (OU, "sensors"), days=(-1, 3650))
    answer = auth.authenticate(pb.AuthenticateRequest(client_id=b"c1", certificate_der=der))
    assert answer.result == pb.RESULT_ALLOW and answer.username == b"D1" and answer.generation == 7
    assert ("OU", "sensors") in {(a.name, a.value) for a in answer.attributes}
    assert counters.keys == ["auth.allow"]


def test_authenticate_denies_with_reason_and_counts_by_kind(caplog):
    auth, counters = _authenticator()
    answer = auth.authenticate(pb.AuthenticateRequest(client_id=b"c\x00\xff", certificate_der=cert_der((CN, "#"), days=(-1, 3650))))
    assert answer.result == pb.RESULT_DENY and answer.username == b""
    assert "contains '#'" in answer.reason
    assert counters.keys == ["auth.deny.unsafe-identity"]
    assert "c\\x00\\xff" in caplog.text  # client text escaped in the log


def test_authenticate_denies_when_something_breaks():
    auth, counters = _authenticator()
    auth.store = _Store(object())  # a policy without identity settings
    answer = auth.authenticate(pb.AuthenticateRequest(certificate_der=cert_der((CN, "x"))))
    assert answer.result == pb.RESULT_DENY and counters.keys == ["auth.error"]


# --- password clients ------------------------------------------------------------

from policyd.identity.passwords import hash_password, parse_hash, verify  # noqa: E402


def test_password_hash_round_trip_and_constant_shape():
    text = hash_password(b"pw", iterations=1000)
    stored = parse_hash(text)
    assert stored.matches(b"pw") and not stored.matches(b"pW")
    assert "pw" not in repr(stored) and stored.digest.hex() not in repr(stored)
    assert hash_password(b"pw", iterations=1000) != text  # salted


@pytest.mark.parametrize("text, why", [
    ("md5$1$a$b", "expected pbkdf2-sha256$"),
    ("pbkdf2-sha256$10$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA", "iterations must be"),
    ("pbkdf2-sha256$1000$!!$AAAA", "base64"),
    ("pbkdf2-sha256$1000$AA$AAAA", "too short"),
])
def test_bad_password_hashes_are_explained(text, why):
    assert why in parse_hash(text)


def test_verify_refuses_unknown_users_and_wrong_passwords():
    users = {"alice": parse_hash(hash_password(b"pw", iterations=1000))}
    assert verify(users, "alice", b"pw")
    assert not verify(users, "alice", b"nope")
    assert not verify(users, "mallory", b"pw")


def test_passwords_section_is_validated_without_echoing_the_value():
    good = hash_password(b"pw", iterations=1000)
    policy = compile_policy(parse_text(f'passwords:\n  alice: "{good}"\n'.encode()))
    assert policy.identity.passwords["alice"].matches(b"pw")
    with pytest.raises(PolicyLoadError) as info:
        parse_text(b'passwords:\n  "a/b": "x"\n  bob: "plaintext-secret"\n', "rules.yaml")
    shown = [str(p) for p in info.value.problems]
    assert any("contains '/'" in s for s in shown)
    assert any("passwords.bob" in s and "expected pbkdf2-sha256$" in s for s in shown)
    assert not any("plaintext-secret" in s for s in shown)


def test_authenticate_password_client():
    good = hash_password(b"pw", iterations=1000)
    auth, counters = _authenticator(f'passwords:\n  alice: "{good}"\n'.encode())
    ok = auth.authenticate(pb.AuthenticateRequest(has_username=True, username=b"alice",
                                                  has_password=True, password=b"pw"))
    assert ok.result == pb.RESULT_ALLOW and ok.username == b"alice"
    bad = auth.authenticate(pb.AuthenticateRequest(has_username=True, username=b"alice\xff",
                                                   has_password=True, password=b"pw"))
    assert bad.result == pb.RESULT_DENY and bad.reason == "unknown username or wrong password"
    assert counters.keys == ["auth.allow", "auth.deny.password"]


def test_policyd_passwd_prints_an_entry_the_loader_accepts(monkeypatch, capsys):
    import io

    from policyd.cli import main

    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret\n"))
    assert main(["passwd", "alice", "--iterations", "1000"]) == 0
    line = capsys.readouterr().out
    assert "s3cret" not in line
    policy = compile_policy(parse_text(f"passwords:\n  {line}".encode()))
    assert policy.identity.passwords["alice"].matches(b"s3cret")
    assert main(["passwd", "a#b"]) == 2


def test_connect_answers_are_exported_as_metrics():
    from policyd.server.metrics import DaemonCollector
    from policyd.server.service import Counters

    counters = Counters()
    policy = compile_policy(parse_text(b"users: {}\n"))
    auth = Authenticator(_Store(policy), counters)
    auth.authenticate(pb.AuthenticateRequest(certificate_der=cert_der((CN, "ok"), days=(-1, 3650))))
    auth.authenticate(pb.AuthenticateRequest(certificate_der=cert_der((CN, "a/b"), days=(-1, 3650))))
    samples = {(s.labels["result"], s.labels["reason"]): s.value
               for family in DaemonCollector._decisions(counters.snapshot()) if family.name == "policyd_connects"
               for s in family.samples}
    assert samples[("allow", "")] == 1 and samples[("deny", "unsafe-identity")] == 1


def test_reload_kicks_changed_passwords():
    keep, drop = hash_password(b"k", iterations=1000), hash_password(b"d", iterations=1000)
    old = compile_policy(parse_text(f'passwords:\n  keep: "{keep}"\n  drop: "{drop}"\n  moved: "{drop}"\n'.encode()))
    new_hash = hash_password(b"new", iterations=1000)
    new = compile_policy(parse_text(f'passwords:\n  keep: "{keep}"\n  moved: "{new_hash}"\n'
                                    f'revoked:\n  serials: ["0x77"]\n'.encode()))
    assert password_kicks(old, new) == {"drop", "moved"}
    assert password_kicks(new, new) == frozenset()


def test_empty_sections_are_allowed():
    policy = compile_policy(parse_text(b"identity:\nrevoked:\npasswords:\nusers: {}\n"))
    assert policy.identity == IdentityPolicy()


def test_template_fields_holding_the_separator_are_refused_so_identities_stay_unique():
    O = NameOID.ORGANIZATION_NAME
    policy = source("template", "{O}-{CN}")
    assert ident(cert_der((O, "acme"), (CN, "sensor1")), policy).username == "acme-sensor1"
    assert "separator" in refusal(cert_der((O, "acme"), (CN, "labs-sensor1")), policy)
    assert "separator" in refusal(cert_der((O, "acme-labs"), (CN, "sensor1")), policy)


def test_templates_without_separators_and_bad_client_id_forms_are_refused_at_load():
    with pytest.raises(PolicyLoadError) as info:
        parse_text(b"identity:\n  source: template\n  template: '{O}{CN}'\n", "rules.yaml")
    assert "separated by text" in str(info.value.problems[0])
    with pytest.raises(PolicyLoadError) as info:
        parse_text(b"identity:\n  client_id: ['fixed', '%u*x', '%u/#']\n", "rules.yaml")
    shown = [str(p) for p in info.value.problems]
    assert len(shown) == 3 and all("identity.client_id[" in p for p in shown)


def test_client_id_binding_is_enforced_at_connect_and_on_every_check():
    from policyd.engine import Access, Request
    policy = compile_policy(parse_text(b"identity:\n  client_id: ['%u', '%u-*']\n  check_expiry: false\n"
                                       b"patterns:\n  - {topic: 'd/%u/#', access: readwrite}\n"))
    auth = Authenticator(_Store(policy), _Counters())
    der = cert_der((CN, "D1"))
    assert auth.authenticate(pb.AuthenticateRequest(client_id=b"D1", certificate_der=der)).result == pb.RESULT_ALLOW
    assert auth.authenticate(pb.AuthenticateRequest(client_id=b"D1-x", certificate_der=der)).result == pb.RESULT_ALLOW
    taken = auth.authenticate(pb.AuthenticateRequest(client_id=b"D2", certificate_der=der))
    assert taken.result == pb.RESULT_DENY and "identity.client_id" in taken.reason
    ok = policy.decide(Request("D1", "D1-a", "d/D1/x", Access.WRITE))
    other = policy.decide(Request("D1", "D123", "d/D1/x", Access.WRITE))
    assert ok.allowed and not other.allowed and other.ends_session and not ok.ends_session


def test_a_prefix_binding_refuses_identities_holding_its_separator_and_anonymous_clients():
    from policyd.engine import Access, Request
    policy = compile_policy(parse_text(b"identity:\n  client_id: ['%u', '%u:*']\n"
                                       b"patterns:\n  - {topic: 'd/%u/#', access: readwrite}\n"
                                       b"anonymous:\n  - {topic: 'public/#', access: readwrite}\n"))
    # `Pump` using `Pump:1` would take identity `Pump:1`'s own id: identities with ':' are refused.
    assert policy.decide(Request("Pump", "Pump:1", "d/Pump/x", Access.WRITE)).allowed
    squat = policy.decide(Request("Pump:1", "Pump:1", "d/Pump:1/x", Access.WRITE))
    assert not squat.allowed and squat.ends_session and "separator" in squat.reason
    anonymous = policy.decide(Request(None, "Pump", "public/x", Access.WRITE))
    assert not anonymous.allowed and anonymous.ends_session
    unbound = compile_policy(parse_text(b"anonymous:\n  - {topic: 'public/#', access: readwrite}\n"))
    assert unbound.decide(Request(None, "Pump", "public/x", Access.WRITE)).allowed


def test_client_id_forms_other_than_identity_or_identity_separator_star_are_refused():
    for form in ("%u*", "x-%u", "%u-a", "%u--*", "%u *"):
        with pytest.raises(PolicyLoadError):
            parse_text(f"identity:\n  client_id: ['{form}']\n".encode(), "rules.yaml")
    parse_text(b"identity:\n  client_id: ['%u', '%u:*', '%u-*']\n", "rules.yaml")


# --- scopes at CONNECT ------------------------------------------------------------

SCOPED_RULES = b"""\
identity:
  check_expiry: false
superusers: [admin]
certificates:
  sensors:
    match: {OU: sensors}
    rules:
      - {topic: sensors/%u/#, access: readwrite}
patterns:
  - {topic: /device/%u/#, access: readwrite}
  - {topic: /device/%u/secret, access: deny}
"""


class _Peer:
    def peer(self):
        return "unix:"


def _service(rules: bytes = SCOPED_RULES, ttl_ms: int = 5000):
    from policyd.server.service import PolicyService
    return PolicyService(_Store(compile_policy(parse_text(rules)).with_generation(3)), ttl_ms)


def _connect(service, der: bytes, want_scopes: bool = True):
    return service.Authenticate(pb.AuthenticateRequest(client_id=b"c1", certificate_der=der,
                                                       want_scopes=want_scopes), _Peer())


@pytest.mark.parametrize("subject", [((CN, "D1"), (OU, "sensors")), ((CN, "D2"),), ((CN, "admin"),)])
def test_scopes_at_connect_are_what_the_first_check_would_bring(subject):
    service = _service()
    der = cert_der(*subject)
    answer = _connect(service, der)
    first = service._check(pb.CheckAclRequest(  # noqa: SLF001
        has_username=True, username=answer.username, client_id=b"c1", topic=b"/device/x", access=pb.ACCESS_WRITE,
        provenance=pb.PROVENANCE_CERTIFICATE, certificate_der=der, identity_mode=pb.IDENTITY_MODE_DAEMON,
        want_scopes=True))
    assert answer.result == pb.RESULT_ALLOW and answer.scopes
    assert list(answer.scopes) == list(first.more_scopes)
    assert answer.cache_ttl_ms == 5000 and answer.generation == first.generation == 3


def test_scopes_at_connect_follow_the_certificates_attributes():
    sensor = {(g.access, g.scope) for g in _connect(_service(), cert_der((CN, "D1"), (OU, "sensors"))).scopes}
    plain = {(g.access, g.scope) for g in _connect(_service(), cert_der((CN, "D1"))).scopes}
    assert (pb.ACCESS_WRITE, b"sensors/D1/#") in sensor and (pb.ACCESS_SUBSCRIBE, b"sensors/D1/#") in sensor
    assert not any(scope.startswith(b"sensors/") for _, scope in plain)
    assert (pb.ACCESS_SUBSCRIBE, b"/device/D1/#") in plain   # allowed; each delivery is checked
    assert (pb.ACCESS_READ, b"/device/D1/#") not in plain     # the deny cuts into it: no scope


def test_no_scopes_at_connect_unless_asked_cached_and_allowed():
    der = cert_der((CN, "D1"))
    assert not _connect(_service(), der, want_scopes=False).scopes
    assert not _connect(_service(ttl_ms=0), der).scopes          # the daemon's answers are not cached
    dry = _service()
    dry.dry_run = True
    assert not _connect(dry, der).scopes                         # a dry run's answers are not the policy's
    revoked = _service(SCOPED_RULES + b'revoked:\n  serials: ["0x1f3a"]\n')
    answer = _connect(revoked, der)
    assert answer.result == pb.RESULT_DENY and not answer.scopes and not answer.cache_ttl_ms


def test_scopes_at_connect_never_come_from_a_policy_retired_while_they_were_worked_out():
    """A reload retires the policy between Authenticate's check that it is in force and the scopes:
    its tables are emptied a chunk at a time, so D1 (its own deny) looks like a client only the
    patterns apply to, and the stand-in memo (a store that checked `retired` just before the
    retirement cleared it) answers with the patterns' scopes, the deny left out."""
    service = _service(SCOPED_RULES + b"users:\n  D1:\n    - {topic: /device/D1/#, access: deny}\n")
    policy = service.store.current
    assert _connect(service, cert_der((CN, "D2"))).scopes   # a stranger fills the stand-in memo
    memo, stages = dict(policy.scope_memo), policy.stages

    def stages_during_a_reload(ident, attributes=None):
        for _ in policy.retire():
            pass
        policy.scope_memo.update(memo)
        return stages(ident, attributes)

    object.__setattr__(policy, "stages", stages_during_a_reload)
    answer = _connect(service, cert_der((CN, "D1")))
    assert not [g.scope for g in answer.scopes if g.scope.startswith(b"/device/D1")], list(answer.scopes)
