"""Who a client is, bound to its connection: the real stack, attacked (docs/identity.md).

Broker mode, the seed's setup (`use_identity_as_username true`), plus a plain
listener without certificates as operators add for tooling. Every uncached
check carries the client's certificate, so the daemon keeps nothing per
session: a restart or a second daemon changes no decision, two certificates
with one CN keep their own attributes, and revocation reaches every session
of a certificate through the broker's own table of connections.
"""

from __future__ import annotations

import queue
import shutil
import socket
import subprocess

import paho.mqtt.client as mqtt
import pytest
from cryptography.x509.oid import NameOID
from harness import (POLICYD, ROOT, Broker, BrokerConfig, Device, Pki, PolicyDaemon, close_all, free_port,
                     make_workdir, run_policyd, wait_for)
from test_identity import Issuer

NOT_AUTHORIZED = 0x87
CN, O, OU = NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME, NameOID.ORGANIZATIONAL_UNIT_NAME

RULES = """\
superusers: [admin]
certificates:
  quarantine:
    match: {{O: quarantine}}
    rules:
      - topic: "#"
        access: deny
  ops:
    match: {{OU: ops}}
    rules:
      - topic: plant/valve/set
        access: write
patterns:
  - topic: /device/%u/#
    access: readwrite
  - topic: "%u/#"
    access: readwrite
{extra}"""


class Stack:
    def __init__(self, extra_broker: str = "", rules_extra: str = "", identity_mode: bool = False):
        self.work = make_workdir()
        self.pki = Pki(self.work / "pki").issue_base()
        self.issuer = Issuer(self.pki.dir)
        self.daemon = PolicyDaemon(self.work, RULES.format(extra=rules_extra)).start()
        config = BrokerConfig(use_identity_as_username=not identity_mode,
                              extra=("auth_opt_policyd_identity cert\n" if identity_mode else "") + extra_broker)
        self.broker = Broker(self.work, self.pki, self.daemon, config).start()
        self.opened: list[Device] = []

    def device(self, name: str, subject: list, client_id: str | None = None, serial: int | None = None) -> Device:
        cert, cert_path, key_path = self.issuer.issue(name, subject, serial=serial)
        dev = Device(self.broker, name, client_id=client_id or f"{name}-client", cert=cert_path, key=key_path)
        dev.serial = cert.serial_number
        self.opened.append(dev)
        return dev

    def rules(self, extra: str) -> None:
        self.daemon.rules.write_text(RULES.format(extra=extra))
        run_policyd("reload", "--address", self.daemon.admin_address)

    def restart_daemon(self) -> None:
        self.daemon.stop()
        self.daemon.start()

    def close(self) -> None:
        close_all(self.opened)
        self.broker.stop()
        self.daemon.stop()
        shutil.rmtree(self.work, ignore_errors=True)


@pytest.fixture(scope="module")
def stack():
    plain = free_port()
    s = Stack(extra_broker=f"listener {plain} 127.0.0.1\nallow_anonymous false\n")
    s.plain_port = plain
    yield s
    s.close()


def disconnected(dev: Device, timeout: float = 5) -> bool:
    return dev.disconnected(timeout)


def test_certificates_rules_hold_across_a_daemon_restart(stack):
    quarantined = stack.device("Q1", [(CN, "Q1"), (O, "quarantine")]).connect()
    ops = stack.device("Op1", [(CN, "Op1"), (OU, "ops")]).connect()
    assert quarantined.publish("/device/Q1/a", "x") == NOT_AUTHORIZED
    assert ops.publish("plant/valve/set", "open") == 0
    stack.restart_daemon()
    # Nothing about these sessions was in the old daemon's memory: the certificate travels.
    wait_for(lambda: quarantined.publish("/device/Q1/b", "x", timeout=2) == NOT_AUTHORIZED, 10,
             "quarantine deny after restart")
    assert ops.publish("plant/valve/set", "close") == 0
    assert quarantined.publish("/device/Q1/c", "x") == NOT_AUTHORIZED


def test_two_certificates_with_one_cn_keep_their_own_attributes(stack):
    guest = stack.device("SharedGuest", [(CN, "Shared"), (OU, "guests")], client_id="shared-guest").connect()
    assert guest.publish("plant/valve/set", "x") == NOT_AUTHORIZED
    ops = stack.device("SharedOps", [(CN, "Shared"), (OU, "ops")], client_id="shared-ops").connect()
    assert ops.publish("plant/valve/set", "x") == 0
    # The ops certificate connecting last gives the guest session nothing.
    assert guest.publish("plant/valve/set", "y") == NOT_AUTHORIZED
    assert guest.publish("/device/Shared/t", "y") == 0


def test_revocation_disconnects_every_session_of_the_serial_also_after_a_restart(stack):
    old = stack.device("RevOld", [(CN, "Rdev")], client_id="rdev-old").connect()
    new = stack.device("RevNew", [(CN, "Rdev")], client_id="rdev-new").connect()
    assert old.publish("/device/Rdev/x", "1") == 0 and new.publish("/device/Rdev/x", "2") == 0
    stack.rules(f'revoked:\n  serials: ["0x{old.serial:x}"]\n')
    assert disconnected(old), "the revoked certificate's session stayed connected"
    assert not disconnected(new, timeout=0.5), "the other certificate of the same CN was disconnected"
    assert new.publish("/device/Rdev/y", "3") == 0
    # Revoked while the daemon is down: the Watch stream's first event carries the list.
    stack.daemon.stop()
    stack.daemon.rules.write_text(RULES.format(extra=f'revoked:\n  serials: ["0x{old.serial:x}", "0x{new.serial:x}"]\n'))
    stack.daemon.start()
    assert disconnected(new, timeout=10), "a session of a serial revoked across a restart stayed connected"
    stack.rules("")


def _plain_client(port: int, username: str, password: str | None):
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"plain-{username}", protocol=mqtt.MQTTv5)
    if username:
        client.username_pw_set(username, password)
    result: queue.Queue = queue.Queue()
    client.on_connect = lambda c, u, flags, rc, props: result.put(rc)
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    try:
        return result.get(timeout=10)
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.mark.parametrize("password", [None, "guess"])
def test_a_name_claimed_on_a_listener_without_certificates_is_refused(stack, password):
    rc = _plain_client(stack.plain_port, "admin", password)
    assert rc == "Not authorized", f"a client claiming the superuser's name got CONNACK {rc}"


def test_dollar_identities_never_reach_the_brokers_own_topics(stack):
    sys_dev = stack.device("DollarSys", [(CN, "$SYS")]).connect()
    code = sys_dev.subscribe("$SYS/#")
    assert code == NOT_AUTHORIZED or disconnected(sys_dev, timeout=2)
    assert sys_dev.received(1.5) == []
    control = stack.device("DollarControl", [(CN, "$CONTROL")]).connect()
    assert control.publish("$CONTROL/dynamic-security/v1", "{}", timeout=5) == NOT_AUTHORIZED


def test_a_certificate_with_two_cns_gets_nothing(stack):
    two = stack.device("TwoCNs", [(CN, "Victim"), (CN, "Intruder")]).connect()
    assert two.publish("/device/Victim/x", "x") == NOT_AUTHORIZED
    assert disconnected(two)


def test_a_narrowed_pattern_disconnects_the_clients_it_may_affect(stack):
    sub = stack.device("Narrow1", [(CN, "Narrow1")]).connect()
    assert sub.subscribe("/device/Narrow1/#") == 1
    stack.daemon.rules.write_text(RULES.format(extra="").replace(
        "  - topic: /device/%u/#\n    access: readwrite\n", "  - topic: /device/%u/own\n    access: readwrite\n"))
    run_policyd("reload", "--address", stack.daemon.admin_address)
    try:
        assert disconnected(sub), "a client whose read access the new patterns took stayed subscribed"
        again = stack.device("Narrow1b", [(CN, "Narrow1")], client_id="narrow-again").connect()
        assert again.subscribe("/device/Narrow1/#") == NOT_AUTHORIZED
    finally:
        stack.rules("")


def test_a_publisher_whose_access_was_removed_has_its_retained_message_withheld(stack):
    pub = stack.device("Ret1", [(CN, "Ret1")]).connect()
    pub.client.publish("/device/Ret1/state", "on", qos=1, retain=True).wait_for_publish(5)
    reader = stack.device("admin", [(CN, "admin")], client_id="admin-reader-1").connect()
    reader.subscribe("/device/Ret1/#")
    assert reader.next_message(5) == ("/device/Ret1/state", b"on")
    stack.rules("users:\n  Ret1:\n    - topic: '#'\n      access: deny\n")
    try:
        later = stack.device("admin2", [(CN, "admin")], client_id="admin-reader-2").connect()
        later.subscribe("/device/Ret1/#")
        assert later.received(1.5) == [], "a retained message of a publisher without access was delivered"
    finally:
        stack.rules("")


# --- the client id is bound to the identity -------------------------------------------

@pytest.fixture(scope="module")
def bound_stack():
    s = Stack(rules_extra="identity:\n  client_id: ['%u', '%u-*']\n", identity_mode=True)
    yield s
    s.close()


def test_a_client_id_bound_to_another_identity_is_refused_and_the_victim_keeps_its_session(bound_stack):
    victim = bound_stack.device("Device123", [(CN, "Device123")], client_id="Device123").connect()
    assert victim.subscribe("/device/Device123/#") == 1
    thief = bound_stack.device("Device999", [(CN, "Device999")], client_id="Device123")
    with pytest.raises(ConnectionError):
        thief.connect()
    assert not disconnected(victim, timeout=0.5), "the refused thief still took the victim's session"
    ok = bound_stack.device("Device999b", [(CN, "Device999")], client_id="Device999-sensor").connect()
    assert ok.publish("/device/Device999/t", "x") == 0


def test_in_broker_mode_a_client_id_of_another_identity_gets_nothing_and_is_disconnected():
    s = Stack(rules_extra="identity:\n  client_id: ['%u', '%u-*']\n")
    try:
        thief = s.device("Thief", [(CN, "Device999")], client_id="Device123").connect()
        assert thief.publish("/device/Device999/x", "x") == NOT_AUTHORIZED
        assert disconnected(thief)
    finally:
        s.close()


# --- two daemons behind one target --------------------------------------------------

class TcpDaemon(PolicyDaemon):
    """`policyd serve` on a loopback TCP port (for a target naming several daemons)."""

    def __init__(self, workdir, rules_yaml: str, port: int, *extra):
        super().__init__(workdir, rules_yaml, *extra)
        self.port = port
        self.log_path = workdir / f"policyd-{port}.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 15) -> "TcpDaemon":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [*POLICYD, "serve", "--rules", str(self.rules), "--listen", self.address, "--log-level", "debug",
             "--decision-log", str(self.workdir / f"decisions-{self.port}.jsonl"), *self.extra_args],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT)
        wait_for(lambda: _port_open(self.port) or self.proc.poll() is not None, timeout, "policyd port")
        return self


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_two_daemons_behind_one_target_decide_as_one():
    work = make_workdir()
    pki = Pki(work / "pki").issue_base()
    issuer = Issuer(pki.dir)
    rules = RULES.format(extra="")
    a, b = free_port(), free_port()
    (work / "a").mkdir()
    (work / "b").mkdir()
    daemons = [TcpDaemon(work / "a", rules, a).start(), TcpDaemon(work / "b", rules, b).start()]

    class Both:
        address = f"ipv4:127.0.0.1:{a},127.0.0.1:{b}"

    broker = Broker(work, pki, Both(), BrokerConfig(extra="auth_opt_policyd_cache_size 0")).start()
    opened = []
    try:
        def dev(name, subject):
            _, cert, key = issuer.issue(name, subject)
            d = Device(broker, name, cert=cert, key=key).connect()
            opened.append(d)
            return d

        quarantined = dev("TQ", [(CN, "TQ"), (O, "quarantine")])
        ops = dev("TOp", [(CN, "TOp"), (OU, "ops")])
        for i in range(12):  # uncached: every check reaches one of the two daemons, in turn
            assert quarantined.publish(f"/device/TQ/{i}", "x") == NOT_AUTHORIZED
            assert ops.publish("plant/valve/set", str(i)) == 0
            assert ops.publish("plant/valve/set", str(i)) == 0  # shifts the turn: each daemon sees both
        for d in daemons:
            d.stop()  # flushes the decision logs
        for port, d in zip((a, b), daemons):
            decisions = (d.workdir / f"decisions-{port}.jsonl").read_text()
            assert '"allow"' in decisions and '"deny"' in decisions, f"daemon on {port}: {decisions[:300]}"
    finally:
        for d in opened:
            d.close()
        broker.stop()
        for d in daemons:
            d.stop()
        shutil.rmtree(work, ignore_errors=True)


def _vanish(dev: Device) -> None:
    """Drop the connection without DISCONNECT, as a device losing power does: its will is sent."""
    dev.client.loop_stop()
    dev.client.socket().close()


def test_wills_are_decided_with_the_certificate_the_client_connected_with(stack):
    # Mosquitto checks a will after the TLS session is closed: without the certificate kept
    # by the plugin, a quarantined device's will would escape its certificates deny rule.
    watcher = stack.device("admin", [(CN, "admin")], client_id="admin-will-watcher").connect()
    assert watcher.subscribe("/device/#") == 1
    normal = stack.device("WillOk", [(CN, "WillOk")])
    normal.client.will_set("/device/WillOk/status", "gone", qos=1)
    normal.connect()
    quarantined = stack.device("WillQ", [(CN, "WillQ"), (O, "quarantine")])
    quarantined.client.will_set("/device/WillQ/status", "gone", qos=1)
    quarantined.connect()
    assert quarantined.publish("/device/WillQ/x", "x") == NOT_AUTHORIZED
    _vanish(quarantined)
    _vanish(normal)
    got = watcher.received(3)
    assert ("/device/WillOk/status", b"gone") in got, got  # wills work
    assert all(topic != "/device/WillQ/status" for topic, _ in got), got
