"""Certificate identity at CONNECT, with the real stack (issue 6, docs/identity.md).

Mosquitto with `use_identity_as_username false`, `require_certificate true`
and `auth_opt_policyd_identity cert`: every CONNECT goes to policyd's
Authenticate with the client's certificate. The broker's cafile trusts two
CAs; the rules pin the first (`identity.issuers`), so a certificate of the
second passes TLS and must be refused by policyd. Certificates with hostile
or missing names are issued here with `cryptography` directly (`policyd
certs` refuses to make them).
"""

from __future__ import annotations

import datetime as dt
import json
import queue
import re
import shutil
import ssl
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from harness import (Broker, BrokerConfig, Device, Pki, PolicyDaemon, free_port, make_workdir, password_listener,
                     run_policyd, wait_for)

from policyd.identity.passwords import hash_password

NOT_AUTHORIZED = 0x87
IDENTITY_MODE = BrokerConfig(use_identity_as_username=False, extra="auth_opt_policyd_identity cert")

RULES = """\
identity:
  source: cn
  issuers: [{ca}]
revoked:
  serials: ["{revoked_serial:x}"]
certificates:
  sensors:
    match: {{OU: sensors}}
    rules:
      - topic: sensors/%u/#
        access: write
passwords:
  alice: "{alice_hash}"
patterns:
  - topic: /device/%u/#
    access: readwrite
"""
ALICE_PASSWORD = "correct horse battery staple"


class Issuer:
    """Signs device certificates with a CA's key, any subject, any validity."""

    def __init__(self, directory):
        self.dir = directory
        self.cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
        self.key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)

    def issue(self, name: str, subject: list[tuple], days=(-1, 30), serial: int | None = None):
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(oid, value) for oid, value in subject]))
                .issuer_name(self.cert.subject).public_key(key.public_key())
                .serial_number(serial or x509.random_serial_number())
                .not_valid_before(now + dt.timedelta(days=days[0]))
                .not_valid_after(now + dt.timedelta(days=days[1]))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .sign(self.key, hashes.SHA256()))
        cert_path, key_path = self.dir / f"{name}.pem", self.dir / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return cert, cert_path, key_path


def cn(value: str) -> list[tuple]:
    return [(NameOID.COMMON_NAME, value)]


@pytest.fixture(scope="module")
def stack():
    work = make_workdir()
    pki = Pki(work / "pki").issue_base()
    other = work / "other-ca"
    run_policyd("certs", "ca", "--dir", str(other), "--cn", "Another CA")
    issuer, stranger = Issuer(pki.dir), Issuer(other)
    revoked, _, _ = issuer.issue("Revoked", cn("Revoked"))
    bundle = pki.dir / "trusted-cas.pem"  # the broker trusts both CAs; the rules pin only ours
    bundle.write_bytes(pki.ca.read_bytes() + (other / "ca.pem").read_bytes())
    pinned_ca = pki.ca
    pki.ca = bundle
    alice_hash = hash_password(ALICE_PASSWORD.encode(), iterations=2000)
    daemon = PolicyDaemon(work, RULES.format(ca=pinned_ca, revoked_serial=revoked.serial_number,
                                             alice_hash=alice_hash),
                          "--decision-log", str(work / "decisions.jsonl")).start()
    password_port = free_port()  # a second listener: TLS without client certificates
    config = BrokerConfig(use_identity_as_username=False,
                          extra="auth_opt_policyd_identity cert\n" + password_listener(pki, password_port))
    broker = Broker(work, pki, daemon, config).start()
    yield dict(work=work, pki=pki, issuer=issuer, stranger=stranger, daemon=daemon, broker=broker,
               pinned_ca=pinned_ca, password_port=password_port)
    broker.stop()
    daemon.stop()
    shutil.rmtree(work, ignore_errors=True)


def device(stack, name: str, cert=None, key=None, username: str | None = None) -> Device:
    dev = Device(stack["broker"], name, client_id=f"{name}-client", cert=cert, key=key)
    if username is not None:
        dev.client.username_pw_set(username, "not-a-real-password")
    return dev


def refused_at_connect(dev: Device) -> str:
    with pytest.raises(ConnectionError) as info:
        dev.connect()
    dev.close()
    return str(info.value)


def test_good_device_is_confined_to_its_own_topics(stack):
    dev = device(stack, "Device123").connect()
    try:
        assert dev.publish("/device/Device123/telemetry", "ok") == 0
        assert dev.publish("/device/Device999/telemetry", "no") == NOT_AUTHORIZED
    finally:
        dev.close()


def checks_asked(stack, client_id: str) -> list[dict]:
    """The daemon's CheckAcl decisions for one client (its decision log)."""
    log = stack["work"] / "decisions.jsonl"
    lines = log.read_text().splitlines() if log.exists() else []
    return [e for line in lines if (e := json.loads(line)).get("client_id") == client_id]


def test_a_device_s_first_checks_are_answered_at_connect(stack):
    """Authenticate brings what the device's first check would have: subscribing to its own subtree,
    publishing into it and receiving from it need no call on the broker's thread. Anything
    else is still asked."""
    dev = device(stack, "Device126").connect()
    try:
        assert dev.subscribe("/device/Device126/#") == 1
        assert dev.publish("/device/Device126/t", "ok") == 0
        assert dev.next_message() == ("/device/Device126/t", b"ok")
        assert checks_asked(stack, "Device126-client") == []
        assert dev.publish("/device/Device999/t", "no") == NOT_AUTHORIZED
        asked = wait_for(lambda: checks_asked(stack, "Device126-client"), 5, "the decision log")
        assert [(e["access"], e["topic"], e["result"]) for e in asked] == [("write", "/device/Device999/t", "deny")]
    finally:
        dev.close()


def test_username_in_connect_is_replaced_by_the_certificate_identity(stack):
    """A device cannot claim another identity by sending it as username."""
    dev = device(stack, "Device124", username="Device999").connect()
    try:
        assert dev.publish("/device/Device999/telemetry", "spoof") == NOT_AUTHORIZED
        assert dev.publish("/device/Device124/telemetry", "ok") == 0
    finally:
        dev.close()


def test_certificate_attributes_reach_the_rules(stack):
    _, cert, key = stack["issuer"].issue("Sensor1", [(NameOID.COMMON_NAME, "Sensor1"),
                                                     (NameOID.ORGANIZATIONAL_UNIT_NAME, "sensors")])
    sensor = device(stack, "Sensor1", cert, key).connect()
    plain = device(stack, "Device125").connect()
    try:
        assert sensor.publish("sensors/Sensor1/t", "1") == 0
        assert plain.publish("sensors/Device125/t", "1") == NOT_AUTHORIZED
    finally:
        sensor.close()
        plain.close()


@pytest.mark.parametrize("name, subject, reason", [
    ("hash", cn("#"), "contains '#'"),
    ("slash", cn("a/b"), "contains '/'"),
    ("plus", cn("dev+1"), "contains '+'"),
    ("no-cn", [(NameOID.ORGANIZATION_NAME, "Acme")], "certificate has no CN"),
    ("two-cns", cn("One") + cn("Two"), "2 CN values"),
])
def test_unusable_identities_are_refused_at_connect(stack, name, subject, reason):
    _, cert, key = stack["issuer"].issue(name, subject)
    time.sleep(1.1)  # policyd logs one refusal of each kind per second
    assert "Not authorized" in refused_at_connect(device(stack, name, cert, key))
    wait_for(lambda: reason in stack["daemon"].log(), 5, f"policyd logging {reason!r}")


def test_revoked_serial_is_refused_at_connect(stack):
    cert, key = stack["pki"].dir / "Revoked.pem", stack["pki"].dir / "Revoked.key"
    assert "Not authorized" in refused_at_connect(device(stack, "Revoked", cert, key))
    wait_for(lambda: "is revoked" in stack["daemon"].log(), 5, "policyd logging the revocation")


def test_certificate_of_another_ca_is_refused_at_connect(stack):
    """Trusted by the broker's cafile, but not the issuer the rules pin."""
    _, cert, key = stack["stranger"].issue("Stranger", cn("Stranger"))
    assert "Not authorized" in refused_at_connect(device(stack, "Stranger", cert, key))
    wait_for(lambda: "not a pinned issuer" in stack["daemon"].log(), 5, "policyd logging the issuer")


def test_expired_certificate_never_gets_in(stack):
    """The broker's TLS stack already refuses it in the handshake, before CONNECT;
    policyd's own expiry check (tests/unit/test_identity_mapping.py) is defence in depth."""
    _, cert, key = stack["issuer"].issue("Expired", cn("Expired"), days=(-30, -1))
    dev = device(stack, "Expired", cert, key)
    # TLS 1.3: the client's side of the handshake completes, then the broker's
    # alert closes the connection, so there is either an error or no CONNACK.
    with pytest.raises((ConnectionError, ssl.SSLError, OSError, queue.Empty)):
        dev.connect(timeout=3)
    dev.close()
    assert "Expired" not in stack["daemon"].log()  # it never reached CONNECT


def test_revoking_a_live_certificate_disconnects_it(stack):
    issued, cert, key = stack["issuer"].issue("Live1", cn("Live1"))
    live = device(stack, "Live1", cert, key).connect()
    bystander = device(stack, "Device126").connect()
    daemon = stack["daemon"]
    try:
        assert live.publish("/device/Live1/t", "before") == 0
        rules = daemon.rules.read_text()
        daemon.rules.write_text(rules.replace('serials: ["', f'serials: ["{issued.serial_number:x}", "'))
        run_policyd("reload", "--address", daemon.admin_address)
        live.disconnects.get(timeout=10)
        assert "Not authorized" in refused_at_connect(device(stack, "Live1", cert, key))
        assert bystander.disconnects.empty()
        assert bystander.publish("/device/Device126/t", "still here") == 0
    finally:
        live.close()
        bystander.close()


def test_connect_is_refused_while_policyd_is_unreachable(stack):
    """Fail closed: a broker in identity mode whose daemon does not answer lets nobody in."""
    work = make_workdir()

    class Nowhere:
        address = f"unix:{work}/absent.sock"

    broker = Broker(work, stack["pki"], Nowhere(), IDENTITY_MODE).start()
    try:
        dev = Device(broker, "Device123", client_id="Device123-nowhere")
        # Refused as retryable: no CONNACK at all (2.0: closed; 2.1: left waiting), never "not authorized".
        with pytest.raises((queue.Empty, ConnectionError)) as refused:
            dev.connect(timeout=3)
        dev.close()
        assert "Not authorized" not in str(refused.value)
    finally:
        broker.stop()  # mosquitto's stdout log is complete once it has exited
    log = broker.log()
    shutil.rmtree(work, ignore_errors=True)
    assert "CONNECT of client 'Device123-nowhere' refused as retryable: no answer from policyd (unavailable" in log
    assert re.search(r"identity: connects allowed=0 denied=0 rejected=0 .*errors: unavailable=[1-9]", log)


def test_a_misspelt_identity_mode_stops_the_broker(stack):
    """`auth_opt_policyd_identity` takes off|cert; anything else must not run with a default."""
    work = make_workdir()
    broker = Broker(work, stack["pki"], stack["daemon"],
                    BrokerConfig(use_identity_as_username=False, extra="auth_opt_policyd_identity certificate"))
    try:
        with pytest.raises(RuntimeError):
            broker.start()
        assert "invalid auth_opt_policyd_identity 'certificate'" in broker.log()
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)


class PasswordClient(Device):
    """A paho client on the password listener: server-verified TLS, no client certificate."""

    def __init__(self, stack, username: str | None, password: str | None):
        import paho.mqtt.client as mqtt

        super().__init__(stack["broker"], "Device123", client_id=f"pw-{username}")  # replaced below
        self.cn = f"password client {username}"
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pw-{username}",
                                  protocol=mqtt.MQTTv5)
        self.client.tls_set(ca_certs=str(stack["pki"].ca))
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = lambda c, u, flags, rc, props: self._connected.put(rc)
        self.client.on_disconnect = lambda c, u, flags, rc, props: self.disconnects.put(rc)
        self.client.on_publish = lambda c, u, mid, rc, props: self._ack(mid).put(rc)
        self.port = stack["password_port"]

    def connect(self, timeout: float = 10) -> "PasswordClient":
        self.client.connect("127.0.0.1", self.port, keepalive=30)
        self.client.loop_start()
        rc = self._connected.get(timeout=timeout)
        if rc.is_failure:
            raise ConnectionError(f"{self.cn}: CONNACK {rc}")
        return self


def test_password_client_and_certificate_client_coexist(stack):
    alice = PasswordClient(stack, "alice", ALICE_PASSWORD).connect()
    device_client = device(stack, "Device127").connect()
    try:
        assert alice.publish("/device/alice/t", "hi") == 0
        assert alice.publish("/device/Device127/t", "no") == NOT_AUTHORIZED
        assert device_client.publish("/device/Device127/t", "hi") == 0
    finally:
        alice.close()
        device_client.close()


@pytest.mark.parametrize("username, password", [
    ("alice", "wrong"),
    ("mallory", ALICE_PASSWORD),   # unknown user: the same refusal
    ("alice", None),               # no password: refused by the shim, never asked
    (None, None),
])
def test_bad_passwords_are_refused_and_never_logged(stack, username, password):
    time.sleep(1.1)  # policyd logs one refusal of each kind per second
    assert "Not authorized" in refused_at_connect(PasswordClient(stack, username, password))
    log = stack["daemon"].log()
    if password is not None:
        wait_for(lambda: f"pw-{username}' from '127.0.0.1': unknown username or wrong password"
                 in stack["daemon"].log(), 5, "policyd logging the refusal")
    assert ALICE_PASSWORD not in log and "wrong'" not in log


def test_removing_a_password_client_disconnects_it(stack):
    """Runs last: it takes alice out of the module's rules file."""
    alice = PasswordClient(stack, "alice", ALICE_PASSWORD).connect()
    daemon = stack["daemon"]
    try:
        assert alice.publish("/device/alice/t", "before") == 0
        rules = daemon.rules.read_text()
        daemon.rules.write_text("\n".join(line for line in rules.splitlines() if "alice:" not in line) + "\n")
        run_policyd("reload", "--address", daemon.admin_address)
        alice.disconnects.get(timeout=10)
        assert "Not authorized" in refused_at_connect(PasswordClient(stack, "alice", ALICE_PASSWORD))
    finally:
        alice.close()
