"""Attacks on the identity-mode CONNECT path (waiting CONNECTs on 2.1, SIGHUP re-authentication),
with the real broker, TLS, the real plugin, a real policyd and real clients.

Each test fails while the hole it names exists; the report is /work/notes/attack13-note.md.
"""

from __future__ import annotations

import queue
import re
import signal
import socket
import ssl
import struct
import time

import paho.mqtt.client as mqtt
import pytest
from harness import Broker, BrokerConfig, Device, PolicyDaemon, broker_version, wait_for

from policyd.identity.passwords import hash_password

from conftest import SEED_RULES
from test_connect_outage import IDENTITY as IDENTITY_CONFIG
from test_connect_outage import PASSWORD, PASSWORD_RULES, password_stack

V2_1 = broker_version() >= (2, 1, 0)
IDENTITY = IDENTITY_CONFIG.extra


def _utf8(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def _connect_packet(client_id: str, keepalive: int = 60) -> bytes:
    """An MQTT 3.1.1 CONNECT, clean session, no credentials."""
    body = _utf8("MQTT") + bytes([4, 0x02]) + struct.pack("!H", keepalive) + _utf8(client_id)
    return bytes([0x10, len(body)]) + body


def _held_connect(broker: Broker, device: str, client_id: str) -> ssl.SSLSocket:
    """A TLS connection with `device`'s certificate that sends CONNECT and then goes silent, as a
    device whose network vanished does (or a hostile one): it never closes, never reads."""
    cert, key = broker.pki.device(device)
    ctx = ssl.create_default_context(cafile=str(broker.pki.ca))
    ctx.load_cert_chain(str(cert), str(key))
    sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", broker.port), timeout=5),
                           server_hostname="localhost")
    sock.sendall(_connect_packet(client_id))
    return sock


def _closed_by_broker(sock: ssl.SSLSocket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        while True:
            data = sock.recv(64)
            if not data:
                return True
            if data[0] >> 4 == 2:       # a CONNACK: not closed, answered
                return False
    except (socket.timeout, TimeoutError):
        return False
    except (ssl.SSLError, OSError):
        return True


@pytest.mark.broker(min=(2, 1, 0))
def test_a_connect_left_waiting_does_not_lock_its_client_id_out_after_policyd_is_back(workdir, pki):
    """A CONNECT that got no answer within the retry window must not keep its client id: 2.1 refuses
    every later CONNECT with an id that still waits, and a connection whose peer vanished (or a
    hostile one) never closes by itself — no keepalive runs before CONNACK."""
    daemon = PolicyDaemon(workdir, SEED_RULES).start()
    broker = Broker(workdir, pki, daemon, BrokerConfig(use_identity_as_username=False, extra=IDENTITY)).start()
    held = None
    device = None
    try:
        daemon.stop()
        held = _held_connect(broker, "Dev1", "dev1")
        time.sleep(3.0)                       # past the 2 s window: no answer will ever come for it
        daemon.start()
        closed = _closed_by_broker(held, 3.0)
        device = Device(broker, "Dev1", client_id="dev1")
        try:
            device.connect(timeout=8)
            back = True
        except (ConnectionError, queue.Empty):
            back = False
    finally:
        if device:
            device.close()
        if held:
            held.close()
        broker.stop()
        daemon.stop()
    assert back, "the device stayed locked out: its earlier CONNECT still holds client id 'dev1'"
    assert closed, "a CONNECT given up on is still open (it holds its client id for as long as it stays)"


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _password_client(port: int, ca: str, password: str, clean: bool) -> tuple[mqtt.Client, queue.Queue]:
    wait_for(lambda: _port_open(port), 10, "the password listener")
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="meter7", protocol=mqtt.MQTTv5)
    client.tls_set(ca_certs=ca)
    client.username_pw_set("meter7", password)
    answers: queue.Queue = queue.Queue()
    client.on_connect = lambda c, u, flags, rc, props: answers.put(rc)
    props = mqtt.Properties(mqtt.PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    client.connect("127.0.0.1", port, keepalive=30, clean_start=clean, properties=props)
    client.loop_start()
    return client, answers


@pytest.mark.broker(min=(2, 1, 0))
def test_a_sighup_does_not_answer_a_waiting_connect_with_an_offline_sessions_password(workdir, pki):
    """A broker SIGHUP re-runs BASIC_AUTH for every session in its table, offline ones too, with the
    password each one connected with. Taken for a new CONNECT, the offline session's check would
    supersede a CONNECT waiting with the same client id (an attacker's, with a wrong password) and
    then complete it with the session's own, valid password."""
    daemon, broker, port = password_stack(workdir, pki)
    attacker = None
    try:
        owner, answers = _password_client(port, str(pki.ca), PASSWORD, clean=True)
        assert answers.get(timeout=10).value == 0
        owner.disconnect()                    # its session stays, offline, with its password
        owner.loop_stop()
        time.sleep(0.3)
        daemon.proc.send_signal(signal.SIGSTOP)
        attacker, got = _password_client(port, str(pki.ca), "a guess", clean=False)
        time.sleep(0.4)                       # the attacker's CONNECT waits, asked again and again
        broker.proc.send_signal(signal.SIGHUP)
        time.sleep(0.4)
        daemon.proc.send_signal(signal.SIGCONT)
        try:
            rc = got.get(timeout=4)
        except queue.Empty:
            rc = None
    finally:
        if daemon.proc:
            daemon.proc.send_signal(signal.SIGCONT)
        if attacker:
            attacker.disconnect()
            attacker.loop_stop()
        broker.stop()
        daemon.stop()
    assert rc is None or rc.is_failure, "a wrong password was let in with the offline session's password"
    stats = dict(re.findall(r"([a-z_]+)=(\d+)", [l for l in broker.log().splitlines() if "identity: connects" in l][-1]))
    assert int(stats["reauth_offline"]) >= 1, stats   # the SIGHUP did re-run BASIC_AUTH for the session


WILL_RULES = """\
identity:
  source: cn
  issuers: [{ca}]
superusers: [admin]
revoked:
  serials: [{serials}]
patterns:
  - {{topic: /device/%u/#, access: readwrite}}
"""


@pytest.mark.broker(min=(2, 1, 0))
@pytest.mark.parametrize("revoke", [False, True])
def test_a_sighup_keeps_the_certificate_a_pending_will_is_decided_with(workdir, pki, revoke):
    """A will with a delay is checked when the delay ends, with the certificate its device connected
    with (revoked meanwhile: refused). A SIGHUP during the delay re-runs BASIC_AUTH for the offline
    session, which has no connection and so no certificate: taken for a new CONNECT it is refused,
    and its will lost (or, were the refusal ignored, decided without the certificate). 2.0 cannot
    tell it from a CONNECT (no mosquitto_client()): there the SIGHUP refuses the offline session and
    the broker drops its will (docs/versions.md)."""
    from harness import run_policyd
    from test_broker_versions import abrupt_close
    from test_identity import Issuer, cn

    _, cert, key = Issuer(pki.dir).issue(f"Willer{int(revoke)}", cn("Willer"), serial=0x51CC + revoke)
    daemon = PolicyDaemon(workdir, WILL_RULES.format(ca=pki.ca, serials='"1"')).start()
    broker = Broker(workdir, pki, daemon, BrokerConfig(use_identity_as_username=False, extra=IDENTITY)).start()
    watcher = Device(broker, "admin", client_id="watcher").connect()
    try:
        assert watcher.subscribe("/device/Willer/#") == 1
        willer = Device(broker, "Willer", client_id="willer", cert=cert, key=key)
        will_props = mqtt.Properties(mqtt.PacketTypes.WILLMESSAGE)
        will_props.WillDelayInterval = 3
        willer.client.will_set("/device/Willer/status", b"gone", qos=1, properties=will_props)
        props = mqtt.Properties(mqtt.PacketTypes.CONNECT)
        props.SessionExpiryInterval = 60
        willer.client.connect("127.0.0.1", broker.port, keepalive=30, properties=props)
        willer.client.loop_start()
        assert willer._connected.get(timeout=10).value == 0
        abrupt_close(willer)
        time.sleep(0.3)
        if revoke:
            daemon.rules.write_text(WILL_RULES.format(ca=pki.ca, serials=f'"1", "{0x51CC + revoke:x}"'))
            run_policyd("reload", "--address", daemon.admin_address)
            time.sleep(0.3)
        broker.proc.send_signal(signal.SIGHUP)
        got = watcher.received(5)
    finally:
        watcher.close()
        broker.stop()
        daemon.stop()
    if revoke:
        assert got == [], "a revoked device's will was published after a SIGHUP"
    else:
        assert got == [("/device/Willer/status", b"gone")]


def test_a_password_client_whose_password_changed_does_not_stay(workdir, pki):
    """Held: a changed password ends the connection when the rules are reloaded (the Watch stream
    kicks it), so no SIGHUP, kept or asked again, can leave it connected."""
    from harness import run_policyd

    daemon, broker, port = password_stack(workdir, pki)
    meter, answers = _password_client(port, str(pki.ca), PASSWORD, clean=True)
    gone: queue.Queue = queue.Queue()
    meter.on_disconnect = lambda c, u, flags, rc, props: gone.put(rc)
    try:
        assert answers.get(timeout=10).value == 0
        daemon.rules.write_text(PASSWORD_RULES.format(hash=hash_password(b"a new password", iterations=2000)))
        run_policyd("reload", "--address", daemon.admin_address)
        gone.get(timeout=3)
        meter.loop_stop()
        again, answers = _password_client(port, str(pki.ca), PASSWORD, clean=True)
        refused = answers.get(timeout=10)
        again.disconnect()
        again.loop_stop()
    finally:
        broker.stop()
        daemon.stop()
    assert refused.is_failure


@pytest.mark.broker(min=(2, 1, 0))
def test_a_flood_of_waiting_connects_is_refused_as_busy_reported_and_does_not_outlast_the_outage(workdir, pki):
    """260 CONNECTs that go silent while policyd is hung fill the 256 places: a device's CONNECT is
    refused as *server busy* (retryable), the refusals are counted in the periodic stats line while
    the broker runs, and the device gets in as soon as policyd answers again."""
    daemon = PolicyDaemon(workdir, SEED_RULES).start()
    broker = Broker(workdir, pki, daemon, BrokerConfig(use_identity_as_username=False, extra="""
        auth_opt_policyd_identity cert
        auth_opt_policyd_timeout_ms 3000
        auth_opt_policyd_stats_interval_s 1""")).start()
    held = []
    device = None
    try:
        daemon.proc.send_signal(signal.SIGSTOP)
        held = [_held_connect(broker, "Hostile", f"hostile-{i}") for i in range(260)]
        busy = Device(broker, "Dev1", client_id="dev1")
        busy.client.reconnect_delay_set(30, 30)
        busy.client.connect("127.0.0.1", broker.port, keepalive=30)
        busy.client.loop_start()
        refused = busy._connected.get(timeout=10)
        busy.client.disconnect()
        busy.client.loop_stop()
        wait_for(lambda: re.search(r"delayed CONNECTs: .*overflow=[1-9]", broker.log()), 3,
                 "the overflow counted in the periodic stats line")
        daemon.proc.send_signal(signal.SIGCONT)
        started = time.monotonic()
        while device is None and time.monotonic() - started < 15:
            attempt = Device(broker, "Dev1", client_id="dev1")
            try:
                device = attempt.connect(timeout=5)
            except (ConnectionError, queue.Empty):
                attempt.close()           # a device's own retry, a moment later
                time.sleep(0.5)
        back_after = time.monotonic() - started
    finally:
        if daemon.proc:
            daemon.proc.send_signal(signal.SIGCONT)
        if device:
            device.close()
        for sock in held:
            sock.close()
        broker.stop()
        daemon.stop()
    assert refused.value == 0x89, refused          # server busy: retryable, never "not authorized"
    assert device is not None and back_after < 10, f"locked out {back_after:.1f} s after policyd answered again"


def test_a_wrong_password_is_not_kept_at_a_reused_pointer_of_an_expired_session(workdir, pki):
    """A SIGHUP re-authenticates an offline password session; the session then expires (2.0 frees
    it without a DISCONNECT event). A new connection that lands at the freed address, with the same
    client id and username and a wrong password, during a daemon outage, must not be taken for a
    re-authentication of a connection already verified (and kept for want of an answer). Held: 2.1
    never asks an offline session as a CONNECT nor a CONNECT as a re-authentication; on 2.0 the
    SIGHUP leaves (by the code) a live record for the freed session, but no try here landed on it."""
    daemon, broker, port = password_stack(workdir, pki)
    results = []
    try:
        owner = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="meter7", protocol=mqtt.MQTTv5)
        owner.tls_set(ca_certs=str(pki.ca))
        owner.username_pw_set("meter7", PASSWORD)
        answers: queue.Queue = queue.Queue()
        owner.on_connect = lambda c, u, flags, rc, props: answers.put(rc)
        props = mqtt.Properties(mqtt.PacketTypes.CONNECT)
        props.SessionExpiryInterval = 1
        wait_for(lambda: _port_open(port), 10, "the password listener")
        owner.connect("127.0.0.1", port, keepalive=30, clean_start=False, properties=props)
        owner.loop_start()
        assert answers.get(timeout=10).value == 0
        owner.disconnect()
        owner.loop_stop()
        time.sleep(0.3)
        broker.proc.send_signal(signal.SIGHUP)      # policyd up: the offline session is asked, allowed
        time.sleep(3)                                 # expired (1 s), freed (2.0 writes its log late)
        daemon.stop()
        for _ in range(5):
            attacker, got = _password_client(port, str(pki.ca), "a guess", clean=True)
            try:
                results.append(got.get(timeout=2))
            except queue.Empty:
                results.append(None)
            attacker.disconnect()
            attacker.loop_stop()
    finally:
        broker.stop()
        daemon.stop()
    assert "Expiring client meter7" in broker.log()
    assert not any(rc is not None and not rc.is_failure for rc in results), results


@pytest.mark.broker(min=(2, 1, 0))
def test_a_sighup_leaves_a_waiting_connect_to_its_own_answer(workdir, pki):
    """Held: a CONNECT waiting for policyd is not in the broker's session table, so a SIGHUP
    re-authenticates around it; it gets its own answer (and identity) once policyd answers."""
    daemon = PolicyDaemon(workdir, SEED_RULES).start()
    broker = Broker(workdir, pki, daemon, BrokerConfig(use_identity_as_username=False, extra=IDENTITY)).start()
    others = [Device(broker, f"Dev{i}", client_id=f"dev{i}").connect() for i in range(3)]
    device = None
    try:
        daemon.proc.send_signal(signal.SIGSTOP)
        device = Device(broker, "Dev7", client_id="dev7")
        device.client.connect("127.0.0.1", broker.port, keepalive=30)
        device.client.loop_start()
        time.sleep(0.4)
        broker.proc.send_signal(signal.SIGHUP)
        time.sleep(0.4)
        daemon.proc.send_signal(signal.SIGCONT)
        assert device._connected.get(timeout=5).value == 0
        assert device.publish("/device/Dev7/t", b"x") == 0
        assert device.publish("/device/Dev0/t", b"x") == 0x87
        assert all(d.disconnects.empty() for d in others)
    finally:
        if daemon.proc:
            daemon.proc.send_signal(signal.SIGCONT)
        for d in others + ([device] if device else []):
            d.close()
        broker.stop()
        daemon.stop()
