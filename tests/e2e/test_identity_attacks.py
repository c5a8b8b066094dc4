"""Attacks on identity binding, revocation kicks and retained-source checks, on the real stack.

Each test reproduces one attack with a real mosquitto, the real plugin and a real policyd.
A numbered test FAILS while the hole it describes exists (report: /work/notes/12-attack.md);
the tests under "held" are attacks that failed, kept as guards.
"""

from __future__ import annotations

import queue
import signal
import time

import paho.mqtt.client as mqtt
import pytest
import socket

from harness import free_port, wait_for
from test_identity_binding import CN, NOT_AUTHORIZED, O, Stack, bound_stack, disconnected  # noqa: F401 - a fixture


def _plain(port: int, client_id: str, username: str | None = None, password: str | None = None):
    """An MQTT v5 client without a certificate on a plaintext listener; returns (client, rc)."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    if username is not None:
        client.username_pw_set(username, password)
    connected: queue.Queue = queue.Queue()
    acks: dict = {}
    client.on_connect = lambda c, u, flags, rc, props: connected.put(rc)
    client.on_publish = lambda c, u, mid, rc, props: acks.setdefault(mid, queue.Queue()).put(rc)
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    rc = connected.get(timeout=10)

    def publish(topic: str, payload: str = "x") -> int:
        info = client.publish(topic, payload, qos=1)
        deadline = time.monotonic() + 10
        while info.mid not in acks and time.monotonic() < deadline:
            time.sleep(0.01)
        code = acks[info.mid].get(timeout=1).value
        return 0 if code < 0x80 else code

    client.publish_checked = publish
    return client, rc


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _tail(log: str, needle: str, lines: int = 12) -> str:
    return "\n".join([line for line in log.splitlines() if needle in line][-lines:])


# --- 1. client id binding: "%u-*" of one identity is "%u" of another -----------------------

def test_a_prefix_binding_does_not_let_one_identity_take_another_identitys_client_id(bound_stack):
    """identity `Pump` may use `Pump-*`, which would be exactly identity `Pump-1`'s own client
    id: so while a `%u-*` form is on, an identity holding `-` is refused and cannot hold one."""
    s = bound_stack
    with pytest.raises(ConnectionError):
        s.device("Pump-1", [(CN, "Pump-1")], client_id="Pump-1").connect(timeout=5)
    owner = s.device("Pump", [(CN, "Pump")], client_id="Pump").connect()
    assert owner.subscribe("/device/Pump/#") == 1
    other = s.device("Pump2", [(CN, "Pump2")], client_id="Pump-1")
    with pytest.raises(ConnectionError):  # not Pump2's: neither `Pump2` nor `Pump2-…`
        other.connect(timeout=5)
    assert not disconnected(owner, timeout=0.5)


# --- 2. anonymous clients are not bound --------------------------------------------------

@pytest.fixture(scope="module")
def anonymous_stack():
    plain = free_port()
    s = Stack(extra_broker=f"listener {plain} 127.0.0.1\nallow_anonymous true\n",
              rules_extra="identity:\n  client_id: ['%u', '%u-*']\nanonymous:\n"
                          "  - topic: public/#\n    access: readwrite\n")
    s.plain_port = plain
    yield s
    s.close()


def test_an_anonymous_client_cannot_squat_a_bound_devices_client_id(anonymous_stack):
    """Broker mode + client id binding: a client with another identity's id gets nothing and is ended.
    An anonymous client with a device's id should not fare better than a certificate client."""
    s = anonymous_stack
    victim = s.device("Dev7", [(CN, "Dev7")], client_id="Dev7").connect()
    assert victim.publish("/device/Dev7/t", "x") == 0
    squatter, rc = _plain(s.plain_port, "Dev7")
    try:
        assert not rc.is_failure
        assert disconnected(victim, timeout=2), "mosquitto's takeover did not happen (test premise)"
        code = squatter.publish_checked("public/hello")
        assert code == NOT_AUTHORIZED, "an anonymous client holding a bound device's client id was allowed"
    finally:
        squatter.disconnect()
        squatter.loop_stop()


# --- 3. retained messages after their publisher disconnects ------------------------------

@pytest.fixture(scope="module")
def stack():
    s = Stack()
    yield s
    s.close()


def test_a_retained_message_of_an_allowed_publisher_survives_its_disconnect(stack):
    """check_retain_source true + UNKNOWN provenance: every `certificates` deny rule applies to an
    offline publisher. The quarantine rule (O=quarantine: deny '#') must not withhold the retained
    messages of every device that is not quarantined."""
    pub = stack.device("RetOk", [(CN, "RetOk")]).connect()
    pub.client.publish("/device/RetOk/state", "on", qos=1, retain=True).wait_for_publish(5)
    pub.close()
    time.sleep(0.3)
    reader = stack.device("admin", [(CN, "admin")], client_id="admin-retain-reader").connect()
    assert reader.subscribe("/device/RetOk/#") == 1
    got = reader.received(1.5)
    assert ("/device/RetOk/state", b"on") in got, (
        "a retained message of a publisher that may publish it was withheld once it disconnected\n"
        + _tail(stack.daemon.log(), "RetOk"))


def test_a_pending_kick_never_hits_the_legitimate_session_that_took_the_client_id(stack):
    """A revoked device's check is answered `disconnect` (its kick waits for the next tick, by
    client id); its replacement (new certificate, same CN and client id) takes the session over
    inside that window: the pending kick must not end the replacement."""
    old_serial = []
    for i in range(5):
        cid = f"swap-{i}"
        old = stack.device(f"SwapOld{i}", [(CN, f"Swap{i}")], client_id=cid)
        old.client._reconnect_on_failure = False  # a revoked device that retries would take it back
        old.connect()
        old_serial.append(f'"0x{old.serial:x}"')
    stack.rules(f"revoked:\n  serials: [{', '.join(old_serial)}]\n")
    try:
        for i in range(5):
            cid = f"swap-{i}"
            new = stack.device(f"SwapNew{i}", [(CN, f"Swap{i}")], client_id=cid)
            old = next(d for d in stack.opened if d.cn == f"SwapOld{i}")
            old.client.publish(f"/device/Swap{i}/x", "doomed", qos=0)  # answered: deny + disconnect
            time.sleep(0.005 * i)
            new.connect()
            try:
                reason = new.disconnects.get(timeout=1)
            except queue.Empty:
                reason = None
            assert reason is None, f"round {i}: the replacement session was ended ({reason})"
            assert new.publish(f"/device/Swap{i}/x", "1") == 0
            new.close()
    finally:
        stack.rules("")


def test_password_clients_survive_a_broker_sighup_with_their_access():
    """Broker mode: SIGHUP re-runs BASIC_AUTH for every client; a password client must keep working."""
    from policyd.identity.passwords import hash_password
    plain = free_port()
    s = Stack(extra_broker=f"listener {plain} 127.0.0.1\nallow_anonymous false\n",
              rules_extra=f'passwords:\n  gw7: "{hash_password(b"s3cret-pw", iterations=2000)}"\n')
    client = None
    try:
        wait_for(lambda: _port_open(plain), 10, "plain listener")
        client, rc = _plain(plain, "gw7-cid", "gw7", "s3cret-pw")
        assert not rc.is_failure, rc
        assert client.publish_checked("gw7/x") == 0
        gone: queue.Queue = queue.Queue()
        client.on_disconnect = lambda c, u, flags, rc, props: gone.put(rc)
        s.broker.proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert gone.empty(), "a password client was disconnected by a broker SIGHUP"
        assert client.publish_checked("gw7/y") == 0
        assert client.publish_checked("other/y") == NOT_AUTHORIZED
    finally:
        if client is not None:
            client.disconnect()
            client.loop_stop()
        s.close()


# --- 4. a revocation list larger than one Watch message -----------------------------------

def test_a_long_revocation_list_still_disconnects_the_revoked_session():
    """100,000 fingerprints (the most a rules file may hold; 130,000 made one Watch event larger
    than the plugin accepts, 4 MiB, and broke the stream for good) travel in chunks."""
    import os
    s = Stack()
    try:
        victim = s.device("LongRev", [(CN, "LongRev")], client_id="long-rev").connect()
        assert victim.publish("/device/LongRev/x", "1") == 0
        retired = "".join(f'    - "{os.urandom(32).hex()}"\n' for _ in range(99_999))
        s.rules(f'revoked:\n  serials: ["0x{victim.serial:x}"]\n  sha256:\n{retired}')
        assert disconnected(victim, timeout=20), (
            "the revoked session stayed connected: the broker never received the revocation list\n"
            + _tail(s.broker.log(), "policyd"))
    finally:
        s.close()


# --- 5. the will of a client that never made a check ---------------------------------------

def _vanish(dev) -> None:
    """Drop the connection without DISCONNECT, as a device losing power does: its will is sent."""
    dev.client.loop_stop()
    dev.client.socket().close()


@pytest.mark.parametrize("kind", ["quarantined", "revoked"])
def test_the_will_of_a_client_that_made_no_check_is_decided_with_its_certificate(stack, kind):
    """The plugin records a connection (and its certificate) at its first uncached check. A device
    that connects with a will and vanishes before any check has no record: its will is then checked
    as a client without a certificate (BROKER provenance), by username alone."""
    watcher = stack.device("admin", [(CN, "admin")], client_id=f"admin-will-{kind}").connect()
    assert watcher.subscribe("/device/#") == 1
    name = f"Will{kind.capitalize()}"
    subject = [(CN, name), (O, "quarantine")] if kind == "quarantined" else [(CN, name)]
    dev = stack.device(name, subject, client_id=f"{name}-c")
    if kind == "revoked":
        stack.rules(f'revoked:\n  serials: ["0x{dev.serial:x}"]\n')
    try:
        dev.client.will_set(f"/device/{name}/status", "gone", qos=1)
        dev.connect()
        _vanish(dev)
        got = watcher.received(3)
        assert all(topic != f"/device/{name}/status" for topic, _ in got), (
            f"the will of a {kind} device was published: {got}")
    finally:
        if kind == "revoked":
            stack.rules("")


def test_in_identity_mode_too_the_will_of_a_quarantined_client_without_a_check_is_refused(bound_stack):
    s = bound_stack
    watcher = s.device("admin", [(CN, "admin")], client_id="admin-will-watch").connect()
    assert watcher.subscribe("/device/#") == 1
    dev = s.device("WillQi", [(CN, "WillQi"), (O, "quarantine")], client_id="WillQi")
    dev.client.will_set("/device/WillQi/status", "gone", qos=1)
    dev.connect()
    _vanish(dev)
    got = watcher.received(3)
    assert all(topic != "/device/WillQi/status" for topic, _ in got), (
        f"identity mode: the will of a quarantined device was published: {got}")


# --- held: attacks that failed (kept as guards) -------------------------------------------

@pytest.mark.parametrize("name", ["admin ", "\uff41dmin", "a\u0064min\u200b", "ADMIN"])
def test_lookalikes_of_a_superuser_name_are_not_superusers(stack, name):
    dev = stack.device(f"Look{abs(hash(name))}", [(CN, name)], client_id=f"look-{abs(hash(name))}").connect()
    code = dev.publish("plant/secret", "x", timeout=5)
    assert code == NOT_AUTHORIZED or disconnected(dev, timeout=2), f"CN {name!r} acted as superuser 'admin'"


def test_a_revoked_superuser_certificate_gets_nothing(stack):
    root = stack.device("RevAdmin", [(CN, "admin")], client_id="admin-revoked").connect()
    assert root.publish("plant/secret", "x") == 0
    stack.rules(f'revoked:\n  serials: ["0x{root.serial:x}"]\n')
    try:
        assert disconnected(root, timeout=10), "a revoked superuser's session stayed connected"
    finally:
        stack.rules("")


def test_an_answer_for_a_retained_messages_publisher_is_never_served_to_its_live_connection(stack):
    """Mosquitto checks a retained message's publisher with a stand-in client (no connection, no
    certificate: provenance UNKNOWN), under the publisher's username and client id — the identity its
    live connection has too. An answer decided without the certificate (no `certificates` rule
    applies) must not be cached where the live, quarantined device would hit it."""
    before = stack.device("RetQ", [(CN, "RetQ")], client_id="RetQ").connect()
    before.client.publish("/device/RetQ/state", "on", qos=1, retain=True).wait_for_publish(5)
    before.close()
    time.sleep(0.3)
    reader = stack.device("admin", [(CN, "admin")], client_id="admin-retq-reader").connect()
    assert reader.subscribe("/device/RetQ/#") == 1
    assert ("/device/RetQ/state", b"on") in reader.received(1.5)   # the stand-in was asked: allowed
    quarantined = stack.device("RetQ2", [(CN, "RetQ"), (O, "quarantine")], client_id="RetQ").connect()
    assert quarantined.publish("/device/RetQ/state", "now quarantined") == NOT_AUTHORIZED, (
        "the quarantined device was served the answer decided for its retained message's stand-in")
