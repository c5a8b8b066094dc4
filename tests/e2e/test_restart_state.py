"""A daemon restart with `--state-dir`, with the real stack: mosquitto + plugin + policyd + MQTT clients.

Rules edited while the daemon is down reach live sessions when it comes back
(the broker's Watch stream names the generation it knew; the daemon replays
the restart's kicks), and a rules file broken while it was down does not take
the policy away.
"""

from __future__ import annotations

import os
import re
import shutil

import pytest
from harness import BROKER_USER, Broker, BrokerConfig, Device, PolicyDaemon, run_policyd, wait_for

NOT_AUTHORIZED = 0x87
ADMINISTRATIVE_ACTION = 0x98

RULES = """\
users:
  Keeper:
    - topic: /device/%u/#
      access: readwrite
  Revoked:
    - topic: /device/%u/#
      access: readwrite
"""
WITHOUT_REVOKED = RULES[:RULES.index("  Revoked:")]
BROKEN = RULES.replace("/device/%u/#", "/device/#/%u", 1)


@pytest.fixture
def stack(workdir, pki):
    sub = workdir / f"restart-{len(os.listdir(workdir))}"
    sub.mkdir(mode=0o755)
    daemon = PolicyDaemon(sub, RULES, "--no-watch", "--state-dir", str(sub / "state")).start()
    live_log = sub / "mosquitto-live.log"  # flushed per line, unlike the broker's stdout
    live_log.touch()
    if os.geteuid() == 0:
        shutil.chown(live_log, BROKER_USER)
    broker = Broker(sub, pki, daemon, BrokerConfig(extra=f"log_dest file {live_log}")).start()
    opened: list[Device] = []

    def device(cn: str) -> Device:
        dev = Device(broker, cn, client_id=f"{cn}-{len(opened)}").connect()
        opened.append(dev)
        return dev

    yield daemon, broker, device, live_log
    for dev in opened:
        dev.close()
    broker.stop()
    daemon.stop()


def generation(daemon: PolicyDaemon) -> int:
    status = run_policyd("status", "--address", daemon.admin_address, check=False).stdout
    return int(re.search(r"generation: (\d+)", status).group(1))


def test_identity_removed_while_the_daemon_was_down_is_disconnected_when_it_returns(stack):
    daemon, broker, device, live_log = stack
    revoked, keeper = device("Revoked"), device("Keeper")
    assert revoked.publish("/device/Revoked/t", b"before") == 0
    before = generation(daemon)

    daemon.stop()
    daemon.rules.write_text(WITHOUT_REVOKED)
    daemon.start()
    probe = device("Keeper")

    def answered() -> None:
        wait_for(lambda: probe.publish("/device/Keeper/t", b"x") == 0, 15, "checks answered again")

    assert revoked.disconnects.get(timeout=15).value == ADMINISTRATIVE_ACTION
    assert f"returns from generation {before}" not in daemon.log()  # the daemon remembered it
    assert "policyd: disconnecting 1 client(s): the new policy took access from" in live_log.read_text(errors="replace")
    answered()  # the plugin's check channel is back too: a refusal below is the policy's
    assert keeper.disconnects.empty()
    assert device("Revoked").publish("/device/Revoked/t", b"after") == NOT_AUTHORIZED


def test_rules_broken_while_the_daemon_was_down_do_not_take_the_policy_away(stack):
    daemon, broker, device, _ = stack
    before = generation(daemon)

    daemon.stop()
    daemon.rules.write_text(BROKEN)
    daemon.start()  # it starts, instead of leaving every broker without answers

    status = run_policyd("status", "--address", daemon.admin_address, check=False).stdout
    assert generation(daemon) == before and "rules.yaml:3:" in status
    assert "serving the policy in force before the restart" in daemon.log()
    # Fresh clients (no cached answers in the plugin) are answered by the last good policy.
    keeper = device("Keeper")
    wait_for(lambda: keeper.publish("/device/Keeper/t", b"x") == 0, 15, "answers from the last good policy")
    assert device("Revoked").publish("/device/Revoked/t", b"x") == 0
    assert device("Revoked").publish("/device/Keeper/t", b"x") == NOT_AUTHORIZED

    daemon.rules.write_text(WITHOUT_REVOKED)  # repaired: an ordinary reload from here on
    assert run_policyd("reload", "--address", daemon.admin_address).returncode == 0
    assert device("Revoked").publish("/device/Revoked/t", b"x") == NOT_AUTHORIZED
    assert device("Keeper").publish("/device/Keeper/t", b"x") == 0
