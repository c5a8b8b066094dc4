"""The seed scenario (shared/seed/mosquitto-certificates-acl.md) through every real layer.

A TLS listener with require_certificate and use_identity_as_username: each
device's certificate CN is its username, and `/device/%u/#` keeps it in its
own subtree — decided by policyd through the plugin, not by acl_file.
"""

from __future__ import annotations

import subprocess

import pytest

NOT_AUTHORIZED = 0x87
NOTHING_WAIT_S = 1.0  # how long we watch for a message that must not arrive


def test_device_publishes_and_receives_in_its_own_subtree(devices):
    dev = devices("Device123")
    assert dev.subscribe("/device/Device123/#") == 1
    assert dev.publish("/device/Device123/temperature", b"22.5") == 0
    assert dev.next_message() == ("/device/Device123/temperature", b"22.5")


def test_device_cannot_publish_into_another_subtree(devices):
    owner = devices("Device123")
    watcher = devices("admin")
    intruder = devices("Device999")
    assert owner.subscribe("/device/Device123/#") == 1
    assert watcher.subscribe("#") == 1

    assert intruder.publish("/device/Device123/temperature", b"spoofed") == NOT_AUTHORIZED
    assert owner.received(NOTHING_WAIT_S) == []
    assert watcher.received(0) == []

    # Control: the same observers do see a legitimate message, so silence above means denial.
    assert owner.publish("/device/Device123/temperature", b"real") == 0
    assert owner.next_message() == ("/device/Device123/temperature", b"real")
    assert watcher.next_message() == ("/device/Device123/temperature", b"real")


@pytest.mark.parametrize("topic_filter", ["/device/Device123/#", "/device/Device123/temperature",
                                          "/device/+/temperature", "/device/#", "#"])
def test_device_cannot_read_another_subtree(devices, topic_filter):
    intruder = devices("Device999")
    owner = devices("Device123")
    assert intruder.subscribe(topic_filter) == NOT_AUTHORIZED
    assert owner.publish("/device/Device123/temperature", b"private") == 0
    assert intruder.received(NOTHING_WAIT_S) == []


def test_device_subscribed_to_its_own_subtree_never_gets_another_devices_messages(devices):
    a, b = devices("Device123"), devices("Device999")
    assert b.subscribe("/device/Device999/#") == 1
    assert a.publish("/device/Device123/temperature", b"x") == 0
    assert b.publish("/device/Device999/temperature", b"mine") == 0
    assert b.received(NOTHING_WAIT_S) == [("/device/Device999/temperature", b"mine")]


def test_superuser_reads_everything(devices):
    admin = devices("admin")
    assert admin.subscribe("#") == 1
    for cn in ("Device123", "Device999"):
        assert devices(cn).publish(f"/device/{cn}/status", b"up") == 0
    got = sorted(t for t, _ in admin.received(NOTHING_WAIT_S))
    assert got == ["/device/Device123/status", "/device/Device999/status"]


@pytest.mark.parametrize("cn, topic", [("a/b", "/device/a/b/x"), ("#", "/device/x/y")])
def test_hostile_certificate_name_never_widens_access(broker, pki, devices, cn, topic):
    """A CN of `a/b` would expand /device/%u/# to /device/a/b/#; `#` to /device/#/#."""
    from policyd import certs

    name = {"a/b": "slash", "#": "hash"}[cn]
    pair = certs.issue_client(pki.dir, cn=cn, name=name, allow_unsafe_cn=True, force=True)
    hostile = devices(name, cert=pair.cert_path, key=pair.key_path)
    assert hostile.publish(topic, b"x") == NOT_AUTHORIZED
    # ... and such a certificate's connection is ended: it never gets a second try.
    assert hostile.disconnects.get(timeout=5) is not None
    again = devices(name, cert=pair.cert_path, key=pair.key_path)
    assert again.subscribe("/device/#") == NOT_AUTHORIZED


def test_seed_mosquitto_pub_command_is_allowed_and_delivered(broker, devices):
    watcher = devices("admin")
    assert watcher.subscribe("/device/#") == 1
    # The seed's own command line (its --insecure only skips the hostname check).
    proc = subprocess.run(["mosquitto_pub", *broker.cli_tls_args("Device123"),
                           "-t", "/device/Device123/", "-m", "22.5", "--insecure", "-d"],
                          capture_output=True, text=True, timeout=20)
    assert proc.returncode == 0, proc.stderr
    assert watcher.next_message() == ("/device/Device123/", b"22.5")


def test_seed_mosquitto_pub_into_another_subtree_is_refused(broker, devices):
    watcher = devices("admin")
    assert watcher.subscribe("/device/#") == 1
    proc = subprocess.run(["mosquitto_pub", *broker.cli_tls_args("Device999"), "-V", "mqttv5", "-q", "1",
                           "-t", "/device/Device123/", "-m", "22.5", "-d"],
                          capture_output=True, text=True, timeout=20)
    assert "PUBACK" in proc.stdout + proc.stderr and "135" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert watcher.received(NOTHING_WAIT_S) == []


def test_certificates_made_by_the_seeds_openssl_steps_work(broker, pki, devices, workdir):
    """The seed's openssl commands (made non-interactive with -subj) against our CA."""
    d = workdir / "openssl"
    d.mkdir(exist_ok=True)

    def sh(*cmd):
        subprocess.run(cmd, check=True, capture_output=True, cwd=d, timeout=60)

    # Our CA is EC; the seed's device steps sign with whatever CA key they are given.
    sh("openssl", "genrsa", "-out", "Device777.key", "2048")
    sh("openssl", "req", "-new", "-key", "Device777.key", "-out", "Device777.csr", "-subj", "/CN=Device777")
    sh("openssl", "x509", "-req", "-in", "Device777.csr", "-CA", str(pki.ca), "-CAkey", str(pki.dir / "ca.key"),
       "-CAcreateserial", "-out", "Device777.pem", "-days", "500", "-sha256")
    dev = devices("Device777", cert=d / "Device777.pem", key=d / "Device777.key")
    assert dev.subscribe("/device/Device777/#") == 1
    assert dev.publish("/device/Device777/t", b"1") == 0
    assert dev.next_message() == ("/device/Device777/t", b"1")
    assert dev.publish("/device/Device123/t", b"1") == NOT_AUTHORIZED


def test_openssl_s_client_handshake(broker, pki):
    """The seed's verification step: a TLS handshake with the device certificate."""
    cert, key = pki.device("Device123")
    proc = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{broker.port}",
                           "-CAfile", str(pki.ca), "-cert", str(cert), "-key", str(key),
                           "-verify_return_error", "-brief"],
                          input="", capture_output=True, text=True, timeout=20)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Verification: OK" in out, out


def test_client_without_certificate_is_refused(broker, pki):
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.tls_set(ca_certs=str(pki.ca))
    with pytest.raises(Exception):
        client.connect("127.0.0.1", broker.port)
        client.loop(timeout=2)
        client.loop(timeout=2)
        assert client.is_connected()
