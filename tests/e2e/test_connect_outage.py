"""CONNECT in identity mode while policyd is hung or stopped, with the real stack.

A broker SIGHUP (Debian's logrotate sends one a day) makes Mosquitto re-run BASIC_AUTH for every
connected client, and disconnect each one the plugin does not accept: during a daemon outage that
must disconnect nobody (a certificate client costs no call, a password client is kept). New CONNECTs
during an outage are refused, but never with "not authorized" (device SDKs take it as final): on 2.0
the breaker makes them fail fast and the connection is closed without CONNACK; on 2.1 the CONNECT
waits (delayed basic auth, the broker's thread free) while the plugin asks again for 2 s, then gets
no CONNACK at all, so the client times out and retries.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import pytest
from harness import (ROOT, Broker, BrokerConfig, Device, PolicyDaemon, broker_version, free_port, password_listener,
                     wait_for)

from policyd.identity.passwords import hash_password

from conftest import SEED_RULES
from test_identity import PasswordClient

sys.path.insert(0, str(ROOT / "bench"))
from reliability import record  # noqa: E402

V2_1 = broker_version() >= (2, 1, 0)
BROKER_NAME = f"mosquitto {'.'.join(map(str, broker_version()))}"
IDENTITY = BrokerConfig(use_identity_as_username=False, extra="""
    auth_opt_policyd_identity cert
    auth_opt_policyd_timeout_ms 100
    auth_opt_policyd_breaker_cooldown_ms 5000""")
CLIENTS = 20


@pytest.fixture
def stack(workdir, pki):
    daemon = PolicyDaemon(workdir, SEED_RULES).start()
    broker = Broker(workdir, pki, daemon, IDENTITY).start()
    yield broker, daemon
    broker.stop()
    if daemon.proc:
        daemon.proc.send_signal(signal.SIGCONT)
    daemon.stop()


def outage(daemon: PolicyDaemon, kind: str) -> None:
    if kind == "hung":
        daemon.proc.send_signal(signal.SIGSTOP)
    else:
        daemon.stop()


def recover(daemon: PolicyDaemon, kind: str) -> None:
    if kind == "hung":
        daemon.proc.send_signal(signal.SIGCONT)
    else:
        daemon.start()


def stats_line(broker: Broker, marker: str) -> dict[str, int]:
    line = [l for l in broker.log().splitlines() if marker in l][-1]
    return {k: int(v) for k, v in re.findall(r"([a-z_]+)=(\d+)", line)}


def identity_stats(broker: Broker) -> dict[str, int]:
    return stats_line(broker, "identity: connects")


@pytest.mark.parametrize("kind", ["hung", "stopped"])
def test_broker_sighup_during_an_outage_disconnects_nobody(stack, kind):
    broker, daemon = stack
    devices = [Device(broker, f"Dev{i}", client_id=f"dev{i}").connect() for i in range(CLIENTS)]
    try:
        outage(daemon, kind)
        started = time.monotonic()
        broker.proc.send_signal(signal.SIGHUP)
        # The broker's thread answers again at once: a PUBACK (allow from the cache, or deny).
        devices[0].publish("/device/Dev0/after-hup", b"x", timeout=10)
        stall = time.monotonic() - started
        time.sleep(1.5)
        dropped = [d.cn for d in devices if not d.disconnects.empty()]
        recover(daemon, kind)
        wait_for(lambda: devices[1].publish("/device/Dev1/recovered", b"x") == 0, 10, "recovery")
    finally:
        for d in devices:
            d.close()
    assert broker.alive
    assert dropped == [], f"SIGHUP during a {kind} daemon disconnected {dropped}"
    assert stall < 1.0, f"broker stalled {stall:.2f} s"
    record(f"fault-sighup-outage-{kind}" + ("-2.1" if V2_1 else ""), row=f"broker SIGHUP while policyd is {kind} (identity mode, "
           f"{CLIENTS} clients connected)",
           how=f"{'SIGSTOP' if kind == 'hung' else 'SIGTERM'} to policyd, then SIGHUP to {BROKER_NAME}, which "
               "re-runs BASIC_AUTH for every connected client",
           test=f"tests/e2e/test_connect_outage.py::test_broker_sighup_during_an_outage_disconnects_nobody[{kind}]",
           happened=f"0 of {CLIENTS} clients disconnected (same certificate on the same connection: answered "
                    f"without a call); broker answered a publish {stall * 1000:.0f} ms after the SIGHUP",
           lost="0", denied_delivered=0, recovery="none needed")


def cli_connect(broker: Broker, device: str, version: str) -> str:
    """One CONNECT with mosquitto_sub -d: its exit status and output (the CONNACK it got, if any)."""
    proc = subprocess.run(["mosquitto_sub", "-d", *broker.cli_tls_args(device), "-V", version,
                           "-i", f"{device}-{version}", "-t", f"/device/{device}/x", "-C", "1", "-W", "2"],
                          capture_output=True, text=True, timeout=20)
    return f"rc={proc.returncode} {(proc.stdout + proc.stderr).strip()}"


def got_in(answer: str) -> bool:
    return re.search(r"received CONNACK \(0\)", answer) is not None


@pytest.mark.parametrize("kind", ["hung", "stopped"])
def test_connect_during_an_outage_is_retryable_and_fails_fast(stack, kind):
    broker, daemon = stack
    outage(daemon, kind)
    try:
        answers = {}
        started = time.monotonic()
        for i in range(8):
            for version in ("mqttv5", "mqttv311"):
                answers[(i, version)] = cli_connect(broker, f"New{i}", version)
        elapsed = time.monotonic() - started
    finally:
        recover(daemon, kind)
    wait_for(lambda: got_in(cli_connect(broker, "Back", "mqttv5")), 30, "CONNECT accepted again")
    broker.stop()
    stats = identity_stats(broker)
    refused_final = {k: v for k, v in answers.items() if "not author" in v.lower()}
    assert refused_final == {}, refused_final
    assert not any(got_in(v) for v in answers.values()), answers
    if V2_1:
        # Nothing refused them: each waited, was asked again, and was left without CONNACK.
        assert all("received CONNACK" not in v for v in answers.values()), answers
        delayed = stats_line(broker, "delayed CONNECTs")
        assert delayed["unanswered"] >= 16 and delayed["retried"] >= 16, delayed
    elif kind == "hung":
        # After 3 deadline misses the breaker opens: refused at once, a probe each cool-down
        # (mosquitto_sub itself retries a connection closed without CONNACK).
        assert stats["breaker_refused"] >= 4, stats
    assert stats["denied"] == 0, stats
    how_refused = ("waited (broker thread free), asked again for 2 s, then left without CONNACK" if V2_1 else
                   "refused as retryable (connection closed without CONNACK)")
    record(f"fault-connect-outage-{kind}" + ("-2.1" if V2_1 else ""),
           row=f"new CONNECTs while policyd is {kind} (identity mode, {BROKER_NAME})",
           how="mosquitto_sub CONNECTs (MQTT 5 and 3.1.1) with device certificates during the outage",
           test=f"tests/e2e/test_connect_outage.py::test_connect_during_an_outage_is_retryable_and_fails_fast[{kind}]",
           happened=f"16 of 16 clients {how_refused}, never 'not authorized'; of their CONNECTs "
                    f"{stats['breaker_refused']} were refused without a call "
                    f"(breaker open), {stats['deadline']} waited a deadline, {stats['unavailable']} failed at once "
                    f"(daemon down); {elapsed:.1f} s of client time",
           lost="n/a", denied_delivered=0, recovery="next CONNECT after the daemon is back")


PASSWORD = "a password verified at CONNECT"
PASSWORD_RULES = SEED_RULES + """
passwords:
  meter7: "{hash}"
"""


def password_stack(workdir, pki) -> tuple[PolicyDaemon, Broker, int]:
    """policyd granting meter7 its password, and a broker in identity mode with a password listener
    (its port is the third value)."""
    daemon = PolicyDaemon(workdir, PASSWORD_RULES.format(hash=hash_password(PASSWORD.encode(), iterations=2000)))
    daemon.start()
    port = free_port()
    config = BrokerConfig(use_identity_as_username=False, extra=IDENTITY.extra + password_listener(pki, port))
    return daemon, Broker(workdir, pki, daemon, config).start(), port


def test_broker_sighup_asks_a_password_client_again_and_keeps_it_through_an_outage_on_2_1(workdir, pki):
    daemon, broker, port = password_stack(workdir, pki)
    meter = PasswordClient(dict(broker=broker, pki=pki, password_port=port), "meter7", PASSWORD).connect()
    try:
        # Daemon up: asked again on the broker's thread (never as a new, delayed CONNECT).
        broker.proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert meter.disconnects.empty(), "a SIGHUP disconnected a password client policyd still accepts"
        assert meter.publish("/device/meter7/t", b"after a SIGHUP") == 0
        # Daemon hung: no answer. 2.1 proves a re-authentication (the session is registered under its
        # client id): kept. 2.0 cannot tell it from a new CONNECT at a reused client pointer, which
        # must never pass unverified: refused as retryable, and the client comes back after.
        daemon.proc.send_signal(signal.SIGSTOP)
        try:
            broker.proc.send_signal(signal.SIGHUP)
            time.sleep(1.5)
            dropped = not meter.disconnects.empty()
        finally:
            daemon.proc.send_signal(signal.SIGCONT)
        if V2_1:
            assert not dropped, "a SIGHUP during an outage disconnected a password client on 2.1"
            assert meter.publish("/device/meter7/t", b"after a SIGHUP during an outage") == 0
            assert meter.publish("/device/Dev0/t", b"still confined") == 0x87
        else:
            assert dropped, "2.0 kept a password re-authentication nobody verified"
    finally:
        meter.close()
        broker.stop()
        daemon.stop()
    stats = identity_stats(broker)
    assert stats["reauth_asked"] >= 1, stats
    if V2_1:
        assert stats["reauth_kept"] >= 1, stats
        assert "re-authentication of client 'pw-meter7' kept without an answer from policyd" in broker.log()
    else:
        assert stats["reauth_kept"] == 0 and stats["deadline"] + stats["unavailable"] >= 1, stats
