"""What differs between Mosquitto 2.0 and 2.1, with the real broker under test (POLICYD_BROKER).

`make test` runs every end-to-end test on Debian's 2.0.11 and again on the vendored 2.1.2;
tests here that only make sense on one version say so with @pytest.mark.broker.
"""

from __future__ import annotations

import subprocess
import time

import pytest
from harness import BROKER, PLUGIN_SO, Broker, BrokerConfig, Device, PolicyDaemon, broker_version, run_policyd

NOT_AUTHORIZED = 0x87
ADMINISTRATIVE_ACTION = 0x98
V2_1 = (2, 1, 0)

RULES = """\
superusers: [admin]
users:
  Idle:
    - {topic: /device/%u/#, access: readwrite}
patterns:
  - {topic: /device/%u/#, access: readwrite}
"""
WITHOUT_IDLE = RULES.replace("  Idle:\n    - {topic: /device/%u/#, access: readwrite}\n", "")


def dynamic_symbols(path: str, defined: bool) -> set[str]:
    args = ["nm", "-D", "--defined-only" if defined else "--undefined-only", path]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return {line.split()[-1].split("@")[0] for line in out.splitlines() if line.strip()}


def test_the_plugin_links_only_functions_this_broker_exports():
    # 2.1 moved mosquitto_strerror out of the broker: linking it made 2.1 refuse the plugin.
    # 2.1-only functions (mosquitto_plugin_set_info, mosquitto_complete_basic_auth) are
    # looked up at run time instead.
    import shutil

    needed = {name for name in dynamic_symbols(str(PLUGIN_SO), defined=False) if name.startswith("mosquitto_")}
    exported = dynamic_symbols(shutil.which(BROKER), defined=True)
    assert needed and not needed - exported, f"not exported by {BROKER}: {sorted(needed - exported)}"


def seed_scenario_holds(broker: Broker) -> None:
    own, other = Device(broker, "Device123").connect(), Device(broker, "Device999").connect()
    try:
        assert own.publish("/device/Device123/t", b"x") == 0
        assert other.publish("/device/Device123/t", b"x") == NOT_AUTHORIZED
        assert other.subscribe("/device/#") == NOT_AUTHORIZED
    finally:
        own.close()
        other.close()


@pytest.fixture
def stack_dir(workdir):
    """A fresh directory per test, with a short name: unix socket paths stop at 107 bytes."""
    path = workdir / f"s{len(list(workdir.glob('s*')))}"
    path.mkdir(mode=0o755)
    return path


def test_plugin_and_plugin_opt_configure_it(stack_dir, pki, daemon):
    # The spelling documented first; 2.0 accepts it as well as 2.1.
    broker = Broker(stack_dir, pki, daemon, BrokerConfig(plugin_keyword="plugin", option_prefix="plugin_opt_",
                                                          extra="plugin_opt_policyd_timeout_ms 500")).start()
    try:
        seed_scenario_holds(broker)
    finally:
        broker.stop()
    assert "plugin_opt_policyd_timeout_ms" in broker.conf_path.read_text()
    assert "ACL checks go to unix:" in broker.log() and "timeout 500 ms" in broker.log()


@pytest.mark.broker(min=V2_1)
def test_global_plugin_configures_it(stack_dir, pki, daemon):
    broker = Broker(stack_dir, pki, daemon, BrokerConfig(plugin_keyword="global_plugin",
                                                          option_prefix="plugin_opt_")).start()
    try:
        seed_scenario_holds(broker)
    finally:
        broker.stop()


@pytest.mark.broker(min=V2_1)
def test_a_per_listener_plugin_enforces_and_kicks(stack_dir, pki):
    # 2.0.11 sends no TICK to per-listener plugins (no kicks, no Watch events); 2.1 does.
    daemon = PolicyDaemon(stack_dir, RULES, "--no-watch").start()
    broker = Broker(stack_dir, pki, daemon, BrokerConfig(plugin_keyword="plugin", option_prefix="plugin_opt_",
                                                          per_listener_settings=True)).start()
    try:
        seed_scenario_holds(broker)
        idle = Device(broker, "Idle").connect()
        assert idle.publish("/device/Idle/t", b"x") == 0
        daemon.rules.write_text(WITHOUT_IDLE)
        run_policyd("reload", "--address", daemon.admin_address)
        assert idle.disconnects.get(timeout=10).value == ADMINISTRATIVE_ACTION
    finally:
        broker.stop()
        daemon.stop()


def test_an_idle_device_is_disconnected_promptly_after_its_revocation(stack_dir, pki):
    # Kicks run on the broker's TICK. 2.1 sleeps until a plugin asks for its next tick, so
    # without asking an idle broker kicked seconds late (1.7 s measured before the plugin asked).
    # The figure is in docs/benchmarks.md (bench/reload_latency.py); this bound leaves room for a
    # loaded machine.
    daemon = PolicyDaemon(stack_dir, RULES, "--no-watch").start()
    broker = Broker(stack_dir, pki, daemon, BrokerConfig()).start()
    try:
        for i in range(3):
            daemon.rules.write_text(RULES)
            run_policyd("reload", "--address", daemon.admin_address)
            idle = Device(broker, "Idle", client_id=f"idle-{i}").connect()
            assert idle.publish("/device/Idle/t", b"x") == 0
            time.sleep(1.5)  # nothing in flight: the broker's loop is asleep
            daemon.rules.write_text(WITHOUT_IDLE)
            run_policyd("reload", "--address", daemon.admin_address)
            reloaded = time.monotonic()
            assert idle.disconnects.get(timeout=10).value == ADMINISTRATIVE_ACTION
            assert time.monotonic() - reloaded < 1.2, f"round {i}: kicked after {time.monotonic() - reloaded:.2f} s"
    finally:
        broker.stop()
        daemon.stop()


def test_the_broker_under_test_is_the_one_named():
    first = subprocess.run([BROKER, "-h"], capture_output=True, text=True).stdout.splitlines()[0]
    assert first == f"mosquitto version {'.'.join(map(str, broker_version()))}"


def abrupt_close(dev: Device) -> None:
    """Gone without DISCONNECT: the broker publishes the will."""
    import socket

    dev.client.loop_stop()
    sock = dev.client.socket()
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()


@pytest.mark.parametrize("topic,delivered", [("/device/Willer/status", True), ("/device/Other/status", False)])
def test_a_will_is_checked_when_the_broker_publishes_it(broker, devices, topic, delivered):
    # Both versions ask WRITE for the will's topic when they publish it, after the plugin's
    # DISCONNECT (2.0, 2.1) or CLIENT_OFFLINE (2.1) callback dropped the client's cached
    # decisions: a fresh question to policyd under the policy in force then.
    watcher = devices("admin")
    assert watcher.subscribe("#") == 1
    willer = Device(broker, "Willer", client_id=f"willer-{delivered}")
    willer.client.will_set(topic, b"gone", qos=1)
    willer.connect()
    abrupt_close(willer)
    if delivered:
        assert watcher.next_message(timeout=5) == (topic, b"gone")
    else:
        assert watcher.received(1.5) == []


# --- identity mode: CONNECTs answered later on 2.1 ------------------------------

IDENTITY_RULES = """\
identity:
  source: cn
  issuers: [{ca}]
revoked:
  serials: ["{revoked:x}"]
patterns:
  - {{topic: /device/%u/#, access: readwrite}}
"""
SLOW_S = 1.0  # how long the slow daemon holds every Authenticate answer


@pytest.fixture(scope="module")
def slow_identity(workdir, pki):
    """Identity mode behind a proxy that can hold Authenticate answers; a revoked certificate."""
    from types import SimpleNamespace

    from harness import DelayProxy
    from test_identity import Issuer, cn

    sub = workdir / "slowid"
    sub.mkdir(mode=0o755)
    _, revoked_cert, revoked_key = Issuer(pki.dir).issue("Revoked", cn("Revoked"), serial=0x5EC0DE)
    daemon = PolicyDaemon(sub, IDENTITY_RULES.format(ca=pki.ca, revoked=0x5EC0DE)).start()
    proxy = DelayProxy(sub / "proxy.sock", daemon.address)
    broker = Broker(sub, pki, SimpleNamespace(address=proxy.address), BrokerConfig(
        use_identity_as_username=False,
        extra="auth_opt_policyd_identity cert\nauth_opt_policyd_timeout_ms 5000")).start()
    yield SimpleNamespace(broker=broker, proxy=proxy, revoked=(revoked_cert, revoked_key))
    broker.stop()
    proxy.stop()
    daemon.stop()


def connect_in_background(dev: Device) -> "queue.Queue":
    import queue
    import threading

    done: queue.Queue = queue.Queue()

    def run():
        try:
            dev.connect(timeout=15)
            done.put(True)
        except Exception as exc:  # noqa: BLE001 (the CONNACK's refusal is the result)
            done.put(exc)

    threading.Thread(target=run, daemon=True).start()
    return done


@pytest.mark.broker(min=V2_1)
def test_connects_waiting_for_a_slow_policyd_do_not_stall_the_broker(slow_identity):
    # 2.0 asks policyd on its only thread: every other client waits with it. 2.1 returns
    # MOSQ_ERR_AUTH_DELAYED and completes the CONNECT from a TICK when the answer is in.
    broker, proxy = slow_identity.broker, slow_identity.proxy
    probe = Device(broker, "Probe", client_id="probe").connect()
    proxy.delay = SLOW_S
    try:
        joining = [Device(broker, f"Joiner{i}", client_id=f"joiner-{i}") for i in range(4)]
        results = [connect_in_background(dev) for dev in joining]
        rtts = []
        started = time.monotonic()
        while time.monotonic() - started < SLOW_S * 1.2:
            t0 = time.monotonic()
            assert probe.publish("/device/Probe/t", b"x") == 0
            rtts.append(time.monotonic() - t0)
        assert [r.get(timeout=15) for r in results] == [True] * 4
        # Synchronously, one CONNECT alone would stall the probe for SLOW_S.
        assert max(rtts) < SLOW_S * 0.75, f"the broker stalled {max(rtts):.2f} s while CONNECTs waited"
        for dev in joining:  # each has the identity policyd gave it, and only that one
            assert dev.publish(f"/device/{dev.cn}/t", b"x") == 0
            assert dev.publish("/device/Probe/t", b"x") == NOT_AUTHORIZED
            dev.close()
    finally:
        proxy.delay = 0.0
        probe.close()


@pytest.mark.broker(min=V2_1)
def test_an_answer_for_a_client_that_left_never_admits_the_next_one_with_its_id(slow_identity):
    # 2.1 names a waiting CONNECT only by client id. Device123 connects as "shared" and leaves
    # before policyd answers; a revoked device connects as "shared" at once. Device123's allow
    # arrives first and must not admit the revoked device (nor give it Device123's identity).
    # Device123's answer comes at 2 s, while the revoked device's CONNECT (sent well before)
    # still waits for its own (3 s).
    broker, proxy = slow_identity.broker, slow_identity.proxy
    proxy.next_delays[:] = [2.0, 3.0]
    try:
        legit = Device(broker, "Device123", client_id="shared")
        legit.client.connect("127.0.0.1", broker.port, keepalive=30)
        legit.client.loop_start()
        time.sleep(0.2)
        abrupt_close(legit)
        time.sleep(0.2)
        cert, key = slow_identity.revoked
        intruder = Device(broker, "Revoked", client_id="shared", cert=cert, key=key)
        outcome = connect_in_background(intruder).get(timeout=15)
        assert isinstance(outcome, ConnectionError), "a revoked certificate was admitted"
    finally:
        proxy.next_delays.clear()
    again = Device(broker, "Device123", client_id="shared").connect()  # the id itself is not stuck
    assert again.publish("/device/Device123/t", b"x") == 0
    again.close()
